"""What a run directory records of the calls that wrote it, so that its files say what ran.

- `config.yaml` (and Hydra's `.hydra/config.yaml`, rewritten): the final config, after budgets
  and weight overrides changed it.
- `segments.jsonl`: one record per call on the run dir (commit, command, start, wall time,
  hashes of the result config and of the weights, the samples it attacked).
- The resume guard: rows on disk are only extended under the result config and weights that
  wrote them (`resume=check`), unless `resume=force`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from abslab.utils.run_io import command_line, hardware

log = logging.getLogger(__name__)

RESUME_MODES = ("check", "force")
# The keys of evaluate.py's config that decide per_sample.csv's rows: a resume into a run dir
# whose rows were written under other values is refused. Everything else may change between
# calls: data.test_samples and data.test_offset (growing or sharding a run), paths (ckpt,
# weights, registry: the weights hash compares the weights themselves), budget (its effect is
# compared in the attack and data keys it sets), trainer, logger, figures.
RESULT_KEYS = ("model", "attack", "norm", "seed", "flush_denormals", "data.eval_batch_size")
NOT_RESULT_KEYS = (
    "model.card",  # how reports show the model
    "model.pretrained",  # a path: the weights hash compares what it loaded
    "model.compile_inference",  # the same function compiled: float order only
    "model.inference_kernel",  # the same function in C++: float order only
    "norm.title",  # presentation
    "norm.column",
    "norm.unit",
    "norm.paper_curves",
    "norm.threshold",  # read by the summary from the rows, which do not depend on them
    "norm.curve_max",
    "norm.curve_points",
)
CONFIG_FILE = "config.yaml"
SEGMENTS_FILE = "segments.jsonl"
_ABSENT = object()


class ResumeError(RuntimeError):
    """Rows on disk were written by another result config or other weights than this run's."""


