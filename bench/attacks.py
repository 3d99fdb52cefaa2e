"""Cost of each attack per sample: seconds, forward and backward passes, to plan a sweep.

python -m bench.attacks --runs results/sweeps/table1_*_published_cpu/cnn_0

Reads what the sweeps' run dirs recorded (per_sample.csv, summary.json, segments.jsonl), every
attack at the budget the run gave it, in the order the suite ran it (conf/attack/<norm>.yaml,
lowered by conf/budget/): one section of results/attacks_speed.md per model, weights, budget
and norm, its shards (run dirs of other test images) merged, with each run dir's commands,
commits and hardware. Nothing runs here: `python evaluate.py` measures, this reads.

Counted per attacked (clean-correct) sample: the harness's wall seconds, forward rows
(queries) and backward passes; ms/forward divides the seconds (backward passes included) by the
forward rows, so a budget change can be extrapolated.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from abslab.results.cells import (
    ReportError,
    changed_budgets,
    find_runs,
    merge_cell,
    shard,
    weights_label,
)
from abslab.utils.run_records import read_segments

REPO = Path(__file__).resolve().parents[1]
TABLE_HEAD = (
    "| norm | attack | code | settings changed from conf/attack/<attack>.yaml | attacked "
    "| s/sample | forward/sample | backward/sample | ms/forward | broken | errors |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class AttackCost:
    """One attack's totals over the samples it attacked (clean-correct ones), so that shards
    add up; `settings`: its `key=value` changed from conf/attack/<attack>.yaml, nested keys
    dotted (estimator.samples=50)."""

    norm: str
    attack: str
    code: str
    settings: list[str]
    attacked: int = 0
    seconds: float = 0.0
    forward: int = 0
    backward: int | None = 0  # None: a run recorded no backward passes (older per_sample.csv)
    broken: int = 0
    errors: int = 0

    def add(self, row: dict[str, Any]) -> None:
        """Count one attacked sample's per_sample.csv row."""
        self.attacked += 1
        self.seconds += row["seconds"]
        self.forward += row["queries"]
        gradients = row["gradients"]
        self.backward = (
            None if self.backward is None or gradients is None else (self.backward + gradients)
        )
        self.broken += bool(row["success"])
        self.errors += bool(row["error"])

    def per_sample(self) -> dict[str, float | None]:
        """Means per attacked sample: seconds, forward and backward (None: not recorded)."""
        n = max(self.attacked, 1)
        backward = None if self.backward is None else self.backward / n
        return {"seconds": self.seconds / n, "forward": self.forward / n, "backward": backward}

    def markdown(self) -> str:
        mean = self.per_sample()
        backward = "n/a" if mean["backward"] is None else f"{mean['backward']:.1f}"
        per_forward = f"{1000 * self.seconds / self.forward:.2f}" if self.forward else "n/a"
        return (
            f"| {self.norm} | {self.attack} | {self.code} | {', '.join(self.settings) or 'none'} "
            f"| {self.attacked} | {mean['seconds']:.3f} | {mean['forward']:.1f} | {backward} "
            f"| {per_forward} | {self.broken}/{self.attacked} | {self.errors} |"
        )


@dataclass
class SweepSection:
    """The costs of one model, weights, budget and norm from its run dirs (summaries with
    "run_dir", shards sorted by first image), one AttackCost per attack in the run's order;
    `images`: the test images the run dirs cover."""

    model: str
    weights: str
    budget: str
    norm: str
    runs: list[dict[str, Any]]
    images: int
    costs: list[AttackCost] = field(default_factory=list)

    def heading(self) -> str:
        return (
            f"## {self.model} ({self.weights} weights), {self.norm}, budget={self.budget}: "
            "the sweep's run dirs"
        )

    def markdown(self) -> str:
        attacked = max((c.attacked for c in self.costs), default=0)
        lines = [
            self.heading(),
            "",
            f"N = {self.images} test images ({attacked} correctly classified and attacked), "
            f"from {len(self.runs)} run dir(s):",
            "",
            *(_provenance(run) for run in self.runs),
            "",
            TABLE_HEAD,
            *(cost.markdown() for cost in self.costs),
        ]
        return "\n".join(lines) + "\n"


