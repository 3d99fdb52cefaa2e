"""APGD (Croce & Hein 2020, AutoAttack's auto-PGD) at fixed eps, inside the shared epsilon
search: the smallest eps per sample at which APGD finds an adversarial (docs/attacks.md).

Written here from the paper and fra31/auto-attack's `autopgd_base.py`: step size 2 eps, momentum
0.75 after the first step, and at checkpoints (`checkpoints`) the step size halves per sample,
restarting from the best-loss point, where the loss rose in at most RHO of the period's steps,
or its best neither rose nor was halved at the previous checkpoint. Unlike AutoAttack, a sample
stops at its first adversarial (the search only asks whether eps suffices).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from abslab.attacks.base import Candidate, EpsilonSearchAttack
from abslab.attacks.queries import QueryModel, margin
from abslab.models.projected_gradient import LogitsFn, project, unit_l2

RHO = 0.75  # AutoAttack's oscillation threshold: loss rose in at most 75% of a period's steps


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The difference-of-logits ratio (R,) of logits (R, C >= 3), labels y (R,): minus the
    label's margin over the largest other logit, scaled by top-1 minus top-3 (scale-free)."""
    ordered = logits.sort(dim=1).values
    return margin(logits, y, 1.0) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (R,) per sample."""
    return F.cross_entropy(logits, y, reduction="none")


LOSSES = {"ce": ce_loss, "dlr": dlr_loss}


def _step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "linf" else unit_l2(grad)


def _into_ball(points: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """points (R, 1, 28, 28) into x's `norm` ball of radius eps (R, 1, 1, 1), then [0, 1]."""
    return (x + project(points - x, eps, norm)).clamp(0, 1)


def checkpoints(steps: int) -> dict[int, int]:
    """AutoAttack's checkpoints of a `steps`-step run: step count -> steps since the previous
    one. The first after 22% of the steps, then periods shrinking by 3% of the steps down
    to 6% (each at least 1)."""
    period = max(int(0.22 * steps), 1)
    shrink, least = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, mark = {}, period
    while mark <= steps:
        marks[mark] = period
        period = max(period - shrink, least)
        mark += period
    return marks


def apgd(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    loss: str = "ce",
    norm: str = "linf",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run on x (R, 1, 28, 28), labels y (R,), radius eps (R,), from the random
    start along noise (R, 1, 28, 28) (uniform in [-1, 1] for linf, normal for l2), scaled to
    norm eps as AutoAttack does.

    Returns the points (R, 1, 28, 28), each sample's first adversarial or else its best-loss
    point, and whether each is adversarial (R,). `logits_fn(points, sub)` gets sub (indices
    into x) of the samples still running.
    """
    n = len(x)
    loss_fn = LOSSES[loss]
    radius = eps.reshape(-1, 1, 1, 1)
    scale = noise.flatten(1).abs().amax(1) if norm == "linf" else noise.flatten(1).norm(dim=1)
    x_adv = (x + radius * noise / scale.clamp(min=1e-12).reshape(-1, 1, 1, 1)).clamp(0, 1)

    def evaluate(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss (R',), its input gradient and whether adversarial (R',) at x_adv[rows]."""
        with torch.enable_grad():
            points = x_adv[rows].requires_grad_(True)
            logits = logits_fn(points, rows)
            values = loss_fn(logits, y[rows])
            (grad,) = torch.autograd.grad(values.sum(), points)
        return values.detach(), grad, logits.argmax(1) != y[rows]

    everyone = torch.arange(n, device=x.device)
    loss_best, grad, found = evaluate(everyone)
    history = torch.zeros(steps + 1, n, device=x.device)  # loss before (0) and after each step
    history[0] = loss_best
    x_best, grad_best, x_old = x_adv.clone(), grad.clone(), x_adv.clone()
    step = 2 * radius.clone()
    marks = checkpoints(steps)
    halved = torch.ones(n, dtype=torch.bool, device=x.device)
    best_at_check = loss_best.clone()
    for i in range(steps):
        rows = (~found).nonzero().flatten()
        if len(rows) == 0:
            break
        here, centre, r = x_adv[rows], x[rows], radius[rows]
        z = _into_ball(here + step[rows] * _step_direction(grad[rows], norm), centre, r, norm)
        a = 0.75 if i > 0 else 1.0
        moved = _into_ball(here + a * (z - here) + (1 - a) * (here - x_old[rows]), centre, r, norm)
        x_old[rows], x_adv[rows] = here, moved
        values, grad[rows], adversarial = evaluate(rows)
        history[i + 1, rows] = values
        found[rows] = adversarial
        better = values > loss_best[rows]
        x_best[rows[better]] = moved[better]
        grad_best[rows[better]] = grad[rows[better]]
        loss_best[rows[better]] = values[better]
        period = marks.get(i + 1)
        if period is None:
            continue
        rises = (history[i + 1 - period : i + 2].diff(dim=0) > 0).sum(0)
        halve = (rises <= RHO * period) | (~halved & (best_at_check >= loss_best))
        halved, best_at_check = halve, loss_best.clone()
        restart = halve & ~found
        step[restart] /= 2
        x_adv[restart], grad[restart] = x_best[restart], grad_best[restart]
    return torch.where(found.reshape(-1, 1, 1, 1), x_adv, x_best), found


@dataclass(eq=False)
class APGDAttack(EpsilonSearchAttack):
    """APGD with `restarts` random starts of `steps` steps (restarts only for samples not yet
    adversarial) on the `loss` (ce or dlr), as the fixed-eps candidate of the shared epsilon
    search: the search's eps is APGD's radius. `start` is unused (accepts_start False)."""

    norms = ("l2", "linf")
    needs_gradient = True

    steps: int = 20
    restarts: int = 1
    loss: str = "dlr"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(
                f"attack.{self.name}.loss={self.loss!r}: choose one of {', '.join(LOSSES)}."
            )
        super().__post_init__()

    def make_candidate(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor) -> Candidate:
        def candidate(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            points = x[rows].clone()
            todo = torch.arange(len(rows), device=x.device)
            for _ in range(self.restarts):
                todo = todo[~model.frozen[rows[todo]]]  # samples out of max_queries stop
                if len(todo) == 0:
                    break
                owners = rows[todo]
                # each sample's own generator, so results do not depend on the batch
                noise = model.rand(owners) * 2 - 1 if self.norm == "linf" else model.randn(owners)
                found_points, found = apgd(
                    lambda v, sub, owners=owners: model(v, owners[sub]),
                    x[owners],
                    y[owners],
                    eps[todo],
                    noise,
                    self.steps,
                    self.loss,
                    self.norm,
                )
                points[todo] = found_points
                todo = todo[~found]
            return points

        return candidate
