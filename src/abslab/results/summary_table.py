"""Markdown table of run directories' summary.json: `python -m abslab.results.summary_table DIR...`.

Results files are built from what runs wrote to disk, never typed in by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = {
    "model": "model",
    "n_samples": "samples",
    "clean_accuracy": "clean acc.",
    "test_acc": "test acc.",
    "norm": "norm",
    "epochs": "epochs",
    "wall_time_s": "wall time (s)",
    "commit": "commit",
    "hardware": "hardware",
    "command": "command",
}


def _cell(key: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and key.endswith(("accuracy", "acc")):
        return f"{100 * value:.2f}%"
    if key == "command":
        return f"`{value}`"
    return str(value)


def summary_table(run_dirs: list[Path]) -> str:
    """One row per run directory; only the columns some run has."""
    summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs]
    keys = [k for k in COLUMNS if any(k in s for s in summaries)]
    lines = ["| " + " | ".join(COLUMNS[k] for k in keys) + " |", "|" + "---|" * len(keys)]
    for summary in summaries:
        lines.append("| " + " | ".join(_cell(k, summary.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m abslab.results.summary_table RUN_DIR [RUN_DIR ...]")
    print(summary_table([Path(p) for p in sys.argv[1:]]))


if __name__ == "__main__":
    main()
