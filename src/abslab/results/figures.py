"""Every figure of the report, from its cells: accuracy-vs-distance curves per norm (with the
paper's own curves or numbers beside them), the gallery of smallest adversarials, distal
adversarials. evaluate.py draws a run's robustness_curve.png and adversarials.png with the same
functions on the run's one cell. Labels, order, styles, titles and units come from the cards."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from abslab.results.attack_summary import ALL_ROW, PAPER_ROW
from abslab.results.cards import SPARE_COLORS, ModelCard, NormCard, order
from abslab.results.cells import Cell
from abslab.results.tables import block, norms_of, number

PaperCurves = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # norm -> model -> (x, acc %)


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


def load_paper_curves(folder: str | Path, cells: list[Cell]) -> PaperCurves:
    """The paper's curves of the cells' norms and models, norm -> model -> (distance, accuracy
    %), from the figures/ folder of a clone of jonasrauber/analysis-by-synthesis
    (<norm card's paper_curves>_accuracy_distortion_curves.pickle, whose curves are keyed by the
    model cards' labels). The data is read from there, not copied into abslab: that repository
    has no license."""
    curves: PaperCurves = {}
    for norm in norms_of(cells):
        if norm.paper_curves is None:
            continue
        path = Path(folder) / f"{norm.paper_curves}_accuracy_distortion_curves.pickle"
        if not path.is_file():
            raise FileNotFoundError(
                f"--paper-curves {folder}: no {path.name} there. Give the figures/ folder of "
                "a clone of https://github.com/jonasrauber/analysis-by-synthesis."
            )
        with path.open("rb") as f:
            data = _NumpyScalars(f).load()
        by_label = {c.model.label: c.model.name for c in block(cells, norm)}
        curves[norm.name] = {
            by_label[label]: (np.array(c["x"], float), np.array(c["y"], float))
            for label, c in data.items()
            if label in by_label
        }
    return curves


def styles(models: list[ModelCard]) -> dict[str, tuple[str, str]]:
    """model -> (colour, line) from the cards; models whose card names no colour get spare
    colours, one each, in order."""
    spare = iter(SPARE_COLORS * (len(models) // len(SPARE_COLORS) + 1))
    return {m.name: (m.color or next(spare), m.line) for m in sorted(models, key=order)}


def curves_figure(cells: list[Cell], paper_curves: PaperCurves | None) -> plt.Figure:
    """One panel per norm: each model's all-attacks accuracy against distance in its card's
    style, its paper's-attacks curve thin and dotted where that differs, the paper's curve thin
    and faded beside it where given, else the paper's two numbers (median at 50%, accuracy at
    the threshold) as hollow markers. A panel of one model (a run's own figure) also draws each
    attack's curve thin."""
    norms = norms_of(cells)
    figure, axes = plt.subplots(1, len(norms), figsize=(5 * len(norms), 4), squeeze=False)
    style = styles([c.model for c in cells])
    for axis, norm in zip(axes[0], norms):
        mine = block(cells, norm)
        threshold, epsilons = mine[0].stats["threshold"], mine[0].stats["curve_epsilons"]
        for cell in mine:
            color, line = style[cell.model.name]
            attacks = cell.stats["attacks"]
            if len(mine) == 1:
                for name in cell.attacks:
                    accuracy = 100 * np.array(attacks[name]["curve_accuracy"])
                    axis.plot(epsilons, accuracy, linewidth=1, alpha=0.7, label=name)
            axis.plot(
                epsilons,
                100 * np.array(attacks[ALL_ROW]["curve_accuracy"]),
                line,
                color=color,
                linewidth=2,
                label=f"{cell.model.label} (N={cell.stats['n_samples']})",
            )
            papers = attacks.get(PAPER_ROW)
            if papers and papers["curve_accuracy"] != attacks[ALL_ROW]["curve_accuracy"]:
                axis.plot(
                    epsilons,
                    100 * np.array(papers["curve_accuracy"]),
                    ":",
                    color=color,
                    linewidth=1.2,
                    label=f"{cell.model.label}, paper's attacks",
                )
            paper = (paper_curves or {}).get(norm.name, {}).get(cell.model.name)
            numbers = cell.model.paper.get(norm.name)
            if paper is not None:
                axis.plot(paper[0], paper[1], line, color=color, linewidth=1, alpha=0.4)
            elif numbers is not None:
                axis.plot(
                    [numbers[0], threshold],
                    [50, 100 * numbers[1]],
                    "o",
                    mfc="none",
                    color=color,
                    markersize=5,
                )
        axis.axvline(threshold, color="grey", linewidth=0.8)
        axis.set_xlim(0, epsilons[-1])
        axis.set_ylim(0, 100)
        axis.set_xlabel(f"{norm.title} distance{norm.unit}")
        axis.set_ylabel("accuracy (%)")
        paper_what = "faded: the paper's curves" if paper_curves else "circles: the paper's numbers"
        axis.set_title(f"{norm.title}, all attacks ({paper_what})", fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _row_label(axis: plt.Axes, label: str) -> None:
    axis.text(-0.15, 0.5, label, transform=axis.transAxes, ha="right", va="center", fontsize=8)


def gallery_figure(cells: list[Cell], norm: NormCard) -> plt.Figure:
    """The paper's gallery of one norm: one row per model, one column per digit, the smallest
    adversarial of the first evaluated test image of that digit, annotated true -> predicted,
    distance (images from the cells' adversarials: label, adv_pred, distance, images)."""
    mine = [c for c in block(cells, norm) if c.adversarials]
    figure, axes = plt.subplots(
        max(len(mine), 1), 10, figsize=(12, 1.45 * max(len(mine), 1)), squeeze=False
    )
    for r, cell in enumerate(mine):
        data = cell.adversarials
        for digit in range(10):
            axis = axes[r, digit]
            axis.axis("off")
            hits = np.flatnonzero((data["label"] == digit) & (data["distance"] > 0))
            if len(hits) == 0:
                continue
            k = hits[0]
            axis.imshow(data["images"][k], cmap="gray", vmin=0, vmax=1)
            axis.set_title(
                f"{digit}→{data['adv_pred'][k]} {number(data['distance'][k])}", fontsize=7, pad=2
            )
        _row_label(axes[r, 0], cell.model.label)
    figure.suptitle(f"Smallest {norm.title} adversarials", fontsize=10)
    figure.tight_layout()
    return figure


def distal_figure(results: dict[str, dict[str, Any]]) -> plt.Figure:
    """Distal adversarials: one row per model, one column per target digit, each titled with
    the calibrated confidence it reached. results: model -> {"targets", "confidence",
    "images" (T, 28, 28), "steps", and "card" (a ModelCard; absent: the model's name)}."""
    cards = {m: r.get("card") or ModelCard(m, label=m) for m, r in results.items()}
    models = sorted(results, key=lambda m: order(cards[m]))
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
        _row_label(axes[r, 0], cards[model].label)
    figure.suptitle(
        f"Distal adversarials: noise optimised to each digit (at most {result['steps']} steps)",
        fontsize=9,
    )
    figure.tight_layout()
    return figure
