"""Projected gradient ascent on the cross-entropy: the one PGD loop of abslab.

The suite's BIM, MIM and PGD attacks (abslab.attacks.gradient) and Madry et al.'s adversarial
training (abslab.models.madry) both call `iterate`. It lives with the models, not the attacks,
because a model's training uses it and models never import attacks (docs/defenses.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

# logits_fn(x_sub (R, 1, 28, 28), rows (R,)) -> logits (R, 10): rows index the batch of `iterate`.
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(value: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=device).expand(n).reshape(n, 1, 1, 1)


def unit_l2(v: torch.Tensor) -> torch.Tensor:
    """v (R, 1, 28, 28) scaled to unit L2 norm per sample (zero stays zero)."""
    return v / v.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)


def input_gradient(
    logits_fn: LogitsFn, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient (R, 1, 28, 28) of the summed cross-entropy at x (R, ...) for samples rows, and
    the logits (R, 10) there: per-sample gradients, since samples do not interact."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = logits_fn(x, rows)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    return grad, logits.detach()


def project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """delta (R, 1, 28, 28) into the norm ball of radius eps (R, 1, 1, 1)."""
    if norm == "linf":
        return torch.max(torch.min(delta, eps), -eps)
    scale = eps.flatten() / delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * scale.clamp(max=1).reshape(-1, 1, 1, 1)


def iterate(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int,
    step_size: float | torch.Tensor,
    norm: str = "linf",
    random_start: bool = False,
    momentum: float = 0.0,
    stop_on_success: bool = False,
) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy within the `norm` ball (l2 or linf) of
    radius eps around x, inside [0, 1].

    x (B, 1, 28, 28), y (B,); eps and step_size scalars or per sample (B,). Steps follow
    sign(g) (linf) or g/|g|_2 (l2); with `momentum` > 0 the direction is the momentum of
    g/mean|g| (MIM, foolbox 1.3). `random_start`: uniform in the linf ball (Madry et al.).
    `stop_on_success`: a sample stops moving once it is misclassified (foolbox 1.3's
    return_early), which saves its queries. Only input gradients are computed.
    """
    n, device = len(x), x.device
    eps_, step_ = _per_sample(eps, n, device), _per_sample(step_size, n, device)
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        x_adv = (x + torch.empty_like(x).uniform_(-1, 1) * eps_).clamp(0, 1)
    velocity = torch.zeros_like(x)
    active = torch.arange(n, device=device)
    for _ in range(steps):
        x_in = x_adv[active]
        grad, logits = input_gradient(logits_fn, x_in, y[active], active)
        if stop_on_success:
            going = logits.argmax(1) == y[active]
            active, grad, x_in = active[going], grad[going], x_in[going]
            if len(active) == 0:
                break
        if momentum > 0:
            mean_abs = grad.abs().flatten(1).mean(1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
            velocity[active] = momentum * velocity[active] + grad / mean_abs
            grad = velocity[active]
        direction = grad.sign() if norm == "linf" else unit_l2(grad)
        moved = x_in + step_[active] * direction
        delta = project(moved - x[active], eps_[active], norm)
        x_adv[active] = (x[active] + delta).clamp(0, 1)
    return x_adv.detach()
