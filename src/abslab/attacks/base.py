"""What every attack of the suite is, and the one epsilon search fixed-epsilon attacks share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar

import torch

from abslab.attacks.distances import NORMS
from abslab.attacks.estimators import GradientEstimator
from abslab.attacks.queries import QueryModel
from abslab.models.base import Defense

# candidate(rows (R,), eps (R,)) -> images (R, 1, 28, 28) in [0, 1] for those samples at eps.
Candidate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def along(x: torch.Tensor, direction: torch.Tensor) -> Candidate:
    """The candidates x + eps * direction, clipped to [0, 1]: a fixed direction per sample
    (FGM/FGSM's gradient, Gaussian noise) scaled by the search's eps."""

    def candidate(rows: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (x[rows] + eps.reshape(-1, 1, 1, 1) * direction[rows]).clamp(0, 1)

    return candidate


@dataclass(eq=False)
class Attack:
    """One attack: `run(model, x, y)` returns candidate adversarials of x's shape.

    `norm` is the distance the attack minimises; `needs_gradient` says whether it asks
    autograd for input gradients; `source` says whose code it is (foolbox 3 where foolbox has
    the paper's attack, abslab where foolbox lacks it or differs in a way that matters).
    The harness verifies whatever `run` returns: clips it, re-predicts it, measures it, and
    also takes the smallest adversarial the QueryModel saw among the queries.

    Keys every attack's config has, taken out by the suite (abslab.attacks.suite):
    `max_queries` (per sample: a sample that used them is frozen, the others go on), `paper`
    (the attack is one of the paper's Table 1 rows), `start` ("own": the attack makes its own
    starting points; "best": `run` gets `start`, each sample's smallest verified adversarial of
    the suite's earlier attacks, or x where none, and `model.has_start` says which; only
    attacks with `accepts_start`).

    Independence from the batch: an attack whose result or queries for a sample depend on the
    other samples of its batch declares `batched = False`: one that draws from torch's or
    numpy's global generators. The harness then runs it one sample at a time, each under the
    seed of (run seed, attack, test index). Attacks that draw from `model.rand` / `model.randn`
    (one generator per sample) or nothing, and query a sample only for itself, run batched. An
    attack whose work on a sample ends at its first adversarial, but whose loop queries every
    sample until all are done (foolbox's DeepFool), declares `settles`: the QueryModel answers
    a sample that has one without the defense, and it runs batched.
    """

    name: str
    norm: str
    max_queries: int | None = field(default=None, init=False)  # per sample; set by the suite
    # Set from the config's `estimator` keys (the _ge attacks): gradients come from scores.
    estimator: GradientEstimator | None = field(default=None, init=False)
    # A _ge attack skips models whose autograd gradient is exact (CNN, Madry), as the paper's
    # "w/ GE" rows do: there the estimate only costs queries. Config key of the same name.
    skip_exact_gradients: bool = field(default=True, init=False)
    paper: bool = field(default=False, init=False)  # one of the paper's Table 1 attacks
    start: str = field(default="own", init=False)  # own | best (config key `start`)

    norms: ClassVar[tuple[str, ...]] = NORMS
    needs_gradient: ClassVar[bool] = False
    source: ClassVar[str] = "abslab"
    accepts_start: ClassVar[bool] = False  # `run` can start from given adversarials
    batched: ClassVar[bool] = True  # False: the harness runs it one sample at a time (see above)
    settles: ClassVar[bool] = False  # True: a sample's first adversarial ends its queries

    def __post_init__(self) -> None:
        if self.norm not in self.norms:
            raise ValueError(
                f"attack {self.name} ({type(self).__name__}) does not minimise norm={self.norm}: "
                f"it serves {', '.join(self.norms)}."
            )

    def run(
        self, model: QueryModel, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, 1, 28, 28) in [0, 1], correctly classified; y (B,); start (B, 1, 28, 28) or
        None (see the class docstring) -> adversarials (B, 1, 28, 28)."""
        raise NotImplementedError

    def unsupported(self, defense: Defense) -> str | None:
        """Why this attack cannot run on `defense` (the suite skips it, recording why), or None."""
        if self.needs_gradient and self.estimator is None and defense.gradient == "none":
            return f"model={defense.name} has no input gradient (gradient: none)"
        if self.estimator is not None and self.skip_exact_gradients and defense.gradient == "exact":
            return (
                f"model={defense.name} has exact input gradients, so estimating them only costs "
                f"queries (attack.{self.name}.skip_exact_gradients=false runs it anyway)"
            )
        return None

    def settings(self) -> dict[str, Any]:
        """The attack's settings under their config keys, for results files (JSON values)."""
        hidden = ("name", "max_queries", "paper", "start", "estimator", "skip_exact_gradients")
        settings = {k: v for k, v in vars(self).items() if k[0] != "_" and k not in hidden}
        if self.estimator is not None:
            kind, step, samples = self.estimator.kind, self.estimator.step, self.estimator.samples
            settings["estimator"] = {"kind": kind, "step": step, "samples": samples}
            settings["skip_exact_gradients"] = self.skip_exact_gradients
        return {
            "max_queries": self.max_queries,
            "paper": self.paper,
            "start": self.start,
            **settings,
        }


SEARCH_DEFAULTS = {"growth": 1.5, "bracket_steps": 20, "bisect_steps": 20}


@dataclass(eq=False)
class SearchAttack(Attack):
    """The bracket-then-bisect search over a per-sample scale eps that fixed-epsilon attacks
    and the transfer share (foolbox 1.3's semantics, which foolbox 3 dropped: its fixed-epsilon
    attacks take a list of epsilons).

    Per sample, batched: eps grows by `growth` from its start up to `bracket_steps` times until
    the candidate is adversarial (capped at `eps_max`), then `bisect_steps` bisections between
    the last failure and the first success. Every candidate is queried, so the QueryModel keeps
    the smallest adversarial met. Valid values: abslab.attacks.ranges, checked by the suite.
    """

    _: KW_ONLY  # the search's keys are keywords: eps_start comes third in subclasses
    growth: float = SEARCH_DEFAULTS["growth"]
    bracket_steps: int = SEARCH_DEFAULTS["bracket_steps"]
    bisect_steps: int = SEARCH_DEFAULTS["bisect_steps"]
    eps_max: float | None = None  # None: 1 in L-inf, 28 (the image diagonal) in L2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps_max is None:
            self.eps_max = {"linf": 1.0, "l2": 28.0}[self.norm]

    def epsilon_search(
        self, model: QueryModel, candidate: Candidate, y: torch.Tensor, start: torch.Tensor
    ) -> torch.Tensor:
        """The bracket-then-bisect search over eps from `start` (B,) per sample, judged by the
        model's decisions only; returns the smallest adversarial the queries met (B, ...)."""
        n = len(y)
        low = torch.zeros(n, device=y.device)
        high = torch.full((n,), float("inf"), device=y.device)
        eps = start.clamp(max=self.eps_max)
        for _ in range(self.bracket_steps):
            rows = (torch.isinf(high) & (low < self.eps_max)).nonzero().flatten()
            if len(rows) == 0:  # every sample bracketed, or failed at eps_max itself
                break
            self._probe(model, candidate, y, rows, eps[rows], low, high)
            eps[rows] = (eps[rows] * self.growth).clamp(max=self.eps_max)
        for _ in range(self.bisect_steps):
            rows = torch.isfinite(high).nonzero().flatten()
            if len(rows) == 0:
                break
            self._probe(model, candidate, y, rows, (low[rows] + high[rows]) / 2, low, high)
        return model.best.clone()

    @staticmethod
    def _probe(
        model: QueryModel,
        candidate: Candidate,
        y: torch.Tensor,
        rows: torch.Tensor,
        eps: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
    ) -> None:
        """Try eps (R,) on samples rows; move their bracket (low, high) accordingly."""
        success = model.predict(candidate(rows, eps), rows) != y[rows]
        high[rows[success]] = torch.minimum(high[rows[success]], eps[success])
        low[rows[~success]] = torch.maximum(low[rows[~success]], eps[~success])


@dataclass(eq=False)
class EpsilonSearchAttack(SearchAttack):
    """A fixed-epsilon attack made into a smallest-adversarial one: the search starts at
    `eps_start` for every sample. Subclasses give `make_candidate(model, x, y) -> Candidate`."""

    eps_start: float

    def make_candidate(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor) -> Candidate:
        """The images at eps of each sample of x (B, 1, 28, 28), labels y (B,)."""
        raise NotImplementedError

    def run(
        self, model: QueryModel, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        eps = torch.full((len(x),), self.eps_start, device=x.device)
        return self.epsilon_search(model, self.make_candidate(model, x, y), y, eps)
