"""Medians, accuracies, curves and optimality from per_sample.csv rows (docs/paper.md,
docs/attacks.md): what summary.json and the report's cells hold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# An adversarial made at exactly epsilon (x + delta, |delta| <= eps) measures up to a float32
# rounding beyond it; a relative tolerance keeps such samples counted as broken at epsilon.
RELATIVE_TOLERANCE = 1e-5


def beyond(distances: torch.Tensor | np.ndarray, eps: float) -> torch.Tensor | np.ndarray:
    """Whether each smallest-adversarial distance exceeds eps, beyond float rounding: the
    samples that count as robust (correct) at eps."""
    return distances > eps * (1 + RELATIVE_TOLERANCE)


ALL_ROW = "all"  # the key of the all-attacks row: the per-sample minimum over the attacks
# The key of the paper's-attacks row: the per-sample minimum over the paper's Table 1 attacks.
PAPER_ROW = "paper_attacks"


def curve_epsilons(norm: Mapping[str, Any]) -> np.ndarray:
    """The epsilon grid of the accuracy curves of a norm config: curve_points values from 0 to
    curve_max."""
    return np.linspace(0.0, float(norm["curve_max"]), int(norm["curve_points"]))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _stats(
    distances: np.ndarray, threshold: float, epsilons: np.ndarray, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Median (None: infinite), accuracy at the threshold (fraction of samples whose smallest
    adversarial is farther than it, beyond float rounding), the curve, and counts; queries and
    seconds are means over the samples the attack actually ran on (clean-correct ones)."""
    attacked = [r for r in rows if r["clean_pred"] == r["label"]]
    return {
        "n_samples": len(distances),
        "median_distance": _finite_or_none(float(np.median(distances))),
        "accuracy_at_threshold": float(np.mean(beyond(distances, threshold))),
        "curve_accuracy": [round(float(np.mean(beyond(distances, e))), 6) for e in epsilons],
        "successes": int(sum(r["success"] for r in attacked)),
        "failures": int(sum(not r["success"] and not r["error"] for r in attacked)),
        "errors": int(sum(bool(r["error"]) for r in attacked)),
        "queries_per_sample": float(np.mean([r["queries"] for r in attacked])) if attacked else 0,
        "seconds_per_sample": float(np.mean([r["seconds"] for r in attacked])) if attacked else 0,
    }


def optimality(curve: list[float], best: list[float], epsilons: list[float]) -> float | None:
    """AttackBench's optimality of an attack (Cinà et al., AAAI 2025; docs/attacks.md §10):
    1 - (A - A*) / (A0 - A*), with A the area under the attack's accuracy curve, A* under the
    best (all-attacks) curve and A0 = best[0] * range the area of an attack that finds nothing,
    all by the trapezoid rule over the cell's epsilon grid. 1: the curve is the best one; 0: it
    found nothing in the grid's range. None where no attack found anything there (A0 = A*)."""
    span = epsilons[-1] - epsilons[0]
    best_area = float(np.trapezoid(best, epsilons))
    nothing_area = best[0] * span
    if nothing_area - best_area <= 0:
        return None
    area = float(np.trapezoid(curve, epsilons))
    return round(1 - (area - best_area) / (nothing_area - best_area), 6)


def _minimum_row(
    per_attack: dict[str, dict[int, float]],
    rows: list[dict[str, Any]],
    threshold: float,
    epsilons: np.ndarray,
) -> dict[str, Any]:
    """The statistics of the per-sample minimum over the attacks of `per_attack` (name ->
    index -> distance), on the samples every one of them has finished; queries and seconds
    are those attacks' sums per such sample."""
    complete = sorted(set.intersection(*(set(d) for d in per_attack.values())))
    smallest = np.array([min(d[i] for d in per_attack.values()) for i in complete])
    mine = [r for r in rows if r["index"] in set(complete) and r["attack"] in per_attack]
    stats = _stats(smallest, threshold, epsilons, [])
    stats.update(
        successes=int(np.isfinite(smallest).sum()),
        failures=int(np.isinf(smallest).sum()),
        errors=int(sum(bool(r["error"]) for r in mine)),
        queries_per_sample=float(sum(r["queries"] for r in mine)) / max(len(complete), 1),
        seconds_per_sample=float(sum(r["seconds"] for r in mine)) / max(len(complete), 1),
    )
    return stats


def summarize(
    rows: list[dict[str, Any]],
    attacks: list[str],
    threshold: float,
    epsilons: np.ndarray,
    paper: list[str] | None = None,
) -> dict[str, Any]:
    """Per attack, for the paper's attacks (`paper`: those of `attacks` among the paper's
    Table 1 rows; None: no such row) and for all attacks (the per-sample minimum over `attacks`,
    on the samples every one of them has finished), from the rows of per_sample.csv; each row
    with its optimality against the all-attacks curve."""
    clean = {r["index"]: r["clean_pred"] == r["label"] for r in rows}
    summary: dict[str, Any] = {
        "n_samples": len(clean),
        "clean_accuracy": float(np.mean(list(clean.values()))) if clean else float("nan"),
        "threshold": threshold,
        "curve_epsilons": [round(float(e), 6) for e in epsilons],
        "attacks": {},
    }
    per_attack: dict[str, dict[int, float]] = {}
    for attack in attacks:
        mine = sorted((r for r in rows if r["attack"] == attack), key=lambda r: r["index"])
        if not mine:
            continue
        per_attack[attack] = {r["index"]: r["distance"] for r in mine}
        distances = np.array([r["distance"] for r in mine])
        summary["attacks"][attack] = _stats(distances, threshold, epsilons, mine)
    if not per_attack:
        return summary
    papers = {a: d for a, d in per_attack.items() if a in (paper or [])}
    if papers:
        summary["attacks"][PAPER_ROW] = _minimum_row(papers, rows, threshold, epsilons)
    summary["attacks"][ALL_ROW] = _minimum_row(per_attack, rows, threshold, epsilons)
    best = summary["attacks"][ALL_ROW]["curve_accuracy"]
    for stats in summary["attacks"].values():
        stats["optimality"] = optimality(stats["curve_accuracy"], best, summary["curve_epsilons"])
    return summary
