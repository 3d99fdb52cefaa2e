"""Table 1 and the paper's figures from sweep run dirs:
`python -m abslab.report results/sweeps/table1_*_own_cpu results/sweeps/figure_distal_own_cpu`.

Reads what evaluate.py left in each run dir (summary.json, per_sample.csv, adversarials.npz,
distal.npz), never W&B. Shards of one model and norm (data.test_offset / data.test_samples) are
merged; overlapping or missing ones are refused. Writes <out>.md, .csv, .tex and the figures
(<out>_curves.png, <out>_gallery_<norm>.png, <out>_distal.png), and logs them to W&B.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abslab.results.attack_summary import ALL_ATTACKS, summarize
from abslab.results.attack_table import changed_budgets
from abslab.results.figures import (
    LABELS,
    MODELS,
    NORM_TITLES,
    curves_figure,
    distal_figure,
    gallery_figure,
    load_paper_curves,
)
from abslab.results.paper import ALL_ATTACKS as PAPER_ALL
from abslab.results.per_sample import read_rows
from abslab.utils.run_io import git_commit, hardware

MEDIAN_TOLERANCE = 0.15  # relative difference to the paper's median that the notes must explain
ACCURACY_TOLERANCE = 0.05  # accuracy points (as a fraction)


class ReportError(ValueError):
    """Run dirs that cannot be merged into one table; the message names them and the fix."""


@dataclass
class Cell:
    """One model under one norm: its shards merged into one set of per-sample rows."""

    norm: str
    model: str
    runs: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    attacks: list[str] = field(default_factory=list)
    adversarials: dict[str, np.ndarray] = field(default_factory=dict)


def weights_label(summary: dict[str, Any]) -> str:
    """own / published / ckpt: which weights a run attacked; none for models without weights
    (nearest_neighbor), whose runs belong in either table."""
    if not summary.get("ckpt") and not summary.get("pretrained"):
        return "none"
    if summary.get("weights"):
        return str(summary["weights"])
    return "published" if summary.get("pretrained") else "ckpt"


def find_runs(folders: list[Path]) -> tuple[list[dict[str, Any]], list[Path]]:
    """Summaries (with their run dir) of every finished run under `folders`, and the run dirs
    that have per-sample rows but no summary yet (interrupted: rerun the sweep)."""
    summaries, unfinished = [], []
    for folder in folders:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a directory: give sweep dirs (results/sweeps/...).")
        for csv_path in sorted(folder.rglob("per_sample.csv")):
            if not (csv_path.parent / "summary.json").is_file():
                unfinished.append(csv_path.parent)
        for path in sorted(folder.rglob("summary.json")):
            summary = json.loads(path.read_text())
            summary["run_dir"] = path.parent
            summaries.append(summary)
    return summaries, unfinished


def _shard(summary: dict[str, Any]) -> tuple[int, int]:
    """The test images [first, stop) a run was asked for."""
    data = summary["config"]["data"]
    first = int(data.get("test_offset") or 0)
    wanted = data.get("test_samples")
    return first, first + (int(wanted) if wanted is not None else summary["n_samples"])


def _budgets(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's attack budgets, less where the substitute's file lay (a machine's path)."""
    return {
        name: {k: v for k, v in budget.items() if k != "substitute_weights"}
        for name, budget in summary.get("budgets", {}).items()
    }