def sweep_costs(folders: list[Path]) -> list[SweepSection]:
    """The cost sections of the finished run dirs under `folders` (run dirs or sweep dirs;
    unfinished ones are named and left out),
    grouped by model, weights, budget and norm; a group's shards are merged and checked as the
    report merges them (abslab.results.cells.merge_cell: same attacks and budgets, no overlaps,
    gaps or missing rows). Clean misclassifications (clean_pred != label) were not attacked and
    count nowhere."""
    summaries, unfinished = find_runs(folders)
    if unfinished:  # as the report: named and left out, their finished shards still count
        print("Left out, unfinished (rerun their sweep to finish them):")
        for path in unfinished:
            print(f"  {path}")
    if not summaries:
        raise ReportError(f"No run dirs (summary.json) under {', '.join(map(str, folders))}.")
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        groups[(s["model"], weights_label(s), str(s.get("budget")), s["norm"])].append(s)
    return [_section(*key, runs) for key, runs in groups.items()]


def _section(
    model: str, weights: str, budget: str, norm: str, runs: list[dict[str, Any]]
) -> SweepSection:
    cell = merge_cell(runs)
    section = SweepSection(
        model, weights, budget, norm, cell.runs, len({r["index"] for r in cell.rows})
    )
    changes: dict[Path, list[str]] = {}  # run dir -> its changed_budgets (Hydra composes)
    for name in cell.attacks:
        run = next(r for r in cell.runs if name in r["attacks"])  # shards: same budgets
        recorded = run.get("budgets", {}).get(name, {})
        if run["run_dir"] not in changes:
            changes[run["run_dir"]] = changed_budgets(run)
        changed = [
            c.split(".", 1)[1] for c in changes[run["run_dir"]] if c.split(".", 1)[0] == name
        ]
        cost = AttackCost(norm, name, recorded.get("source", "unrecorded"), changed)
        for row in cell.rows:
            if row["attack"] == name and row["clean_pred"] == row["label"]:
                cost.add(row)
        section.costs.append(cost)
    return section


def _provenance(run: dict[str, Any]) -> str:
    """A run dir, its test images and each call on it (segments.jsonl; older run dirs: the
    summary's command, commit and hardware)."""
    run_dir = Path(run["run_dir"])
    first, stop = shard(run)
    segments = read_segments(run_dir) or [
        {key: run.get(key) for key in ("command", "commit", "hardware", "wall_time_s")}
        | {"status": "summary.json: no segments.jsonl"}
    ]
    calls = [
        f"  - `{s['command']}` at commit {s['commit']}, {s['hardware']}, {s['wall_time_s']} s "
        f"({s['status']})"
        for s in segments
    ]
    return "\n".join([f"- `{_shown(run_dir)}`: test images [{first}, {stop})", *calls])


def _shown(path: Path) -> str:
    """A path relative to the repository where it lies inside it (the same on every machine)."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def run_sweeps(args: argparse.Namespace) -> None:
    """--runs mode: write one section per model, weights, budget and norm of the run dirs."""
    try:
        sections = sweep_costs([Path(d) for d in args.runs])
    except ReportError as err:
        raise SystemExit(f"bench.attacks: {err}") from None
    for section in sections:
        text = section.markdown()
        print(text, flush=True)
        write_section(Path(args.out), section.heading(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        required=True,
        metavar="RUN_DIR",
        help="run dirs or sweep dirs of evaluate.py (unfinished ones are named and left out)",
    )
    parser.add_argument("--out", default=str(REPO / "results" / "attacks_speed.md"))
    run_sweeps(parser.parse_args())


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section whose heading starts with `heading` (or append it), and keep the
    file's opening paragraph HEADER's."""
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"^{re.escape(heading)}.*?(?=^## |\Z)", re.S | re.M)
    section = section.rstrip("\n") + "\n\n"  # one blank line between sections
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    first = re.search(r"^## ", text, re.M)
    body = text[first.start() :].rstrip("\n") + "\n" if first else ""
    path.write_text(HEADER + body)


HEADER = """# Attack cost per sample (bench/attacks.py)

Seconds, forward passes (query rows, counted by the harness) and backward passes per attacked
(correctly classified) sample, for planning a sweep. The sections headed "the sweep's run dirs"
are read from the committed sweeps at the budgets they ran, and regenerate with

```bash
python -m bench.attacks --runs results/sweeps/table1_*_published_cpu/cnn_0 \\
    results/sweeps/table1_*_published_cpu/abs_* \\
    results/sweeps/table1_*_published_cpu/binary_abs_* \\
    results/sweeps/table1_*_own_cpu/nearest_neighbor_*
```

Each section names its command(s), commit(s), hardware and N; a section of another heading is
a measurement with its own command (bench/ge_costs.py).

"""


if __name__ == "__main__":
    main()
