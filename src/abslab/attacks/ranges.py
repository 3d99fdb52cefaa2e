"""The valid values of every numeric attack setting, declared once per config key, and the check
that refuses a bad one (naming its config path) before any attack runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (`low_open`: `low` itself excluded); `integer`: whole
    numbers only; `even`: even integers; `nullable`: null allowed (e.g. no query budget)."""

    low: float
    high: float = math.inf
    integer: bool = False
    low_open: bool = False
    even: bool = False
    nullable: bool = False

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if self.even and value % 2:
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def __str__(self) -> str:
        kind = "an even integer" if self.even else "an integer" if self.integer else "a number"
        if self.high == math.inf:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return text + (", or null" if self.nullable else "")


def check_value(path: str, value: Any, valid: Range) -> None:
    """ValueError `path=value: must be <valid>` unless `valid` admits value."""
    if not valid.admits(value):
        raise ValueError(f"{path}={value}: must be {valid}.")


COUNT = Range(1, integer=True)
FRACTION = Range(0, 1, low_open=True)  # a share of something, in (0, 1]

# Attack config keys -> their valid values, whichever attack has them (same key, same meaning).
ATTACK_RANGES: dict[str, Range] = {
    "max_queries": Range(1, integer=True, nullable=True),  # per sample
    "steps": COUNT,
    "repetitions": COUNT,
    "epsilons": COUNT,  # salt and pepper: probabilities tried per repetition
    "init_epsilons": COUNT,
    "init_repetitions": COUNT,
    "init_directions": COUNT,
    "init_steps": COUNT,
    "candidates": Range(2, integer=True),  # DeepFool: classes considered, the label's included
    "bracket_steps": COUNT,
    "bisect_steps": Range(0, integer=True),
    "n_coarse_steps": Range(2, integer=True),  # s = 0 and s = 1 at least
    "n_fine_steps": Range(0, integer=True),
    "eps_start": Range(0, low_open=True),
    "growth": Range(1, low_open=True),
    "step_adaptation": Range(1, low_open=True),
    "rel_stepsize": FRACTION,  # of epsilon
    "momentum": Range(0, 1),  # MIM's decay factor; Brendel-Bethge's weight of past normals
    "overshoot": Range(0),
    "spherical_step": FRACTION,
    "source_step": FRACTION,
    # abslab.attacks.minimal (FMN, DDN, Brendel-Bethge, HopSkipJump)
    "max_stepsize": Range(0, low_open=True),  # FMN: first step (L2 norm of the step)
    "min_stepsize": Range(0, low_open=True),  # FMN: last step of its cosine annealing
    "gamma": FRACTION,  # FMN, DDN: the radius's relative change per step
    "init_epsilon": Range(0, low_open=True),  # DDN: first radius (L2)
    "lr": Range(0, low_open=True),  # Brendel-Bethge: trust region (share of the input range);
    # σ-zero: first step size of its Adam steps
    "lr_decay": FRACTION,
    "lr_num_decay": COUNT,
    "overshoot_factor": Range(1),  # Brendel-Bethge: aims this factor past the boundary
    "binary_search_steps": Range(0, integer=True),
    "initial_gradient_eval_steps": COUNT,  # HopSkipJump: probes of its first gradient estimate
    "max_gradient_eval_steps": COUNT,
    "search_gamma": Range(0, low_open=True),  # HopSkipJump: boundary-search tolerance
    # abslab.attacks.sigma_zero (σ-zero) and abslab.attacks.apgd (APGD in the epsilon search)
    "sigma": Range(0, low_open=True),  # σ-zero: smoothness of its L0 approximation
    "threshold": Range(0, 1),  # σ-zero: first threshold below which components are zeroed
    "threshold_factor": Range(0, low_open=True),  # σ-zero: threshold change per unit step size
    "restarts": COUNT,  # APGD: random starts per eps (only for samples not yet adversarial)
    # abslab.attacks.nearest_neighbor (the exact 1-NN attack)
    "max_candidates": COUNT,  # other-class training images solved for per sample
    "initial_constraints": COUNT,  # the label's training images every problem starts with
    "constraints_per_round": COUNT,
    "max_rounds": COUNT,
    "margin": Range(0, low_open=True),  # squared L2 units
    "primal_tolerance": Range(0, low_open=True),
    "iteration_limit": COUNT,
    # abslab.attacks.nearest_neighbor_l0 (the greedy 1-NN L0 attack)
    "targets": Range(0, integer=True),  # other-class training images targeted, beside untargeted
    "aim_factor": Range(1),  # the margin aimed at, in multiples of abslab.attacks.queries.AIM
}
# A budget's counts (conf/budget): null leaves the run's own value (distal_steps has none).
BUDGET_RANGES: dict[str, Range] = {
    "samples": Range(1, integer=True, nullable=True),
    "expensive_samples": Range(1, integer=True, nullable=True),
    "expensive_batch_size": Range(1, integer=True, nullable=True),
    "distal_steps": COUNT,
}


def check_settings(settings: Mapping[str, Any], path: str, ranges: Mapping[str, Range]) -> None:
    """Each key of `settings` that `ranges` knows, checked; error names `path.key`."""
    for key, value in settings.items():
        if key in ranges:
            check_value(f"{path}.{key}", value, ranges[key])