def merge_cell(norm: str, model: str, runs: list[dict[str, Any]]) -> Cell:
    """One cell from its shards: refuses overlaps, gaps, unfinished shards and shards that
    ran different attacks; then recomputes the statistics from all per-sample rows."""
    runs = sorted(runs, key=_shard)
    names = [list(r.get("attacks", {})) for r in runs]
    if any(n != names[0] for n in names):
        listing = "; ".join(f"{r['run_dir']}: {n}" for r, n in zip(runs, names))
        raise ReportError(f"{model}, {norm}: shards ran different attacks ({listing}).")
    for run in runs[1:]:
        if _budgets(run) != _budgets(runs[0]):
            raise ReportError(
                f"{model}, {norm}: {run['run_dir']} ran other attack budgets than "
                f"{runs[0]['run_dir']}: rerun one of them with the other's budget."
            )
    for before, after in itertools.pairwise(runs):
        (a0, a1), (b0, b1) = _shard(before), _shard(after)
        if b0 < a1:
            raise ReportError(
                f"{model}, {norm}: shards overlap: {before['run_dir']} has test images "
                f"[{a0}, {a1}) and {after['run_dir']} [{b0}, {b1}). Remove one of them."
            )
        if b0 > a1:
            raise ReportError(
                f"{model}, {norm}: test images [{a1}, {b0}) are missing between "
                f"{before['run_dir']} and {after['run_dir']}. Run that shard: "
                f"data.test_offset={a1} data.test_samples={b0 - a1}."
            )
    cell = Cell(norm, model, runs, attacks=[a for a in names[0] if a != ALL_ATTACKS])
    for run in runs:
        first, stop = _shard(run)
        rows = [
            r for r in read_rows(run["run_dir"] / "per_sample.csv") if first <= r["index"] < stop
        ]
        done = {(r["index"], r["attack"]) for r in rows}
        missing = [i for i in range(first, stop) for a in cell.attacks if (i, a) not in done]
        if missing:
            raise ReportError(
                f"{model}, {norm}: {run['run_dir']} lacks {len(missing)} (sample, attack) rows of "
                f"[{first}, {stop}): rerun its sweep to finish it."
            )
        cell.rows += rows
    config = runs[0]["config"]["norm"]
    epsilons = np.linspace(0.0, float(config["curve_max"]), int(config["curve_points"]))
    cell.stats = summarize(cell.rows, cell.attacks, float(config["threshold"]), epsilons)
    parts = []
    for run in runs:
        path = run["run_dir"] / "adversarials.npz"
        if path.is_file():
            with np.load(path) as data:
                parts.append({k: data[k] for k in data.files})
    if parts:
        cell.adversarials = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return cell


