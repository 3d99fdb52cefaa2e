"""The paper's figures across models: accuracy-vs-distance curves per norm (with the paper's
own curves or numbers beside them), the gallery of smallest adversarials, distal adversarials."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from abslab.results.paper import ALL_ATTACKS as PAPER_ALL

# The paper's column order and line styles (abs_spec Part 2, 5).
MODELS = ("cnn", "binary_cnn", "nearest_neighbor", "madry", "binary_abs", "abs")
LABELS = {
    "cnn": "CNN",
    "binary_cnn": "Binary CNN",
    "nearest_neighbor": "Nearest Neighbor",
    "madry": "Madry et al.",
    "binary_abs": "Binary ABS",
    "abs": "ABS",
}
STYLES = {
    "cnn": ("tab:orange", ":"),
    "binary_cnn": ("tab:orange", "--"),
    "madry": ("tab:orange", "-"),
    "nearest_neighbor": ("black", ":"),
    "binary_abs": ("black", "--"),
    "abs": ("black", "-"),
}
NORM_TITLES = {"l2": "L2", "linf": "L∞", "l0": "L0"}
PAPER_CURVE_FILES = {"l2": "L2", "linf": "Linf", "l0": "L0"}


class _NumpyScalars(pickle.Unpickler):
    """Unpickles the figure data of the co-author's repository: dicts of numpy scalars only."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in curve data")
        if module == "numpy.core.multiarray":
            from numpy._core import multiarray

            return getattr(multiarray, name)
        return np.dtype


def load_paper_curves(folder: str | Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The paper's curves, norm -> model -> (distance, accuracy %), from the figures/ folder of
    a clone of jonasrauber/analysis-by-synthesis (*_accuracy_distortion_curves.pickle; the data
    is read from there, not copied into abslab: that repository has no license)."""
    by_label = {label: name for name, label in LABELS.items()}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for norm, stem in PAPER_CURVE_FILES.items():
        path = Path(folder) / f"{stem}_accuracy_distortion_curves.pickle"
        if not path.is_file():
            raise FileNotFoundError(
                f"--paper-curves {folder}: no {path.name} there. Give the figures/ folder of "
                "a clone of https://github.com/jonasrauber/analysis-by-synthesis."
            )
        with path.open("rb") as f:
            data = _NumpyScalars(f).load()
        curves[norm] = {
            by_label[label]: (np.array(c["x"], float), np.array(c["y"], float))
            for label, c in data.items()
            if label in by_label
        }
    return curves


def curves_figure(
    results: dict[str, dict[str, dict[str, Any]]],
    paper_curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] | None,
) -> plt.Figure:
    """One panel per norm: each model's all-attacks accuracy against distance (solid/dotted in
    the paper's styles), the paper's curve thin and faded beside it where given, else the
    paper's two numbers (median at 50%, accuracy at the threshold) as hollow markers.
    results: norm -> model -> {"epsilons", "curve" (fractions), "threshold", "n"}."""
    norms = [n for n in NORM_TITLES if n in results]
    figure, axes = plt.subplots(1, len(norms), figsize=(5 * len(norms), 4), squeeze=False)
    for axis, norm in zip(axes[0], norms):
        any_run = next(iter(results[norm].values()))
        threshold, xmax = any_run["threshold"], any_run["epsilons"][-1]
        for model in MODELS:
            color, style = STYLES[model]
            if model in results[norm]:
                r = results[norm][model]
                accuracy = 100 * np.array(r["curve"])
                axis.plot(
                    r["epsilons"],
                    accuracy,
                    style,
                    color=color,
                    linewidth=2,
                    label=f"{LABELS[model]} (N={r['n']})",
                )
            paper = (paper_curves or {}).get(norm, {}).get(model)
            if paper is not None:
                axis.plot(paper[0], paper[1], style, color=color, linewidth=1, alpha=0.4)
            elif model in PAPER_ALL.get(norm, {}):
                median, accuracy_at = PAPER_ALL[norm][model]
                axis.plot(
                    [median, threshold],
                    [50, 100 * accuracy_at],
                    "o",
                    mfc="none",
                    color=color,
                    markersize=5,
                )
        axis.axvline(threshold, color="grey", linewidth=0.8)
        axis.set_xlim(0, xmax)
        axis.set_ylim(0, 100)
        axis.set_xlabel(f"{NORM_TITLES[norm]} distance" + (" (pixels)" if norm == "l0" else ""))
        axis.set_ylabel("accuracy (%)")
        paper_what = "faded: the paper's curves" if paper_curves else "circles: the paper's numbers"
        axis.set_title(f"{NORM_TITLES[norm]}, all attacks ({paper_what})", fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def gallery_figure(rows: dict[str, dict[str, Any]], norm: str) -> plt.Figure:
    """The paper's gallery: one row per model, one column per digit, the smallest adversarial
    of the first evaluated test image of that digit, annotated true -> predicted, distance.
    rows: model -> the arrays of an adversarials.npz (label, adv_pred, distance, images)."""
    models = [m for m in MODELS if m in rows]
    figure, axes = plt.subplots(
        max(len(models), 1), 10, figsize=(12, 1.45 * max(len(models), 1)), squeeze=False
    )
    for r, model in enumerate(models):
        data = rows[model]
        for digit in range(10):
            axis = axes[r, digit]
            axis.axis("off")
            hits = np.flatnonzero((data["label"] == digit) & (data["distance"] > 0))
            if len(hits) == 0:
                continue
            k = hits[0]
            axis.imshow(data["images"][k], cmap="gray", vmin=0, vmax=1)
            axis.set_title(
                f"{digit}→{data['adv_pred'][k]} {data['distance'][k]:.3g}", fontsize=7, pad=2
            )
        axes[r, 0].text(
            -0.15,
            0.5,
            LABELS[model],
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    figure.suptitle(f"Smallest {NORM_TITLES[norm]} adversarials", fontsize=10)
    figure.tight_layout()
    return figure


def distal_figure(results: dict[str, dict[str, Any]]) -> plt.Figure:
    """Distal adversarials: one row per model, one column per target digit, each titled with
    the calibrated confidence it reached. results: model -> {"targets", "confidence",
    "images" (T, 28, 28), "steps"}."""
    models = [m for m in MODELS if m in results] + [m for m in results if m not in MODELS]
    columns = max(len(r["targets"]) for r in results.values())
    figure, axes = plt.subplots(
        len(models), columns, figsize=(1.2 * columns + 1, 1.4 * len(models)), squeeze=False
    )
    for r, model in enumerate(models):
        result = results[model]
        for c, target in enumerate(result["targets"]):
            axis = axes[r, c]
            axis.imshow(np.asarray(result["images"][c]), cmap="gray", vmin=0, vmax=1)
            axis.set_title(f"{target}: p={result['confidence'][c]:.2f}", fontsize=7, pad=2)
            axis.axis("off")
        axes[r, 0].text(
            -0.15,
            0.5,
            LABELS.get(model, model),
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    figure.suptitle(
        f"Distal adversarials: noise optimised to each digit (at most {result['steps']} steps)",
        fontsize=9,
    )
    figure.tight_layout()
    return figure
