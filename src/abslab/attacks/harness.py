"""Running one attack on one batch without trusting it: the harness verifies every output, and a
sample's result does not depend on the batch it ran in."""

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
from abslab.attacks.queries import QueryModel, adversarial
from abslab.models.base import Defense

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One attack on a batch of B samples. adversarial (B, 1, 28, 28): the smallest verified
    adversarial, or the original where none was found; success, adv_pred (-1: none), distance
    (0: clean misclassification, inf: nothing found), queries (forward rows), gradients
    (backward passes), seconds: (B,); error (B,) '' or why the attack failed on that sample;
    note (B,) what the attack said about the sample (`QueryModel.set_note`)."""

    adversarial: torch.Tensor
    success: torch.Tensor
    adv_pred: torch.Tensor
    distance: torch.Tensor
    queries: torch.Tensor
    gradients: torch.Tensor
    seconds: torch.Tensor
    error: list[str]
    note: list[str]

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
            gradients=torch.zeros(n, dtype=torch.long, device=x.device),
            seconds=torch.zeros(n, device=x.device),
            error=[""] * n,
            note=[""] * n,
        )


def attack_seed(seed: int, attack: str, index: int) -> int:
    """The seed of one sample (test-file `index`) under one attack: reruns, resumed runs and
    any batch size or shard give the sample the same random numbers."""
    return (seed * 1_000_003 + zlib.crc32(attack.encode()) + index) % 2**31


def judge(
    defense: Defense, images: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The defense's predictions (N,) of images (N, 1, 28, 28), and whether each is adversarial
    for labels y (N,) with the margin (abslab.attacks.queries.adversarial), computed
    `batch_size` images at a time (None: all at once)."""
    step = batch_size or max(len(images), 1)
    with torch.no_grad():
        logits = torch.cat([defense(images[i : i + step]) for i in range(0, len(images), step)])
    return logits.argmax(1), adversarial(logits, y, defense.logit_scale)


def run_attack(
    attack: Attack,
    defense: Defense,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    seed: int,
    index: torch.Tensor | None = None,
    start: torch.Tensor | None = None,
    has_start: torch.Tensor | None = None,
) -> Outcome:
    """Attack the correctly classified samples of x (B, 1, 28, 28), labels y (B,), test-file
    indices `index` (B,; default 0..B-1). `start` (B, 1, 28, 28), `has_start` (B,): the
    starting adversarials of a `start: best` attack (None: the attack makes its own).

    Independence from the batch: an attack that is not `batched` runs one sample at a time,
    torch's and numpy's global generators seeded by attack_seed(seed, attack, index) of that
    sample; the others run batched, each sample's own generator (`model.rand`) seeded alike.
    Budgets are per sample (`max_queries`: QueryModel freezes a sample that used them).

    Candidates per sample are the attack's output and the smallest adversarial its queries
    met (binary models: each also after binarization refinement, which reads nothing from the
    model: its queries are the harness's, not counted). An attack that raises (a NaN inside
    the defense included) or returns the wrong shape keeps what its queries met and records
    the error on every sample; NaN in a sample's output loses only that output.

    Verification: each candidate is clipped to [0, 1] and measured here. One that would be the
    sample's smallest is re-predicted by the defense in its batch (the samples the attack ran
    on together) and alone (batch size 1), and kept only if both call it adversarial by the
    margin rule (abslab.attacks.queries.MARGIN: the best wrong logit ahead of the true one by
    1e-3 in calibrated units) with the same class. Why both: float32 logits differ in their
    last bits with the batch they are computed in, and argmax ties within 5e-5 logits flipped
    when a run was re-predicted at another batch size; the margin puts kept adversarials far
    beyond such rounding, the two batch sizes check it, and `python -m abslab.verify` repeats
    it later. Attacks are shown, and the QueryModel keeps, adversarials by twice the margin
    (queries.AIM): a search bisects to the edge it is shown, which must lie beyond MARGIN.
    """
    out = Outcome.unattacked(x, y, clean_pred)
    rows = (~out.success).nonzero().flatten()
    if len(rows) == 0:
        return out
    index = torch.arange(len(x), device=x.device) if index is None else index
    if start is not None and has_start is None:
        has_start = torch.ones(len(x), dtype=torch.bool, device=x.device)
    groups = [rows] if attack.batched else list(rows.split(1))
    for group in groups:
        found = _attack_group(out, attack, defense, x, y, index, seed, group, start, has_start)
        _keep_smallest(out, defense, attack.norm, group, x, y, found)
    return out


