"""Medians, accuracies and curves from per_sample.csv (abs_spec 1.6), and their two pictures."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from abslab.attacks.distances import beyond

ALL_ATTACKS = "all"


def curve_epsilons(norm_cfg: Any) -> np.ndarray:
    """The epsilon grid of the accuracy curves: curve_points values from 0 to curve_max."""
    return np.linspace(0.0, float(norm_cfg.curve_max), int(norm_cfg.curve_points))


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


def summarize(
    rows: list[dict[str, Any]], attacks: list[str], threshold: float, epsilons: np.ndarray
) -> dict[str, Any]:
    """Per attack and for all attacks (the per-sample minimum over `attacks`, on the samples
    every one of them has finished), from the rows of per_sample.csv."""
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
    if per_attack:
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
        summary["attacks"][ALL_ATTACKS] = stats
    return summary


def robustness_curve(summary: dict[str, Any], norm: str, model: str) -> plt.Figure:
    """Accuracy against epsilon, one line per attack, all attacks bold, the threshold marked."""
    figure, axis = plt.subplots(figsize=(6, 4))
    epsilons = summary["curve_epsilons"]
    for name, stats in summary["attacks"].items():
        bold = name == ALL_ATTACKS
        axis.plot(
            epsilons,
            np.array(stats["curve_accuracy"]) * 100,
            label=name,
            color="black" if bold else None,
            linewidth=2.5 if bold else 1.2,
            zorder=3 if bold else 2,
        )
    threshold = summary["threshold"]
    axis.axvline(threshold, color="grey", linestyle="--", linewidth=1)
    if ALL_ATTACKS in summary["attacks"]:
        accuracy = summary["attacks"][ALL_ATTACKS]["accuracy_at_threshold"] * 100
        axis.plot([threshold], [accuracy], "o", color="black")
    axis.set_xlabel(f"{norm} distance" + (" (pixels)" if norm == "l0" else ""))
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_xlim(0, epsilons[-1])
    axis.set_title(f"{model}, {norm}: {summary['n_samples']} test images")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def adversarial_gallery(
    originals: dict[int, np.ndarray], smallest: dict[str, np.ndarray], norm: str, model: str
) -> plt.Figure:
    """Originals (top) above their smallest adversarials (bottom), one per digit where
    possible, annotated label -> prediction, distance and attack (the paper's Figure 3)."""
    chosen: list[int] = []
    for digit in range(10):
        for k in np.flatnonzero(smallest["label"] == digit):
            if smallest["distance"][k] > 0:
                chosen.append(int(k))
                break
    figure, axes = plt.subplots(2, max(len(chosen), 1), figsize=(1.4 * max(len(chosen), 1), 4.2))
    axes = np.asarray(axes).reshape(2, -1)
    for column, k in enumerate(chosen):
        index = int(smallest["index"][k])
        axes[0, column].imshow(originals[index], cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"#{index}: {smallest['label'][k]}", fontsize=7)
        axes[1, column].imshow(smallest["images"][k], cmap="gray", vmin=0, vmax=1)
        axes[1, column].set_title(
            f"{smallest['label'][k]}→{smallest['adv_pred'][k]}  {smallest['distance'][k]:.3g}\n"
            f"{smallest['attack'][k]}",
            fontsize=7,
        )
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle(f"{model}: smallest {norm} adversarials", fontsize=9)
    figure.tight_layout()
    return figure
