"""L-infinity projected gradient descent (Madry et al.), batched, for training and evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F


def pgd_linf(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
) -> torch.Tensor:
    """Maximise cross-entropy within the L-inf ball of radius eps around x, inside [0, 1].

    x (B, 1, 28, 28), y (B,) -> x_adv of x's shape with |x_adv - x| <= eps. Only the input
    gradient is computed, so parameter gradients are left untouched.
    """
    x = x.detach()
    noise = torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x)
    x_adv = (x + noise).clamp(0, 1)
    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()
