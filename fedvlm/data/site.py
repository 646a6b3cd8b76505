"""What one site holds: its own train, validation and test splits, plus a description to report."""

from dataclasses import dataclass, field

from fedvlm.data.example import VQAExample


@dataclass
class SiteData:
    """A site's local data; the images never leave the site.

    Parameters
    ----------
    train : list[VQAExample]
        Examples the site trains on.
    val : list[VQAExample]
        The site's own validation split, drawn from the same distribution as ``train``.
    test : list[VQAExample]
        The site's test split (may be empty): never trained on, evaluated each round and
        reported apart from ``val``, so it stays a test set a user can quote.
    name : str
        Human-readable site name for logs and reports.
    description : dict[str, str | int | float]
        Scalars only (label distribution, acquisition, sizes), so it can go into a MetricRecord,
        ConfigRecord or JSON ledger without conversion.
    """

    train: list[VQAExample]
    val: list[VQAExample]
    name: str
    test: list[VQAExample] = field(default_factory=list)
    description: dict[str, str | int | float] = field(default_factory=dict)
