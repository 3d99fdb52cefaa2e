"""Gradient attacks: FGM, FGSM, L2 and L-inf BIM, MIM and PGD, written here (not foolbox's).

foolbox 3 has FGM/FGSM/BIM/MIFGSM, but judges only the final iterate at fixed epsilons,
normalises MIM's momentum differently from the paper's foolbox 1.3 (mean |g|) and cannot return
early per sample. The projected-gradient loop itself, `iterate`, is
abslab.models.projected_gradient's: Madry et al.'s adversarial training calls it too.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import torch

from abslab.attacks.base import SEARCH_DEFAULTS, Candidate, EpsilonSearchAttack, along
from abslab.attacks.queries import QueryModel
from abslab.models.projected_gradient import input_gradient, iterate, unit_l2

NO_SEARCH = {"bracket_steps": 1, "bisect_steps": 0}  # search: false: one probe at eps_start


@dataclass(eq=False)
class IterativeAttack(EpsilonSearchAttack):
    """BIM (L2 or L-inf), MIM (`momentum` 1.0) and PGD (`random_start`), with the step a fixed
    fraction `rel_stepsize` of epsilon, inside the shared epsilon search (foolbox 1.3 kept the
    step/epsilon ratio fixed too). `search: false` runs once at `eps_start` (PGD as Madry et
    al.'s check), so the search's keys (growth, bracket_steps, bisect_steps) are an error
    there. Each step returns early per sample on success."""

    norms = ("l2", "linf")
    needs_gradient = True

    steps: int = 10
    rel_stepsize: float = 1 / 6
    momentum: float = 0.0
    random_start: bool = False
    search: bool = True
    _: KW_ONLY
    # None: the search's defaults; with search: false, one probe at eps_start (NO_SEARCH)
    growth: float | None = None
    bracket_steps: int | None = None
    bisect_steps: int | None = None

    def __post_init__(self) -> None:
        given = [key for key in SEARCH_DEFAULTS if getattr(self, key) is not None]
        if not self.search and given:
            raise ValueError(
                f"attack.{self.name}: {', '.join(given)} apply only with search: true (search: "
                "false runs once at eps_start): remove them, or set search: true."
            )
        resolved = SEARCH_DEFAULTS if self.search else {**SEARCH_DEFAULTS, **NO_SEARCH}
        for key in SEARCH_DEFAULTS:
            if getattr(self, key) is None:
                setattr(self, key, resolved[key])
        super().__post_init__()

    @property
    def batched(self) -> bool:
        """A random start draws from torch's global generator (projected_gradient.iterate):
        then one sample at a time."""
        return not self.random_start

    def make_candidate(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor) -> Candidate:
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


@dataclass(eq=False)
class SingleStepAttack(EpsilonSearchAttack):
    """FGM (L2: along g/|g|_2) and FGSM (L-inf: along sign g): one gradient at x, then the
    shared epsilon search along that direction (foolbox 1.3 searched 1,000 linear steps)."""

    norms = ("l2", "linf")
    needs_gradient = True

    def make_candidate(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor) -> Candidate:
        everyone = torch.arange(len(x), device=x.device)
        grad, _ = input_gradient(model, x, y, everyone)
        return along(x, grad.sign() if self.norm == "linf" else unit_l2(grad))