def _attack_group(
    out: Outcome,
    attack: Attack,
    defense: Defense,
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    seed: int,
    group: torch.Tensor,
    start: torch.Tensor | None,
    has_start: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Run the attack on the samples `group` (G,) of the batch; record their queries,
    gradients, seconds, errors and notes in `out`; return the candidates (G, 1, 28, 28)."""
    seeds = [attack_seed(seed, attack.name, int(i)) for i in index[group]]
    torch.manual_seed(seeds[0])
    np.random.seed(seeds[0])  # foolbox's Pointwise shuffles with numpy's global generator
    model = QueryModel(
        defense,
        x[group],
        y[group],
        attack.norm,
        attack.max_queries,
        attack.estimator,
        seeds=seeds,
        margin_view=True,
        settle=attack.settles,
    )
    model.index, model.seed = index[group], seed
    if has_start is not None:
        model.has_start = has_start[group].clone()
    started = time.perf_counter()
    given = None if start is None else start[group]
    found, errors = _candidates(attack, model, x[group], y[group], given)
    if defense.binarize_input:
        found += _refined(defense, attack.norm, x[group], y[group], found)
    out.seconds[group] = (time.perf_counter() - started) / len(group)
    out.queries[group] = model.queries
    out.gradients[group] = model.gradients
    for i, row in enumerate(group.tolist()):
        out.error[row] = errors[i]
        out.note[row] = model.notes[i]
    return found


def _candidates(
    attack: Attack,
    model: QueryModel,
    x: torch.Tensor,
    y: torch.Tensor,
    start: torch.Tensor | None,
) -> tuple[list[torch.Tensor], list[str]]:
    try:
        with torch.enable_grad():
            if start is None:
                returned = attack.run(model, x, y)
            else:
                returned = attack.run(model, x, y, start=start)
    except Exception as exc:  # any failure of an attack is a recorded row, never a dead sweep
        log.warning("attack %s failed on a batch: %s: %s", attack.name, type(exc).__name__, exc)
        return [model.best.clone()], [f"{type(exc).__name__}: {exc}"[:300]] * len(x)
    met = model.best.clone()
    if not isinstance(returned, torch.Tensor) or returned.shape != x.shape:
        shape = getattr(returned, "shape", type(returned).__name__)
        return [met], [f"returned {shape} for inputs {tuple(x.shape)}"] * len(x)
    returned = returned.detach().to(x.device, x.dtype)
    finite = torch.isfinite(returned.flatten(1)).all(1)
    errors = ["" if ok else "returned NaN or inf" for ok in finite.tolist()]
    returned = torch.where(finite.reshape(-1, 1, 1, 1), returned, x)
    return [returned, met], errors


def _refined(
    defense: Defense, norm: str, x: torch.Tensor, y: torch.Tensor, candidates: list[torch.Tensor]
) -> list[torch.Tensor]:
    refined = []
    checker = QueryModel(defense, x, y, norm)  # refinement's own queries: a check, not counted
    for candidate in candidates:
        try:
            refined.append(refine_binarized(checker, x, y, candidate.clamp(0, 1)))
        except Exception as exc:  # refinement only ever shrinks: without it, keep the original
            log.warning("binarization refinement failed: %s: %s", type(exc).__name__, exc)
    return refined


def _keep_smallest(
    out: Outcome,
    defense: Defense,
    norm: str,
    rows: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    candidates: list[torch.Tensor],
) -> None:
    """Keep, per sample of `rows` (R,), the smallest candidate (each (R, 1, 28, 28)) that the
    defense calls adversarial with the margin in this batch and alone, with the same class."""
    for candidate in candidates:
        candidate = candidate.clamp(0, 1)
        pred, fooled = judge(defense, candidate, y[rows])
        size = distance(candidate, x[rows], norm)
        better = (fooled & (size < out.distance[rows])).nonzero().flatten()
        if len(better) == 0:
            continue
        alone, fooled_alone = judge(defense, candidate[better], y[rows[better]], batch_size=1)
        better = better[fooled_alone & (alone == pred[better])]
        where = rows[better]
        out.adversarial[where] = candidate[better]
        out.adv_pred[where] = pred[better]
        out.distance[where] = size[better]
        out.success[where] = True