def check_resume_mode(mode: str) -> None:
    """An unknown `resume=` value is an error naming the valid ones."""
    if mode not in RESUME_MODES:
        raise ValueError(f"resume={mode!r}: choose one of {', '.join(RESUME_MODES)}.")


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    """The RESULT_KEYS of a resolved config, less NOT_RESULT_KEYS ({"model": {...}, ...,
    "data.eval_batch_size": 500}); keys the config lacks are left out."""
    selected = {}
    for key in RESULT_KEYS:
        value = _lookup(config, key)
        if value is not _ABSENT:
            selected[key] = json.loads(json.dumps(value, default=str))  # a copy to drop keys from
    for key in NOT_RESULT_KEYS:
        head, _, leaf = key.rpartition(".")
        parent = selected.get(head)
        if isinstance(parent, dict):
            parent.pop(leaf, None)
    return selected


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of a config's result keys (result_config)."""
    text = json.dumps(result_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(module: torch.nn.Module) -> str | None:
    """A short hash of a model's state_dict tensors (names, dtypes, shapes, bytes): the same
    weights loaded from any path hash the same. None for a model without any (nearest
    neighbour: its reference images are not part of its state)."""
    state = module.state_dict()
    if not state:
        return None
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{key}:{value!r}".encode())
    return digest.hexdigest()[:16]


def write_final_config(run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """Write the resolved config as it runs to `config.yaml`, and over Hydra's
    `.hydra/config.yaml` where it exists (Hydra wrote it before budgets and weight overrides
    changed the config). Returns the resolved config."""
    text = OmegaConf.to_yaml(cfg, resolve=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(text)
    hydra_copy = run_dir / ".hydra" / "config.yaml"
    if hydra_copy.is_file():
        hydra_copy.write_text(text)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def read_segments(run_dir: Path) -> list[dict[str, Any]]:
    """The records of segments.jsonl, oldest first ([] without the file)."""
    path = run_dir / SEGMENTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_resume(
    run_dir: Path, config: dict[str, Any], weights: str | None, mode: str
) -> list[str]:
    """Compare this run's final config and weights hash with the record of the rows already in
    the run dir: `config.yaml` (older run dirs: summary.json's "config") and the last segment's
    weights hash. Differences raise a ResumeError with mode "check"; with "force" they are
    logged and returned, for the segment's record."""
    recorded, source = _recorded_config(run_dir)
    if recorded is None:
        log.warning(
            "%s has rows but no record of the config that wrote them (%s or summary.json): "
            "resuming without checking it.",
            run_dir,
            CONFIG_FILE,
        )
        differences = []
    else:
        differences = [
            f"{key}: {_show(old)} (rows on disk) vs {_show(new)} (this run)"
            for key, old, new in _differences(result_config(recorded), result_config(config))
        ]
    segments = read_segments(run_dir)
    if not segments or "weights_hash" not in segments[-1]:
        log.warning(
            "%s records no weights hash (written before %s): cannot check that its rows "
            "came from the weights this run loaded.",
            run_dir,
            SEGMENTS_FILE,
        )
    elif segments[-1]["weights_hash"] != weights:
        differences.append(
            f"weights (hash of the model's tensors): {segments[-1]['weights_hash']} (rows on "
            f"disk) vs {weights} (this run)"
        )
    if not differences:
        return []
    listing = "\n  ".join(differences)
    if mode == "force":
        log.warning("resume=force: extending rows written under another setup:\n  %s", listing)
        return differences
    raise ResumeError(
        f"{run_dir / 'per_sample.csv'} has rows written under another setup than this run's "
        f"(as {source} and {SEGMENTS_FILE} record it):\n  {listing}\nRerun with the same "
        "config and weights, write to another run dir (hydra.run.dir=... or output_dir=...), "
        "or mix the rows knowingly with resume=force."
    )


@contextlib.contextmanager
def segment(run_dir: Path, **fields: Any) -> Iterator[Segment]:
    """`with segment(run_dir, commit=..., ...) as seg:` one call's record in segments.jsonl:
    appended as it starts (a killed call stays "running"), rewritten with its wall time by
    `seg.finish()` or, when the body raises, as "failed"."""
    record = Segment(run_dir, fields)
    try:
        yield record
    except BaseException as err:
        record.finish(f"failed: {type(err).__name__}")
        raise
    if record.status == "running":
        record.finish()


class Segment:
    """The open record of this call (see `segment`)."""

    def __init__(self, run_dir: Path, fields: dict[str, Any]) -> None:
        self.path = run_dir / SEGMENTS_FILE
        self.index = len(read_segments(run_dir))
        self._start = time.time()
        self.status = "running"
        self.record = {
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "wall_time_s": None,
            "status": self.status,
            "command": command_line(),
            "hardware": hardware(),
            **fields,
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(self.record, default=str) + "\n")

    def finish(self, status: str = "finished") -> list[dict[str, Any]]:
        """Record the wall time and status; returns every segment of the run dir."""
        self.status = status
        self.record.update(wall_time_s=round(time.time() - self._start, 1), status=status)
        segments = read_segments(self.path.parent)
        segments[self.index] = self.record
        self.path.write_text("".join(json.dumps(s, default=str) + "\n" for s in segments))
        return segments


def segments_summary(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's account of the calls on its run dir: every segment, and wall_time_s as
    their sum (a killed call recorded none and counts 0). Its command, commit and hardware
    fields are the last segment's: the call that wrote it."""
    return {
        "wall_time_s": round(sum(s["wall_time_s"] or 0.0 for s in segments), 1),
        "segments": segments,
        "provenance": f"command, commit and hardware of the last of {len(segments)} segments "
        f"(the call that wrote this file); each call's in 'segments' ({SEGMENTS_FILE})",
    }


def index_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Sorted indices as half-open [start, stop) ranges: {0, 1, 2, 5} -> [[0, 3], [5, 6]]."""
    ranges: list[list[int]] = []
    for i in sorted(indices):
        if ranges and ranges[-1][1] == i:
            ranges[-1][1] = i + 1
        else:
            ranges.append([i, i + 1])
    return ranges


def _recorded_config(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The final config of the rows on disk, and the file it came from."""
    path = run_dir / CONFIG_FILE
    if path.is_file():
        return OmegaConf.to_container(OmegaConf.load(path)), CONFIG_FILE  # type: ignore[return-value]
    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("config"), "summary.json"
    return None, CONFIG_FILE


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _differences(
    old: dict[str, Any], new: dict[str, Any], prefix: str = ""
) -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf that differs; a subtree only one side
    has is one difference."""
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def _show(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value, default=str)
