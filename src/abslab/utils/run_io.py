"""What a run leaves on disk for people and tables: summary.json beside the Hydra config."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def git_commit() -> str | None:
    """The commit of the working tree (with '-dirty' if it has changes), or None outside git.

    ABSLAB_COMMIT overrides it, for copies of a tree whose .git is absent or stale (a tree
    shipped to a remote machine).
    """
    if os.environ.get("ABSLAB_COMMIT"):
        return os.environ["ABSLAB_COMMIT"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def command_line() -> str:
    """The command that started this process, for results files."""
    return " ".join(["python", *sys.argv])


def job_command() -> str | None:
    """The command that reruns this Hydra job alone: its script and the job's own overrides
    (in a multirun, sys.argv holds the whole sweep's). None outside a Hydra app (tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    overrides = [shlex.quote(o) for o in HydraConfig.get().overrides.task]
    return " ".join(["python", sys.argv[0], *overrides])


def hardware() -> str:
    """A one-line description of the machine, for results files. The CPU's vector ISA is part
    of it: machines of the same name ran ABS 4-5x apart (AVX-512 against AVX2)."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line for line in lines if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{cpu} ({isa}), {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def provenance(output_dir: str | Path, started: float, commit: str | None) -> dict[str, Any]:
    """Where a run wrote, how long it took, and what ran it on which machine."""
    return {
        "output_dir": str(output_dir),
        "wall_time_s": round(time.time() - started, 1),
        "command": command_line(),
        "commit": commit,
        "hardware": hardware(),
    }


def write_summary(output_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write `summary.json` into the run directory and return its path."""
    path = Path(output_dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
