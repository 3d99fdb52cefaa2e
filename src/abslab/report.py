"""Table 1 and the paper's figures from run dirs, the one report of abslab:

    python -m abslab.report results/sweeps/*_own_cpu --out results/table1
    python -m abslab.report outputs/evaluate/<run> --out outputs/evaluate/<run>/report   # one run
    python -m abslab.report --runs outputs/train/<run> ...   # train/eval runs as one table

Reads what evaluate.py left in each run dir (abslab.results.cells), never W&B; models and norms
are shown as their cards say (abslab.results.cards). Writes <out>.md, .csv, .tex and the
figures (<out>_curves.png, <out>_gallery_<norm>.png, <out>_distal.png), and logs them to W&B.
What it writes depends only on the run dirs and the arguments: the same files give the same
.md, .csv and .tex, with or without --paper-curves (which changes only the curves figure).
"""

from __future__ import annotations

import argparse
import csv
import shlex
from pathlib import Path
from typing import Any

from abslab.results.cells import (
    ReportError,
    build_cells,
    distal_results,
    find_runs,
    weights_label,
)
from abslab.results.figures import curves_figure, distal_figure, gallery_figure, load_paper_curves
from abslab.results.tables import block, csv_rows, latex, markdown, norms_of, runs_table

DEFAULT_TITLE = "Table 1, reproduced by abslab"


def _quoted(argument: str) -> str:
    """A shell word for `argument`: as is where plain, else in double quotes where that is
    safe, else single-quoted."""
    if shlex.quote(argument) == argument:
        return argument
    if not set(argument) & set('"$`\\!'):
        return f'"{argument}"'
    return shlex.quote(argument)


def canonical_command(folders: list[Path], out: Path, title: str, notes: Path | None) -> str:
    """The report's command as the .md records it: the folders sorted, --out, --title and
    --notes; not --paper-curves (a local path that changes only the curves figure) nor
    --wandb (where the report was logged, not what it says)."""
    words = ["python", "-m", "abslab.report", *sorted({f.as_posix() for f in folders})]
    words += ["--out", out.as_posix(), "--title", title]
    if notes is not None:
        words += ["--notes", notes.as_posix()]
    return " ".join(_quoted(w) for w in words)


def report(
    folders: list[Path],
    out: Path | None = None,
    title: str = DEFAULT_TITLE,
    paper_curves: Path | None = None,
    notes: Path | None = None,
    wandb_mode: str = "offline",
) -> Path | None:
    """Write <out>.md/.csv/.tex and the figures from the runs under `folders` (sweep dirs or
    run dirs); without `out`, print the markdown table and write nothing (so a look at one run
    never overwrites a committed table). Returns the .md written, or None."""
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
    cells = build_cells(attacked) if attacked else []
    distal = distal_results(distal_runs)
    if out is None:
        command = " ".join(["python -m abslab.report", *map(_quoted, map(str, folders))])
        meta = {"title": title, "command": command, "figures": [], "notes": None}
        meta["weights"] = ", ".join(sorted({weights_label(s) for s in summaries} - {"none"}))
        print(markdown(cells, distal, meta))
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = []
    if cells:
        curves = load_paper_curves(paper_curves, cells) if paper_curves else None
        figures.append((curves_figure(cells, curves), out.with_name(f"{out.name}_curves.png")))
        for norm in norms_of(cells):
            if any(c.adversarials for c in block(cells, norm)):
                path = out.with_name(f"{out.name}_gallery_{norm.name}.png")
                figures.append((gallery_figure(cells, norm), path))
    if distal:
        figures.append((distal_figure(distal), out.with_name(f"{out.name}_distal.png")))
    for figure, path in figures:
        figure.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(figure)
    meta = {
        "title": title,
        "command": canonical_command(folders, out, title, notes),
        "weights": ", ".join(sorted({weights_label(s) for s in summaries} - {"none"})),
        "figures": [path for _, path in figures],
        "notes": notes.read_text() if notes else None,
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "folders", nargs="+", type=Path, help="sweep dirs (results/sweeps/...) or run dirs"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output stem: <out>.md/.csv/.tex, <out>_*.png (none: print the table, write nothing)",
    )
    parser.add_argument("--title", default=DEFAULT_TITLE)
    parser.add_argument(
        "--paper-curves",
        type=Path,
        default=None,
        help="figures/ of a clone of jonasrauber/analysis-by-synthesis (changes only the curves)",
    )
    parser.add_argument(
        "--notes",
        type=Path,
        default=None,
        help="markdown appended to the table: why numbers differ",
    )
    parser.add_argument("--wandb", default="offline", choices=["offline", "online", "disabled"])
    parser.add_argument(
        "--runs",
        action="store_true",
        help="print one markdown row per run dir's summary.json (train or evaluate runs) instead",
    )
    args = parser.parse_args(argv)
    if args.runs:
        print(runs_table(args.folders))
        return
    try:
        report(args.folders, args.out, args.title, args.paper_curves, args.notes, args.wandb)
    except ReportError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
