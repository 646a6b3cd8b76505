"""Pure numpy helpers on LoRA factors, shared by the LoRA-aware strategies and the client.

PEFT stores each adapted layer as two factors: ``...lora_A.weight`` of shape
``(r, in)`` and ``...lora_B.weight`` of shape ``(out, r)`` (embeddings: ``lora_embedding_A``
``(r, n)`` and ``lora_embedding_B`` ``(d, r)``), so the rank sits on axis 0 of A and axis 1
of B. Other adapter tensors (a trainable projector in ``modules_to_save``) are plain.

Nothing here imports Flower: the client needs the same functions as the strategies
(truncate the global adapter to its rank, pad its update, pick the tensors FFA-LoRA
exchanges), and both may import ``fedvlm``.

The heterogeneous-rank helpers assume every site scales its LoRA product by the same
constant (PEFT scales by ``lora_alpha / r``: give each site ``lora_alpha`` proportional to its
rank), so that ``B @ A`` means the same weight change whatever the rank.
"""

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

_FACTOR = re.compile(r"lora_(?:embedding_)?([AB])(?:\.|$)")


def factor_of(name: str) -> str | None:
    """Return ``"A"`` or ``"B"`` for a LoRA factor's name, None for any other tensor."""
    match = _FACTOR.search(name)
    return match.group(1) if match else None


def rank_axis(name: str) -> int | None:
    """Axis holding the LoRA rank in tensor ``name`` (None: not a LoRA factor)."""
    return {"A": 0, "B": 1, None: None}[factor_of(name)]


def partner(name_a: str) -> str:
    """Name of the B factor paired with LoRA A factor ``name_a``."""
    match = _FACTOR.search(name_a)
    if match is None or match.group(1) != "A":
        raise ValueError(f"'{name_a}' is not a LoRA A factor")
    start, end = match.span(1)
    return name_a[:start] + "B" + name_a[end:]


def lora_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """Return the ``(A name, B name)`` pairs among ``names``, in order of the A names."""
    ordered = list(names)
    present = set(ordered)
    return [(n, partner(n)) for n in ordered if factor_of(n) == "A" and partner(n) in present]


def exchanged_keys(adapter_names: Iterable[str]) -> list[str]:
    """Tensors FFA-LoRA trains and exchanges: every adapter tensor except the A factors.

    Parameters
    ----------
    adapter_names : Iterable[str]
        The adapter's PEFT state-dict names.

    Returns
    -------
    list[str]
        The B factors and the non-LoRA tensors (projector), in the given order. The A
        factors stay frozen at their shared seeded initialisation.
    """
    return [name for name in adapter_names if factor_of(name) != "A"]


def truncate_to_rank(adapter: Mapping[str, np.ndarray], rank: int) -> dict[str, np.ndarray]:
    """Keep the first ``rank`` LoRA components (what a site of smaller rank loads)."""
    out = {}
    for name, tensor in adapter.items():
        axis = rank_axis(name)
        out[name] = tensor if axis is None else np.take(tensor, range(rank), axis=axis)
    return out


def pad_to_shapes(
    tensors: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray]:
    """Zero-pad each LoRA factor along its rank axis up to ``shapes[name]``."""
    out = {}
    for name, tensor in tensors.items():
        axis = rank_axis(name)
        if axis is None or tensor.shape[axis] == shapes[name][axis]:
            out[name] = tensor
            continue
        widths = [(0, 0)] * tensor.ndim
        widths[axis] = (0, shapes[name][axis] - tensor.shape[axis])
        out[name] = np.pad(tensor, widths)
    return out


def stack_factors(
    factors: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Stack sites' LoRA factors so that ``B @ A == sum_i p_i B_i @ A_i`` exactly.

    Parameters
    ----------
    factors : Sequence[tuple[np.ndarray, np.ndarray]]
        Each site's ``(A_i, B_i)``, shapes ``(r_i, in)`` and ``(out, r_i)``.
    weights : Sequence[float]
        Site weights; normalised to ``p_i = w_i / sum(w)``.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``(A, B)`` of rank ``sum_i r_i`` (float64): ``A`` is the A_i stacked row-wise,
        ``B`` the ``p_i B_i`` stacked column-wise.
    """
    total = float(sum(weights))
    a = np.concatenate([np.asarray(a_i, dtype=np.float64) for a_i, _ in factors], axis=0)
    b = np.concatenate(
        [
            np.asarray(b_i, dtype=np.float64) * (w / total)
            for (_, b_i), w in zip(factors, weights, strict=True)
        ],
        axis=1,
    )
    return a, b


def refactor_by_importance(
    a: np.ndarray, b: np.ndarray, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-express ``B @ A`` with components sorted by singular value, at ``rank``.

    Truncating the result to its first ``k`` components then gives the best rank-``k``
    approximation of ``B @ A`` (Eckart-Young), which is what a site of rank ``k`` should
    load. Exact (up to float error) when ``rank`` is at least the numerical rank of
    ``B @ A``; components beyond the product's rank are zero. Costs two thin QRs and one
    SVD of a ``rank x rank`` core, never the full ``out x in`` matrix.
    """
    q_b, r_b = np.linalg.qr(b)  # b = q_b r_b
    q_a, r_a = np.linalg.qr(a.T)  # a = r_a.T q_a.T
    u, s, vt = np.linalg.svd(r_b @ r_a.T)
    keep = min(rank, s.size)
    root = np.sqrt(s[:keep])
    new_b = np.zeros((b.shape[0], rank))
    new_a = np.zeros((rank, a.shape[1]))
    new_b[:, :keep] = (q_b @ u[:, :keep]) * root
    new_a[:keep] = root[:, None] * (vt[:keep] @ q_a.T)
    return new_a, new_b