def build_cells(summaries: list[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    """(norm, model) -> merged cell, for attacked runs of one weights label."""
    labels = {weights_label(s) for s in summaries} - {"none"}
    if len(labels) > 1:
        raise ReportError(
            f"The runs attacked different weights ({', '.join(sorted(labels))}): report each "
            "on its own (e.g. results/sweeps/*_own_cpu, then *_published_cpu with --out)."
        )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        groups[(s["norm"], s["model"])].append(s)
    return {key: merge_cell(*key, runs) for key, runs in groups.items()}


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "∞"
    return f"{value:.3g}"


def _cell_text(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return ""
    return f"{_number(stats['median_distance'])} / {100 * stats['accuracy_at_threshold']:.0f}%"


def difference(stats: dict[str, Any], norm: str, model: str) -> tuple[str, bool]:
    """abslab's all-attacks figure against the paper's: text and whether it needs a reason
    (median off by more than 15% relative, or accuracy by more than 5 points)."""
    if model not in PAPER_ALL.get(norm, {}):
        return "", False
    paper_median, paper_accuracy = PAPER_ALL[norm][model]
    median = stats["median_distance"]
    relative = math.inf if median is None else median / paper_median - 1
    points = stats["accuracy_at_threshold"] - paper_accuracy
    flagged = abs(relative) > MEDIAN_TOLERANCE or abs(points) > ACCURACY_TOLERANCE
    text = f"{relative:+.0%} / {100 * points:+.0f} pts" + (" **!**" if flagged else "")
    return text, flagged


def table_rows(cells: dict[tuple[str, str], Cell], norm: str) -> list[list[str]]:
    """Markdown rows of one norm's block: attacks, all attacks, the paper's, the difference."""
    models = [m for m in MODELS if (norm, m) in cells]
    attacks: list[str] = []
    for m in models:
        attacks += [a for a in cells[(norm, m)].attacks if a not in attacks]
    rows = []
    for attack in [*attacks, ALL_ATTACKS]:
        label = "**all attacks**" if attack == ALL_ATTACKS else attack
        texts = [_cell_text(cells[(norm, m)].stats["attacks"].get(attack)) for m in models]
        rows.append([label, *texts])
    rows.append(["paper, all attacks", *[_paper_text(norm, m) for m in models]])
    rows.append(
        [
            "difference",
            *[
                difference(cells[(norm, m)].stats["attacks"][ALL_ATTACKS], norm, m)[0]
                for m in models
            ],
        ]
    )
    rows.append(
        [
            "clean accuracy",
            *[f"{100 * cells[(norm, m)].stats['clean_accuracy']:.1f}%" for m in models],
        ]
    )
    rows.append(["N / budget", *[_provenance_text(cells[(norm, m)]) for m in models]])
    return rows


def _model_order(model: str) -> int:
    """The paper's column order; models it did not have go last."""
    return MODELS.index(model) if model in MODELS else len(MODELS)


def _paper_text(norm: str, model: str) -> str:
    if model not in PAPER_ALL.get(norm, {}):
        return ""
    median, accuracy = PAPER_ALL[norm][model]
    return f"{median:.3g} / {100 * accuracy:.0f}%"


def _budget_names(cell: Cell) -> str:
    return ",".join(sorted({r.get("budget") or "none" for r in cell.runs}))


def _provenance_text(cell: Cell) -> str:
    return f"{cell.stats['n_samples']} / {_budget_names(cell)}"


def markdown(
    cells: dict[tuple[str, str], Cell], distal: dict[str, Any], meta: dict[str, Any]
) -> str:
    """results/table1.md: the blocks, how they were made, the figures."""
    out = [f"# {meta['title']}", ""]
    out += [
        "Cells: median adversarial distance / accuracy at the threshold (L2 1.5, L∞ 0.3, L0 12)"
        " over the first N test images; a clean misclassification counts as distance 0, an "
        "unbroken sample as ∞. All attacks: per-sample minimum. Difference: abslab's all-attacks "
        "median relative to the paper's / accuracy points; **!** marks more than 15% or 5 "
        "points (the notes below say why).",
        "",
        f"- report: `{meta['command']}` at commit {meta['commit']}, {meta['date']}, "
        f"{meta['hardware']}; each run's command, commit, hardware and wall time are listed "
        "under its block",
        f"- weights: {meta['weights']}",
    ]
    for norm in NORM_TITLES:
        models = [m for m in MODELS if (norm, m) in cells]
        if not models:
            continue
        out += ["", f"## {NORM_TITLES[norm]}", ""]
        out.append("| attack | " + " | ".join(LABELS[m] for m in models) + " |")
        out.append("|---|" + "---|" * len(models))
        out += ["| " + " | ".join(row) + " |" for row in table_rows(cells, norm)]
        out += ["", "Runs:", ""]
        for m in models:
            for run in cells[(norm, m)].runs:
                first, stop = _shard(run)
                lowered = ", ".join(changed_budgets(run)) or "none"
                out.append(
                    f"- {LABELS[m]} [{first}, {stop}): `{run['command']}`; commit {run['commit']}; "
                    f"{run['hardware']}; wall time {run['wall_time_s']:.0f} s; budget "
                    f"{run.get('budget') or 'none'} (lowered: {lowered}); weights "
                    f"{run.get('ckpt') or run.get('pretrained') or 'none needed'}"
                )
    if distal:
        out += ["", "## Distal adversarials", ""]
        out.append("| model | reached p ≥ level | steps (max) | gradient | weights |")
        out.append("|---|---|---|---|---|")
        for model, d in sorted(distal.items(), key=lambda item: _model_order(item[0])):
            out.append(
                f"| {LABELS.get(model, model)} | {d['reached']} of {len(d['targets'])} | "
                f"{d['steps']} | {d['gradient']} | {d['weights']} |"
            )
    out += ["", "## Figures", ""]
    out += [f"![{Path(f).stem}]({Path(f).name})" for f in meta["figures"]]
    if meta.get("notes"):
        out += ["", meta["notes"].strip()]
    return "\n".join(out) + "\n"


def csv_rows(cells: dict[tuple[str, str], Cell]) -> list[dict[str, Any]]:
    """One row per norm, model and attack (and all attacks), with the paper's figure."""
    rows = []
    for (norm, model), cell in sorted(cells.items()):
        for attack, stats in cell.stats["attacks"].items():
            paper = PAPER_ALL.get(norm, {}).get(model) if attack == ALL_ATTACKS else None
            rows.append(
                {
                    "norm": norm,
                    "model": model,
                    "attack": attack,
                    "median": stats["median_distance"],
                    "accuracy_at_threshold": stats["accuracy_at_threshold"],
                    "n_samples": stats["n_samples"],
                    "budget": _budget_names(cell),
                    "paper_median": paper[0] if paper else None,
                    "paper_accuracy": paper[1] if paper else None,
                }
            )
    return rows


def latex(cells: dict[tuple[str, str], Cell]) -> str:
    """The blocks as a LaTeX tabular (booktabs), one column per model."""
    models = [m for m in MODELS if any((n, m) in cells for n in NORM_TITLES)]
    lines = [
        "\\begin{tabular}{l" + "c" * len(models) + "}",
        "\\toprule",
        " & ".join(["", *[LABELS[m] for m in models]]) + " \\\\",
    ]
    for norm in NORM_TITLES:
        present = [m for m in models if (norm, m) in cells]
        if not present:
            continue
        lines += ["\\midrule", f"\\multicolumn{{{len(models) + 1}}}{{l}}{{{norm}}} \\\\"]
        for row in table_rows(cells, norm)[:-2]:
            texts = dict(zip(present, row[1:]))
            label = row[0].replace("**", "").replace("_", "\\_")
            values = [
                texts.get(m, "")
                .replace("%", "\\%")
                .replace("∞", "$\\infty$")
                .replace(" **!**", "$^\\dagger$")
                for m in models
            ]
            lines.append(" & ".join([label, *values]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def distal_results(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """model -> distal settings and images, from distal runs' distal.npz."""
    results = {}
    for s in summaries:
        with np.load(s["run_dir"] / "distal.npz") as data:
            images = data["images"]
        results[s["model"]] = {**s["distal"], "images": images, "weights": weights_label(s)}
    return results


def report(
    folders: list[Path],
    out: Path,
    title: str,
    paper_curves: Path | None = None,
    notes: Path | None = None,
    wandb_mode: str = "offline",
    command: str = "python -m abslab.report",
) -> Path:
    """Write <out>.md/.csv/.tex and the figures from the runs under `folders`."""
    import matplotlib.pyplot as plt

    summaries, unfinished = find_runs(folders)
    if unfinished:
        print("Left out, unfinished (rerun their sweep to finish them):")
        for path in unfinished:
            print(f"  {path}")
    attacked = [s for s in summaries if "attacks" in s]
    distal_runs = [s for s in summaries if "distal" in s]
    if not attacked and not distal_runs:
        raise ReportError(
            f"No finished attack or distal runs under {', '.join(map(str, folders))}."
        )
    cells = build_cells(attacked) if attacked else {}
    distal = distal_results(distal_runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = []
    if cells:
        results = {
            norm: {
                model: {
                    "epsilons": cell.stats["curve_epsilons"],
                    "curve": cell.stats["attacks"][ALL_ATTACKS]["curve_accuracy"],
                    "threshold": cell.stats["threshold"],
                    "n": cell.stats["n_samples"],
                }
                for (n, model), cell in cells.items()
                if n == norm
            }
            for norm in {n for n, _ in cells}
        }
        curves = load_paper_curves(paper_curves) if paper_curves else None
        figures.append((curves_figure(results, curves), out.with_name(f"{out.name}_curves.png")))
        for norm in NORM_TITLES:
            galleries = {
                m: c.adversarials for (n, m), c in cells.items() if n == norm and c.adversarials
            }
            if galleries:
                path = out.with_name(f"{out.name}_gallery_{norm}.png")
                figures.append((gallery_figure(galleries, norm), path))
    if distal:
        figures.append((distal_figure(distal), out.with_name(f"{out.name}_distal.png")))
    for figure, path in figures:
        figure.savefig(path, dpi=110)
        plt.close(figure)
    labels = {weights_label(s) for s in summaries} - {"none"}
    meta = {
        "title": title,
        "command": command,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "weights": ", ".join(sorted(labels)),
        "figures": [path for _, path in figures],
        "notes": notes.read_text() if notes else None,
        "hardware": hardware(),
    }
    md = out.with_suffix(".md")
    md.write_text(markdown(cells, distal, meta))
    rows = csv_rows(cells)
    if rows:
        with out.with_suffix(".csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        out.with_suffix(".tex").write_text(latex(cells))
    if wandb_mode != "disabled":
        _log_wandb(title, rows, meta["figures"], wandb_mode, folders)
    print(f"Wrote {md}")
    return md


def _log_wandb(
    title: str, rows: list[dict[str, Any]], figures: list[Path], mode: str, folders: list[Path]
) -> None:
    """The table as a W&B Table and the figures as images, in the sweeps' group."""
    import wandb

    groups = sorted({f.name for f in folders})
    run = wandb.init(
        project="abslab",
        group=groups[0] if len(groups) == 1 else "report",
        job_type="report",
        name=title,
        mode=mode,
        dir=str(Path("outputs") / "report"),
        config={"sweeps": [str(f) for f in folders]},
    )
    if rows:
        table = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
        run.log({"table1": table})
    run.log({path.stem: wandb.Image(str(path)) for path in figures})
    run.finish()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("folders", nargs="+", type=Path, help="sweep dirs (results/sweeps/...)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("results/table1"),
        help="output stem: <out>.md/.csv/.tex, <out>_*.png",
    )
    parser.add_argument("--title", default="Table 1, reproduced by abslab")
    parser.add_argument(
        "--paper-curves",
        type=Path,
        default=None,
        help="figures/ of a clone of jonasrauber/analysis-by-synthesis",
    )
    parser.add_argument(
        "--notes",
        type=Path,
        default=None,
        help="markdown appended to the table: why numbers differ",
    )
    parser.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    args = parser.parse_args()
    try:
        command = " ".join(["python -m abslab.report", *sys.argv[1:]])
        report(
            args.folders, args.out, args.title, args.paper_curves, args.notes, args.wandb, command
        )
    except ReportError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
