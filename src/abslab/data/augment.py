"""Light geometric augmentation for the VAEs (the co-author's code: docs/paper.md §3.2)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def light_affine(
    x: torch.Tensor,
    probability: float,
    zoom: float = 0.1,
    shear_degrees: float = 6.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zoom by 1 +- `zoom` and shear by +- `shear_degrees` each image with `probability`.

    x (N, 1, 28, 28) -> same shape. The reimplementation's Augmentor pipeline also skews and
    distorts, each with probability 0.1; a random affine map covers the same small deformations.
    """
    if probability <= 0:
        return x
    chosen = torch.rand(len(x), generator=generator) < probability
    n = int(chosen.sum())
    if n == 0:
        return x
    scale = 1 + zoom * (2 * torch.rand(n, generator=generator) - 1)
    shear = math.tan(math.radians(shear_degrees)) * (2 * torch.rand(n, generator=generator) - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / scale
    theta[:, 0, 1] = shear / scale
    theta[:, 1, 1] = 1 / scale
    grid = F.affine_grid(theta.to(x), [n, *x.shape[1:]], align_corners=False)
    out = x.clone()
    out[chosen.to(x.device)] = F.grid_sample(x[chosen.to(x.device)], grid, align_corners=False)
    return out
