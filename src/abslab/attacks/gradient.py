"""Gradient attacks: FGM, FGSM, L2 and L-inf BIM, MIM and PGD, written here (not foolbox's).

foolbox 3 has FGM/FGSM/BIM/MIFGSM, but judges only the final iterate at fixed epsilons,
normalises MIM's momentum differently from the paper's foolbox 1.3 (mean |g|) and cannot return
early per sample. `iterate` below is the one projected-gradient loop of abslab: the suite's BIM,
MIM and PGD attacks and Madry et al.'s adversarial training both call it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from abslab.attacks.base import Candidate, EpsilonSearchAttack, along
from abslab.attacks.queries import QueryModel

# logits_fn(x_sub (R, 1, 28, 28), rows (R,)) -> logits (R, 10): rows index the batch of `iterate`.
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(value: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=device).expand(n).reshape(n, 1, 1, 1)


def _unit_l2(v: torch.Tensor) -> torch.Tensor:
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
        direction = grad.sign() if norm == "linf" else _unit_l2(grad)
        moved = x_in + step_[active] * direction
        delta = project(moved - x[active], eps_[active], norm)
        x_adv[active] = (x[active] + delta).clamp(0, 1)
    return x_adv.detach()


class IterativeAttack(EpsilonSearchAttack):
    """BIM (L2 or L-inf), MIM (`momentum` 1.0) and PGD (`random_start`), with the step a fixed
    fraction `rel_stepsize` of epsilon, inside the shared epsilon search (foolbox 1.3 kept the
    step/epsilon ratio fixed too). `search: false` runs once at `eps_start` (PGD as Madry et
    al.'s check). Each step returns early per sample on success."""

    norms = ("l2", "linf")
    needs_gradient = True

    def __init__(
        self,
        name: str,
        norm: str,
        eps_start: float,
        steps: int = 10,
        rel_stepsize: float = 1 / 6,
        momentum: float = 0.0,
        random_start: bool = False,
        search: bool = True,
        growth: float = 1.5,
        bracket_steps: int = 20,
        bisect_steps: int = 20,
        eps_max: float | None = None,
    ) -> None:
        bracket_steps, bisect_steps = (bracket_steps, bisect_steps) if search else (1, 0)
        super().__init__(name, norm, eps_start, growth, bracket_steps, bisect_steps, eps_max)
        self.steps = steps
        self.rel_stepsize = rel_stepsize
        self.momentum = momentum
        self.random_start = random_start
        self.search = search

    def candidates(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor) -> Candidate:
        def candidate(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            return iterate(
                lambda v, sub: model(v, rows[sub]),
                x[rows],
                y[rows],
                eps,
                self.steps,
                eps * self.rel_stepsize,
                self.norm,
                self.random_start,
                self.momentum,
                stop_on_success=True,
            )

        return candidate


class SingleStepAttack(EpsilonSearchAttack):
    """FGM (L2: along g/|g|_2) and FGSM (L-inf: along sign g): one gradient at x, then the
    shared epsilon search along that direction (foolbox 1.3 searched 1,000 linear steps)."""

    norms = ("l2", "linf")
    needs_gradient = True

    def candidates(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor) -> Candidate:
        everyone = torch.arange(len(x), device=x.device)
        grad, _ = input_gradient(model, x, y, everyone)
        return along(x, grad.sign() if self.norm == "linf" else _unit_l2(grad))
