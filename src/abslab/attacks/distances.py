"""The three distances of the paper, measured by the harness itself (docs/attacks.md §1)."""

from __future__ import annotations

import torch

NORMS = ("l2", "linf", "l0")


def distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample distance of x_adv from x, both (N, 1, 28, 28): (N,).

    l2: Euclidean norm of the difference; linf: its largest absolute value; l0: the number of
    pixels that differ at all (foolbox 1.3's `np.sum(diff != 0)`, one channel).
    """
    diff = (x_adv - x).flatten(1)
    if norm == "l2":
        return diff.norm(dim=1)
    if norm == "linf":
        return diff.abs().amax(dim=1)
    if norm == "l0":
        return (diff != 0).sum(dim=1).to(x.dtype)
    raise ValueError(f"norm={norm!r}: choose one of {NORMS}.")
