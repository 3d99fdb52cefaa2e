"""Running one attack on one batch without trusting it: the harness verifies every output."""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from abslab.attacks.base import Attack
from abslab.attacks.distances import distance
from abslab.attacks.library import refine_binarized
from abslab.attacks.queries import QueryBudgetExhausted, QueryModel
from abslab.models.base import Defense

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One attack on a batch of B samples. adversarial (B, 1, 28, 28): the smallest verified
    adversarial, or the original where none was found; success, adv_pred (-1: none), distance
    (0: clean misclassification, inf: nothing found), queries, seconds: (B,); error (B,) ''
    or why the attack failed on that sample."""

    adversarial: torch.Tensor
    success: torch.Tensor
    adv_pred: torch.Tensor
    distance: torch.Tensor
    queries: torch.Tensor
    seconds: torch.Tensor
    error: list[str]

    @classmethod
    def unattacked(cls, x: torch.Tensor, y: torch.Tensor, clean_pred: torch.Tensor) -> Outcome:
        """Before any attack: clean misclassifications are adversarial at distance 0, the
        others not (yet): infinite distance, no prediction (-1)."""
        n, wrong = len(x), clean_pred != y
        return cls(
            adversarial=x.clone(),
            success=wrong.clone(),
            adv_pred=torch.where(wrong, clean_pred, -1),
            distance=torch.where(wrong, 0.0, float("inf")),
            queries=torch.zeros(n, dtype=torch.long, device=x.device),
            seconds=torch.zeros(n, device=x.device),
            error=[""] * n,
        )


def attack_seed(seed: int, attack: str, first_index: int) -> int:
    """A seed per (run seed, attack, batch): reruns and resumed runs repeat each batch exactly."""
    return (seed * 1_000_003 + zlib.crc32(attack.encode()) + first_index) % 2**31


def run_attack(
    attack: Attack,
    defense: Defense,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    seed: int,
) -> Outcome:
    """Attack the correctly classified samples of x (B, 1, 28, 28), labels y (B,).

    Candidates are the attack's output and the smallest adversarial its queries met (binary
    models: each also after binarization refinement). Each is clipped to [0, 1], re-predicted
    by the defense itself and measured here; the smallest misclassified one is kept. An
    attack that raises (a NaN inside the defense included) or returns the wrong shape fails
    for the whole batch; NaN in a sample's output fails that sample. Errors become rows. An
    attack stopped by its `max_queries` is no error: the smallest adversarial it met counts.
    """
    out = Outcome.unattacked(x, y, clean_pred)
    rows = (~out.success).nonzero().flatten()
    if len(rows) == 0:
        return out
    torch.manual_seed(seed)
    np.random.seed(seed)  # foolbox's Pointwise shuffles with numpy's global generator
    model = QueryModel(defense, x[rows], y[rows], attack.norm, attack.max_queries, attack.estimator)
    started = time.perf_counter()
    candidates, errors = _candidates(attack, model, x[rows], y[rows])
    if defense.binarize_input and candidates:
        candidates += _refined(model, x[rows], y[rows], candidates)
    out.seconds[rows] = (time.perf_counter() - started) / len(rows)
    out.queries[rows] = model.queries
    for i, row in enumerate(rows.tolist()):
        out.error[row] = errors[i]
    with torch.no_grad():
        for candidate in candidates:
            _keep_if_smaller(out, defense, attack.norm, rows, x[rows], y[rows], candidate)
    return out


def _candidates(
    attack: Attack, model: QueryModel, x: torch.Tensor, y: torch.Tensor
) -> tuple[list[torch.Tensor], list[str]]:
    try:
        with torch.enable_grad():
            returned = attack.run(model, x, y)
    except QueryBudgetExhausted:  # a budget, not a fault: keep what the queries met
        return [model.best.clone()], [""] * len(x)
    except Exception as exc:  # any failure of an attack is a recorded row, never a dead sweep
        log.warning("attack %s failed on a batch: %s: %s", attack.name, type(exc).__name__, exc)
        return [], [f"{type(exc).__name__}: {exc}"[:300]] * len(x)
    if not isinstance(returned, torch.Tensor) or returned.shape != x.shape:
        shape = getattr(returned, "shape", type(returned).__name__)
        return [], [f"returned {shape} for inputs {tuple(x.shape)}"] * len(x)
    returned = returned.detach().to(x.device, x.dtype)
    finite = torch.isfinite(returned.flatten(1)).all(1)
    errors = ["" if ok else "returned NaN or inf" for ok in finite.tolist()]
    returned = torch.where(finite.reshape(-1, 1, 1, 1), returned, x)
    return [returned, model.best.clone()], errors


def _refined(
    model: QueryModel, x: torch.Tensor, y: torch.Tensor, candidates: list[torch.Tensor]
) -> list[torch.Tensor]:
    refined = []
    for candidate in candidates:
        try:
            refined.append(refine_binarized(model, x, y, candidate.clamp(0, 1)))
        except Exception as exc:  # refinement only ever shrinks: without it, keep the original
            log.warning("binarization refinement failed: %s: %s", type(exc).__name__, exc)
    return refined


def _keep_if_smaller(
    out: Outcome,
    defense: Defense,
    norm: str,
    rows: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    candidate: torch.Tensor,
) -> None:
    candidate = candidate.clamp(0, 1)
    pred = defense(candidate).argmax(1)
    found = distance(candidate, x, norm)
    failed = torch.tensor([bool(e) for e in out.error], device=x.device)[rows]
    better = (pred != y) & (found < out.distance[rows]) & ~failed
    where = rows[better]
    out.adversarial[where] = candidate[better]
    out.adv_pred[where] = pred[better]
    out.distance[where] = found[better]
    out.success[where] = True
