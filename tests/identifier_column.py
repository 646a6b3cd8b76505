"""An identifier column, as a hospital export may carry one: none of its values may leave a site.

Shared by the privacy tests (in-process replies, run folder, the wire); a plain module, not a
test module.
"""

from collections.abc import Sequence

from fedvlm.data.example import VQAExample

COLUMN = "patient_ref"


def with_identifier(examples: Sequence[VQAExample], tag: str) -> list[VQAExample]:
    """Copies of `examples`, each with its own ``patient_ref`` value ``PATIENT-SECRET-<tag><i>``."""
    return [
        VQAExample(
            e.image,
            e.question,
            e.answer,
            e.question_type,
            {**e.attributes, COLUMN: f"PATIENT-SECRET-{tag}{i:03d}"},
        )
        for i, e in enumerate(examples)
    ]
