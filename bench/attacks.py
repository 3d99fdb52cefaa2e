"""Cost of each attack per sample: seconds, forward and backward passes, to plan a sweep.

python -m bench.attacks --runs results/sweeps/table1_*_published_cpu/cnn_0
python -m bench.attacks --model cnn --samples 100
python -m bench.attacks --model abs --samples 4 --budget boundary.steps=200

--runs RUN_DIR...: reads what the sweeps' run dirs recorded (per_sample.csv, summary.json,
segments.jsonl), every attack at the budget the run gave it: one section of
results/attacks_speed.md per model, weights, budget and norm, its shards (run dirs of other
test images) merged, with each run dir's commands, commits and hardware. Nothing runs.

Direct mode (no --runs): runs each attack of SUITES (conf/attack/<name>.yaml, lowered by
--budget, and the table then says so) through the harness on the first test images with the
authors' published weights, one batch of --samples images (batching lowers the times), and
writes a section per model and hardware with the command and commit.

Both count per attacked (clean-correct) sample: the harness's wall seconds, forward rows
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

import torch

from abslab.attacks.harness import Outcome, run_attack
from abslab.attacks.suite import instantiate_attack
from abslab.data.mnist import first_test_images
from abslab.models.abs import ABSDefense
from abslab.models.base import Defense
from abslab.models.cnn import CNNDefense
from abslab.results.cells import (
    ReportError,
    changed_budgets,
    find_runs,
    merge_cell,
    shard,
    weights_label,
)
from abslab.utils.run_io import command_line, git_commit, hardware
from abslab.utils.run_records import read_segments
from bench.configs import attack_config

REPO = Path(__file__).resolve().parents[1]
SUITES = {
    "l2": ["gaussian_noise", "boundary", "pointwise_l2", "fgm", "deepfool_l2", "bim_l2"],
    "linf": ["fgsm", "deepfool_linf", "bim", "mim", "pgd"],
    "l0": ["salt_pepper", "pointwise"],
}
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


def load_model(name: str, weights: Path) -> Defense:
    if name == "cnn":
        return CNNDefense(pretrained=str(weights / "cnn")).eval()
    return ABSDefense(pretrained=str(weights / "abs")).eval()


def lowered(name: str, budget: list[str]) -> list[str]:
    """The `key=value` items of --budget that belong to attack `name` (given as name.key=value)."""
    return [item.split(".", 1)[1] for item in budget if item.split(".", 1)[0] == name]


def outcome_cost(
    norm: str, name: str, code: str, changed: list[str], outcome: Outcome, attacked: torch.Tensor
) -> AttackCost:
    """The AttackCost of a harness outcome on the samples `attacked` (B,) bool."""
    rows = attacked.nonzero().flatten().tolist()
    cost = AttackCost(norm, name, code, changed)
    for i in rows:
        cost.add(
            {
                "seconds": float(outcome.seconds[i]),
                "queries": int(outcome.queries[i]),
                "gradients": int(outcome.gradients[i]),
                "success": bool(outcome.success[i]),
                "error": outcome.error[i],
            }
        )
    return cost


def run_direct(args: argparse.Namespace) -> None:
    """Direct mode: run the attacks here through the harness and write their section."""
    torch.set_flush_denormal(True)
    x, y, _ = first_test_images(args.root, args.samples)
    model = load_model(args.model, Path(args.weights))
    with torch.no_grad():
        clean = model(x).argmax(1)
    attacked = clean == y
    heading = f"## {args.model}, {hardware()}"
    lines = [
        heading,
        "",
        f"`{command_line()}` at commit {git_commit()}; the first {args.samples} test images "
        f"({int(attacked.sum())} correctly classified and attacked), one batch.",
        "",
        TABLE_HEAD,
    ]
    for norm in args.norms:
        for name in SUITES[norm]:
            if args.only and name not in args.only:
                continue
            changed = lowered(name, args.budget)
            attack = instantiate_attack(name, attack_config(name, changed))
            outcome = run_attack(attack, model, x, y, clean, seed=0)
            cost = outcome_cost(norm, name, attack.source, changed, outcome, attacked)
            lines.append(cost.markdown())
            print(lines[-1], flush=True)
    write_section(Path(args.out), heading, "\n".join(lines) + "\n")


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


DIRECT_ONLY = ("model", "samples", "norms", "only", "budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="RUN_DIR",
        help="read these run dirs (or sweep dirs) instead of running attacks",
    )
    parser.add_argument("--model", choices=["cnn", "abs"], help="direct mode (default cnn)")
    parser.add_argument("--samples", type=int, help="direct mode (default 100)")
    parser.add_argument("--norms", nargs="+", choices=list(SUITES), help="direct mode")
    parser.add_argument("--only", nargs="*", help="direct mode: attack names to run")
    parser.add_argument("--budget", nargs="*", help="direct mode: attack.key=value overrides")
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--weights", default=str(REPO.parent / "shared/data/reference_models"))
    parser.add_argument("--out", default=str(REPO / "results" / "attacks_speed.md"))
    args = parser.parse_args()
    if args.runs:
        given = [f"--{key}" for key in DIRECT_ONLY if getattr(args, key) is not None]
        if given:
            parser.error(f"{', '.join(given)}: direct mode only; drop with --runs.")
        run_sweeps(args)
        return
    args.model = args.model or "cnn"
    args.samples = args.samples or 100
    args.norms = args.norms or list(SUITES)
    args.budget = args.budget or []
    run_direct(args)


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
    results/sweeps/table1_*_published_cpu/abs_*
```

Each section names its command(s), commit(s), hardware and N; the other sections are older
measurements with their own commands (`python -m bench.attacks` without --runs, bench/ge_costs.py,
or the run they name).

"""


if __name__ == "__main__":
    main()
