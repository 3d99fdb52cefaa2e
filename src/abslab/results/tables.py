"""Every table of the report, from its cells: the markdown blocks (one per norm, one column per
model, every attack's row with its optimality, the paper's-attacks and all-attacks rows, the
paper's beside them with each one's difference, the suite's cost), the CSV (per norm, model and
attack, with counts, queries and seconds per sample and optimality), the LaTeX tabular, the
distal table, and the table of run dirs' summaries (train or clean-accuracy runs).
Models, norms, labels, order and paper numbers come from the cells' cards."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from abslab.results.attack_summary import ALL_ROW, PAPER_ROW
from abslab.results.cards import NormCard, order
from abslab.results.cells import Cell, changed_budgets, shard

MEDIAN_TOLERANCE = 0.15  # relative difference to the paper's median that the notes must explain
ACCURACY_TOLERANCE = 0.05  # accuracy points (as a fraction)


def number(value: float | None) -> str:
    """A distance as every table writes it: 3 significant digits, ∞ for None or infinity."""
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "∞"
    return f"{value:.3g}"


def _cell_text(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return ""
    return f"{number(stats['median_distance'])} / {100 * stats['accuracy_at_threshold']:.0f}%"


def _attack_text(stats: dict[str, Any] | None) -> str:
    """An attack's cell: median / accuracy and its optimality (none where undefined)."""
    if stats is None or stats.get("optimality") is None:
        return _cell_text(stats)
    return f"{_cell_text(stats)} (opt {stats['optimality']:.2f})"


def _paper_attacks_text(cell: Cell) -> str:
    """The paper's-attacks cell, ‡ where its runs predate the `paper` flag."""
    text = _cell_text(cell.stats["attacks"].get(PAPER_ROW))
    return f"{text} ‡" if text and cell.predates_flag else text


def norms_of(cells: list[Cell]) -> list[NormCard]:
    """The norms of the cells, in their cards' order."""
    return sorted({c.norm.name: c.norm for c in cells}.values(), key=order)


def block(cells: list[Cell], norm: NormCard) -> list[Cell]:
    """One norm's cells, in the model cards' order."""
    return sorted((c for c in cells if c.norm.name == norm.name), key=lambda c: order(c.model))


def paper_figure(cell: Cell) -> tuple[float, float] | None:
    """The paper's all-attacks (median, accuracy at the threshold) of the cell's model and norm."""
    return cell.model.paper.get(cell.norm.name)


def difference(cell: Cell, row: str = PAPER_ROW) -> tuple[str, bool]:
    """abslab's figure of `row` (the paper's attacks, which the paper's numbers are compared
    with, or all attacks) against the paper's: text and whether it is off by more than 15%
    relative in the median or 5 points in accuracy. Only the paper's-attacks difference is
    marked **!** (the notes must say why); a smaller all-attacks figure is a finding."""
    paper = paper_figure(cell)
    stats = cell.stats["attacks"].get(row)
    if paper is None or stats is None:
        return "", False
    median = stats["median_distance"]
    relative = math.inf if median is None else median / paper[0] - 1
    points = stats["accuracy_at_threshold"] - paper[1]
    flagged = abs(relative) > MEDIAN_TOLERANCE or abs(points) > ACCURACY_TOLERANCE
    marked = flagged and row == PAPER_ROW
    text = f"{relative:+.0%} / {100 * points:+.0f} pts" + (" **!**" if marked else "")
    return text, flagged


def _paper_text(cell: Cell) -> str:
    paper = paper_figure(cell)
    return "" if paper is None else f"{paper[0]:.3g} / {100 * paper[1]:.0f}%"


def budget_names(cell: Cell) -> str:
    return ",".join(sorted({r.get("budget") or "none" for r in cell.runs}))


def _provenance_text(cell: Cell) -> str:
    legacy = f", legacy: {', '.join(cell.legacy)}" if cell.legacy else ""
    return f"{cell.stats['n_samples']} / {budget_names(cell)}{legacy}"


def _cost_text(cell: Cell) -> str:
    """Seconds per image of the whole suite (all attacks together)."""
    return f"{cell.stats['attacks'][ALL_ROW]['seconds_per_sample']:.3g}"


def table_rows(cells: list[Cell]) -> list[list[str]]:
    """Rows of one norm's block (cells in column order): attacks (with their optimality), the
    paper's attacks, all attacks, the paper's, each one's difference from it, clean accuracy,
    the suite's seconds per image, N / budget (and the source of a legacy cell)."""
    attacks: list[str] = []
    for cell in cells:
        attacks += [a for a in cell.attacks if a not in attacks]
    rows = [[a, *[_attack_text(c.stats["attacks"].get(a)) for c in cells]] for a in attacks]
    rows.append(["**paper's attacks**", *[_paper_attacks_text(c) for c in cells]])
    rows.append(["**all attacks**", *[_cell_text(c.stats["attacks"][ALL_ROW]) for c in cells]])
    rows.append(["paper, all attacks", *[_paper_text(c) for c in cells]])
    rows.append(["difference, paper's attacks", *[difference(c)[0] for c in cells]])
    rows.append(["difference, all attacks", *[difference(c, ALL_ROW)[0] for c in cells]])
    rows.append(["clean accuracy", *[f"{100 * c.stats['clean_accuracy']:.1f}%" for c in cells]])
    rows.append(["cost: s / image", *[_cost_text(c) for c in cells]])
    rows.append(["N / budget", *[_provenance_text(c) for c in cells]])
    return rows


