"""Markdown tables of attacked run directories: `python -m abslab.results.attack_table DIR...`.

Per run: each attack's median distance and accuracy at the threshold, counts, queries and
seconds per sample, the budgets that differ from conf/attack, and the paper's all-attacks
figure beside abslab's. Built from summary.json, never typed in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from abslab.results.paper import ALL_ATTACKS

CONFIGS = Path(__file__).resolve().parents[3] / "conf" / "attack"


def _number(value: float | None, digits: int = 4) -> str:
    return "∞" if value is None else f"{value:.{digits}g}"


def changed_budgets(summary: dict[str, Any]) -> list[str]:
    """`attack.key=value` for each budget a run set away from its conf/attack default."""
    changes = []
    for name, budget in summary.get("budgets", {}).items():
        path = CONFIGS / f"{name}.yaml"
        if not path.exists():
            continue
        default = OmegaConf.to_container(OmegaConf.load(path)[name])
        changes += [
            f"{name}.{key}={value}"
            for key, value in budget.items()
            if key in default and default[key] != value
        ]
    return changes


def attack_table(run_dir: Path) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    norm, model = summary["norm"], summary["model"]
    threshold = summary["threshold"]
    lines = [
        f"### {model}, {norm} (threshold {threshold}), {summary['n_samples']} test images "
        f"from #{summary['first_index']}",
        "",
        f"- command: `{summary['command']}`",
        f"- commit {summary['commit']}; {summary['hardware']}; "
        f"wall time {summary['wall_time_s']} s",
        f"- clean accuracy {100 * summary['clean_accuracy']:.1f}%; budgets lowered from the "
        f"paper's: {', '.join(changed_budgets(summary)) or 'none'}",
    ]
    if summary.get("skipped_attacks"):
        lines.append(f"- skipped: {summary['skipped_attacks']}")
    lines += [
        "",
        f"| attack | median {norm} | accuracy at {threshold} | broken / not / errors "
        "| queries per sample | s per sample |",
        "|---|---|---|---|---|---|",
    ]
    for name, stats in summary["attacks"].items():
        bold = "**" if name == "all" else ""
        lines.append(
            f"| {bold}{name}{bold} | {_number(stats['median_distance'])} | "
            f"{100 * stats['accuracy_at_threshold']:.1f}% | "
            f"{stats['successes']} / {stats['failures']} / {stats['errors']} | "
            f"{stats['queries_per_sample']:.0f} | {stats['seconds_per_sample']:.3f} |"
        )
    paper = ALL_ATTACKS.get(norm, {}).get(model)
    if paper:
        lines.append(f"| paper, all attacks | {paper[0]} | {100 * paper[1]:.0f}% | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m abslab.results.attack_table RUN_DIR [RUN_DIR ...]")
    print("\n".join(attack_table(Path(p)) for p in sys.argv[1:]))


if __name__ == "__main__":
    main()