def _run_line(cell: Cell, run: dict[str, Any]) -> str:
    first, stop = shard(run)
    lowered = ", ".join(changed_budgets(run)) or "none"
    return (
        f"- {cell.model.label} [{first}, {stop}): `{run['command']}`; commit {run['commit']}; "
        f"{run['hardware']}; wall time {run['wall_time_s']:.0f} s; budget "
        f"{run.get('budget') or 'none'} (lowered: {lowered}); weights "
        f"{run.get('ckpt') or run.get('pretrained') or 'none needed'}"
    )


def markdown(cells: list[Cell], distal: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report as markdown: the blocks with their runs, the distal table, the figures, the
    notes. meta: title, command, weights, figures (paths), notes (text or None)."""
    thresholds = ", ".join(
        f"{n.title} {block(cells, n)[0].stats['threshold']:g}" for n in norms_of(cells)
    )
    out = [f"# {meta['title']}", ""]
    out += [
        f"Cells: median adversarial distance / accuracy at the threshold ({thresholds})"
        " over the first N test images; a clean misclassification counts as distance 0, an "
        "unbroken sample as ∞. Paper's attacks: per-sample minimum over the attacks among the "
        "paper's Table 1 rows (each attack's recorded `paper` flag); all attacks: over every "
        "attack. Difference: a row's median relative to the paper's / accuracy points; the "
        "paper's numbers are compared with the paper's-attacks row, where **!** marks more than "
        "15% or 5 points (the notes below say why); an all-attacks figure below the paper's "
        "is a finding of stronger attacks. (opt x): the attack's optimality in its cell "
        "(AttackBench, Cinà et al., AAAI 2025; docs/attacks.md §10): 1 - (area between its "
        "accuracy curve and the all-attacks curve) / (that area for an attack that finds "
        "nothing), over the curves' distance grid; 1 for the best, 0 for nothing found. Cost: "
        "seconds per image of all attacks together (the CSV has each attack's seconds and "
        "forward queries per image). A legacy cell rests on runs made outside results/sweeps/ "
        "(named in its N / budget row).",
        "",
        f"- report: `{meta['command']}`; each run's command, commit, hardware and wall time are "
        "listed under its block; the curves figure draws the paper's curves where the report "
        "was given `--paper-curves` (a local clone of the co-author's figure data), else the "
        "paper's two numbers per curve, and its panel titles say which",
        f"- weights: {meta['weights']}",
    ]
    if any(c.predates_flag for c in cells):
        out.append(
            "- ‡: the cell's runs were recorded before attacks carried the `paper` flag: every "
            "attack they ran counts as one of the paper's, so its two rows are equal"
        )
    for norm in norms_of(cells):
        mine = block(cells, norm)
        out += ["", f"## {norm.title}", ""]
        out.append("| attack | " + " | ".join(c.model.label for c in mine) + " |")
        out.append("|---|" + "---|" * len(mine))
        out += ["| " + " | ".join(row) + " |" for row in table_rows(mine)]
        out += ["", "Runs:", ""]
        out += [_run_line(cell, run) for cell in mine for run in cell.runs]
    if distal:
        out += ["", "## Distal adversarials", ""]
        out.append("| model | reached p ≥ level | steps (max) | gradient | weights |")
        out.append("|---|---|---|---|---|")
        for d in sorted(distal.values(), key=lambda d: order(d["card"])):
            out.append(
                f"| {d['card'].label} | {d['reached']} of {len(d['targets'])} | "
                f"{d['steps']} | {d['gradient']} | {d['weights']} |"
            )
    out += ["", "## Figures", ""]
    out += [f"![{Path(f).stem}]({Path(f).name})" for f in meta["figures"]]
    if meta.get("notes"):
        out += ["", meta["notes"].strip()]
    return "\n".join(out) + "\n"


def csv_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """One row per norm, model and attack (and the paper's attacks, all attacks): the figures
    of the tables, the paper's for the paper's-attacks and all-attacks rows, the counts,
    queries and seconds per sample, the run dirs of a legacy cell, whether an attack is one of
    the paper's, and the optimality."""
    rows = []
    for cell in sorted(cells, key=lambda c: (c.norm.name, c.model.name)):
        for attack, stats in cell.stats["attacks"].items():
            paper = paper_figure(cell) if attack in (ALL_ROW, PAPER_ROW) else None
            among = attack in cell.paper_attacks if attack in cell.attacks else None
            rows.append(
                {
                    "norm": cell.norm.name,
                    "model": cell.model.name,
                    "attack": attack,
                    "median": stats["median_distance"],
                    "accuracy_at_threshold": stats["accuracy_at_threshold"],
                    "n_samples": stats["n_samples"],
                    "budget": budget_names(cell),
                    "paper_median": paper[0] if paper else None,
                    "paper_accuracy": paper[1] if paper else None,
                    "broken": stats["successes"],
                    "not_broken": stats["failures"],
                    "errors": stats["errors"],
                    "queries_per_sample": stats["queries_per_sample"],
                    "seconds_per_sample": stats["seconds_per_sample"],
                    "legacy_source": ";".join(cell.legacy),
                    "paper_attack": among,
                    "optimality": stats.get("optimality"),
                }
            )
    return rows


def _tex(text: str) -> str:
    return (
        text.replace(" **!**", "$^\\dagger$")
        .replace(" ‡", "$^\\ddagger$")
        .replace("**", "")
        .replace("_", "\\_")
        .replace("%", "\\%")
        .replace("∞", "$\\infty$")
    )


def latex(cells: list[Cell]) -> str:
    """The blocks as a LaTeX tabular (booktabs), one column per model."""
    models = sorted({c.model.name: c.model for c in cells}.values(), key=order)
    lines = [
        "\\begin{tabular}{l" + "c" * len(models) + "}",
        "\\toprule",
        " & ".join(["", *[m.label for m in models]]) + " \\\\",
    ]
    for norm in norms_of(cells):
        mine = block(cells, norm)
        lines += ["\\midrule", f"\\multicolumn{{{len(models) + 1}}}{{l}}{{{norm.name}}} \\\\"]
        for row in table_rows(mine):
            texts = dict(zip((c.model.name for c in mine), row[1:]))
            values = [texts.get(m.name, "") for m in models]
            lines.append(" & ".join(_tex(t) for t in [row[0], *values]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


RUN_COLUMNS = {  # a summary.json key (dotted: nested, as config.model.train_beta) -> column
    "model": "model",
    "config.model.train_beta": "train beta",
    "config.model.kl_warmup_epochs": "KL warm-up epochs",
    "config.model.train_entropy_weight": "entropy weight",
    "config.model.augmentation": "augmentation",
    "n_samples": "samples",
    "clean_accuracy": "clean acc.",
    "val_accuracy_best": "val acc. (best epoch)",
    "test_acc": "test acc.",
    "binary_abs_val_accuracy": "binary ABS val acc. (fitted scalars)",
    "abs_images": "first N test images",
    "abs_acc": "acc. (first N)",
    "abs_squared_error": "squared error (first N)",
    "abs_kl": "KL (first N)",
    "abs_median_margin": "median margin (first N)",
    "norm": "norm",
    "epochs": "epochs",
    "seed": "seed",
    "tested_checkpoint": "tested checkpoint",
    "wall_time_s": "wall time (s)",
    "resumed_from": "resumed from (wall time: last call)",
    "commit": "commit",
    "hardware": "hardware",
    "command": "command",
}
RUN_FORMATS = {"abs_squared_error": "{:.2f}", "abs_kl": "{:.2f}", "abs_median_margin": "{:.4f}"}


def run_field(summary: dict[str, Any], key: str) -> Any:
    """A RUN_COLUMNS key of a summary (None where absent). `command` is the one that reruns the
    run alone: a multirun job's own (job_command), else the process's."""
    if key == "command":
        return summary.get("job_command") or summary.get("command")
    if key == "tested_checkpoint":  # runs before the key was recorded tested their best one
        return summary.get("tested_checkpoint") or summary.get("best_checkpoint")
    value: Any = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _run_value(key: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and ("accuracy" in key or key.endswith("acc")):
        return f"{100 * value:.2f}%"
    if key in RUN_FORMATS:
        return RUN_FORMATS[key].format(value)
    if key in ("command", "resumed_from"):
        return f"`{value}`"
    if key == "tested_checkpoint":  # epoch_NNN.ckpt (epochs from 0) or last.ckpt
        return Path(str(value)).name
    return str(value)


def summaries_table(summaries: list[dict[str, Any]]) -> str:
    """One markdown row per summary (a summary.json's content); only the columns some summary
    has a value for."""
    keys = [k for k in RUN_COLUMNS if any(run_field(s, k) is not None for s in summaries)]
    lines = ["| " + " | ".join(RUN_COLUMNS[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for summary in summaries:
        lines.append("| " + " | ".join(_run_value(k, run_field(summary, k)) for k in keys) + " |")
    return "\n".join(lines)


def runs_table(run_dirs: list[Path]) -> str:
    """One row per run dir's summary.json (train or evaluate runs); only the columns some run
    has (results/baselines.md)."""
    return summaries_table([json.loads((d / "summary.json").read_text()) for d in run_dirs])
