"""The report's unit: one model under one norm, its run dirs' shards merged into one cell.

Reads what evaluate.py left in each run dir (summary.json, per_sample.csv, adversarials.npz,
distal.npz), never W&B. Overlapping, missing or unfinished shards, shards with other attacks or
budgets, and runs on different weights are refused with the fix.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from abslab.results.attack_summary import ALL_ROW, PAPER_ROW, curve_epsilons, summarize
from abslab.results.cards import ModelCard, NormCard, composed, model_card, norm_card
from abslab.results.per_sample import read_rows


class ReportError(ValueError):
    """Run dirs that cannot be merged into one table; the message names them and the fix."""


@dataclass
class Cell:
    """One model under one norm: its runs (summaries, with "run_dir"), their per-sample rows,
    the statistics of `summarize` over them, the smallest adversarials (adversarials.npz
    arrays, concatenated), the attacks among the paper's Table 1 rows, and whether the runs
    predate the `paper` flag (then every attack they ran counts as one of the paper's)."""

    model: ModelCard
    norm: NormCard
    runs: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    attacks: list[str] = field(default_factory=list)
    adversarials: dict[str, np.ndarray] = field(default_factory=dict)
    paper_attacks: list[str] = field(default_factory=list)
    predates_flag: bool = False

    @property
    def legacy(self) -> list[str]:
        """The run dirs of a cell made outside results/sweeps/ (older runs, other settings):
        empty for a sweep's cell."""
        return sorted({str(r["run_dir"]) for r in self.runs if not _in_sweeps(Path(r["run_dir"]))})


def _in_sweeps(run_dir: Path) -> bool:
    parts = run_dir.resolve().parts
    return any(a == "results" and b == "sweeps" for a, b in itertools.pairwise(parts))


def weights_label(summary: dict[str, Any]) -> str:
    """own / published / ckpt: which weights a run attacked; none for models without weights
    (nearest_neighbor), whose runs belong in either table."""
    if not summary.get("ckpt") and not summary.get("pretrained"):
        return "none"
    if summary.get("weights"):
        return str(summary["weights"])
    return "published" if summary.get("pretrained") else "ckpt"


def changed_budgets(summary: dict[str, Any]) -> list[str]:
    """`attack.key=value` for each setting a run changed from its conf/attack default, nested
    settings by their dotted path (`fgm_ge.estimator.kind=antithetic`). Keys conf/attack does
    not have (a substitute's file) and attacks it does not know are not budgets: none."""
    changes = []
    for name, settings in summary.get("budgets", {}).items():
        default = _flat((composed("attack", name) or {}).get(name, {}))
        changes += [
            f"{name}.{key}={value}"
            for key, value in _flat(_current_keys(settings)).items()
            if key in default and default[key] != value
        ]
    return changes


# Runs before the estimator became a nested config (conf/estimator) recorded it flat.
_LEGACY_ESTIMATOR_KEYS = {"ge_step": "step", "ge_samples": "samples"}


def _current_keys(settings: dict[str, Any]) -> dict[str, Any]:
    """An attack's recorded settings under today's config keys."""
    if not isinstance(settings.get("estimator"), str):
        return settings
    current = {k: v for k, v in settings.items() if k not in _LEGACY_ESTIMATOR_KEYS}
    current["estimator"] = {"kind": settings["estimator"]} | {
        new: settings[old] for old, new in _LEGACY_ESTIMATOR_KEYS.items() if old in settings
    }
    return current


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def paper_flags(summary: dict[str, Any]) -> list[str] | None:
    """The attacks of a run that are among the paper's Table 1 rows: those whose recorded
    `paper` flag is true (summary["budgets"][name]["paper"], else the run's config
    attack.<name>.paper; an attack without one: false, the suite's default). None for a run
    recorded before attacks carried the flag (no attack of it has one)."""
    attacks = [a for a in summary.get("attacks", {}) if a not in (ALL_ROW, PAPER_ROW)]
    configs = (summary.get("config") or {}).get("attack") or {}
    flags: dict[str, bool] = {}
    for name in attacks:
        for recorded in (summary.get("budgets", {}).get(name) or {}, configs.get(name) or {}):
            if "paper" in recorded:
                flags[name] = bool(recorded["paper"])
                break
    if not flags:
        return None
    return [a for a in attacks if flags.get(a, False)]


def find_runs(folders: list[Path]) -> tuple[list[dict[str, Any]], list[Path]]:
    """Summaries (with their run dir) of every finished run under `folders` (sweep dirs or run
    dirs), and the run dirs that have per-sample rows but no summary yet (interrupted)."""
    summaries, unfinished = [], []
    for folder in folders:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a directory: give sweep dirs or run dirs.")
        for csv_path in sorted(folder.rglob("per_sample.csv")):
            if not (csv_path.parent / "summary.json").is_file():
                unfinished.append(csv_path.parent)
        for path in sorted(folder.rglob("summary.json")):
            summary = json.loads(path.read_text())
            summary["run_dir"] = path.parent
            summaries.append(summary)
    return summaries, unfinished


def shard(summary: dict[str, Any]) -> tuple[int, int]:
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


def _check_shards(label: str, runs: list[dict[str, Any]]) -> None:
    """Refuse shards of one cell that ran other attacks or budgets, overlap or leave gaps."""
    names = [list(r.get("attacks", {})) for r in runs]
    if any(n != names[0] for n in names):
        listing = "; ".join(f"{r['run_dir']}: {n}" for r, n in zip(runs, names))
        raise ReportError(f"{label}: shards ran different attacks ({listing}).")
    for run in runs[1:]:
        if _budgets(run) != _budgets(runs[0]):
            raise ReportError(
                f"{label}: {run['run_dir']} ran other attack budgets than "
                f"{runs[0]['run_dir']}: rerun one of them with the other's budget."
            )
    for before, after in itertools.pairwise(runs):
        (a0, a1), (b0, b1) = shard(before), shard(after)
        if b0 < a1:
            raise ReportError(
                f"{label}: shards overlap: {before['run_dir']} has test images "
                f"[{a0}, {a1}) and {after['run_dir']} [{b0}, {b1}). Remove one of them."
            )
        if b0 > a1:
            raise ReportError(
                f"{label}: test images [{a1}, {b0}) are missing between "
                f"{before['run_dir']} and {after['run_dir']}. Run that shard: "
                f"data.test_offset={a1} data.test_samples={b0 - a1}."
            )


def merge_cell(runs: list[dict[str, Any]]) -> Cell:
    """One cell from its runs (all of one model and norm): shards of one attack list tile the
    test images; runs with other, disjoint attack lists over the same images (an attack added to
    a finished cell in a run dir of its own) are layers of the same cell. Checks them, then
    recomputes the statistics from all their per-sample rows."""
    model, norm = runs[0]["model"], runs[0]["norm"]
    label = f"{model}, {norm}"
    layers = _layers(label, runs)
    attacks: list[str] = []
    paper_attacks: list[str] = []
    legacy_layers = 0
    for layer in layers:
        names = [a for a in layer[0].get("attacks", {}) if a not in (ALL_ROW, PAPER_ROW)]
        flags = paper_flags(layer[0])
        legacy_layers += flags is None
        attacks += names
        paper_attacks += names if flags is None else flags
    runs = [run for layer in layers for run in layer]
    cell = Cell(
        model_card(runs[0]),
        norm_card(runs[0]),
        runs,
        attacks=attacks,
        paper_attacks=paper_attacks,
        predates_flag=legacy_layers == len(layers),
    )
    for run in runs:
        first, stop = shard(run)
        names = [a for a in run.get("attacks", {}) if a not in (ALL_ROW, PAPER_ROW)]
        rows = [
            r
            for r in read_rows(run["run_dir"] / "per_sample.csv")
            if first <= r["index"] < stop and r["attack"] in names
        ]
        done = {(r["index"], r["attack"]) for r in rows}
        missing = [i for i in range(first, stop) for a in names if (i, a) not in done]
        if missing:
            raise ReportError(
                f"{label}: {run['run_dir']} lacks {len(missing)} (sample, attack) rows of "
                f"[{first}, {stop}): rerun its sweep to finish it."
            )
        cell.rows += rows
    config = runs[0]["config"]["norm"]
    epsilons = curve_epsilons(config)
    threshold = float(config["threshold"])
    cell.stats = summarize(cell.rows, attacks, threshold, epsilons, cell.paper_attacks)
    cell.adversarials = _smallest_per_sample(runs)
    return cell


def _layers(label: str, runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs grouped by the attacks they ran, each group checked as shards (_check_shards) and
    sorted by first image; the groups must cover the same test images with disjoint attacks."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[tuple(a for a in run.get("attacks", {}) if a not in (ALL_ROW, PAPER_ROW))].append(
            run
        )
    layers = [sorted(group, key=shard) for group in groups.values()]
    for layer in layers:
        _check_shards(label, layer)
    spans = {(shard(layer[0])[0], shard(layer[-1])[1]) for layer in layers}
    names = [a for attacks in groups for a in attacks]
    if len(layers) > 1 and (len(spans) > 1 or len(names) != len(set(names))):
        listing = "; ".join(
            f"{[str(r['run_dir']) for r in layer]}: {list(attacks)}"
            for attacks, layer in zip(groups, layers)
        )
        raise ReportError(
            f"{label}: runs with different attacks must cover the same test images with "
            f"attacks of their own ({listing})."
        )
    return layers


def _smallest_per_sample(runs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The runs' adversarials.npz merged, keeping each sample's smallest adversarial."""
    parts = []
    for run in runs:
        path = run["run_dir"] / "adversarials.npz"
        if path.is_file():
            with np.load(path) as data:
                parts.append({k: data[k] for k in data.files})
    if not parts:
        return {}
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((merged["distance"], merged["index"]))
    keep = order[np.unique(merged["index"][order], return_index=True)[1]]
    return {k: v[keep] for k, v in merged.items()}


def run_cell(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    adversarials: dict[str, np.ndarray],
    model: ModelCard,
    norm: NormCard,
) -> Cell:
    """The cell of one run as evaluate.py finishes it: its summary's statistics as they are."""
    attacks = [a for a in summary["attacks"] if a not in (ALL_ROW, PAPER_ROW)]
    paper = paper_flags(summary)
    return Cell(
        model,
        norm,
        [summary],
        rows,
        summary,
        attacks,
        adversarials,
        paper_attacks=attacks if paper is None else paper,
        predates_flag=paper is None,
    )


def build_cells(summaries: list[dict[str, Any]]) -> list[Cell]:
    """The merged cells of attacked runs of one weights label, in the cards' order."""
    labels = {weights_label(s) for s in summaries} - {"none"}
    if len(labels) > 1:
        raise ReportError(
            f"The runs attacked different weights ({', '.join(sorted(labels))}): report each "
            "on its own (e.g. results/sweeps/*_own_cpu, then *_published_cpu with --out)."
        )
    _check_one_checkpoint_per_model(summaries)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        groups[(s["norm"], s["model"])].append(s)
    return [merge_cell(runs) for runs in groups.values()]


def _check_one_checkpoint_per_model(summaries: list[dict[str, Any]]) -> None:
    """Refuse a model whose runs attacked different weights (the weights hash each run segment
    recorded): a column of the table is one model, so shards of another checkpoint (say, rerun on
    new weights beside the old ones) must not merge into its cells. Runs recorded before the
    hash (no `weights_hash`) are not checked."""
    hashes: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        for recorded in {seg.get("weights_hash") for seg in s.get("segments", [])} - {None}:
            hashes[s["model"]][recorded].append(str(s["run_dir"]))
    for model, runs_by_hash in hashes.items():
        if len(runs_by_hash) > 1:
            listing = "; ".join(
                f"{h}: {', '.join(sorted(dirs))}" for h, dirs in sorted(runs_by_hash.items())
            )
            raise ReportError(
                f"{model}: its runs attacked different weights (weights hash: run dirs; "
                f"{listing}). Pass only the run dirs of one checkpoint, or rerun the others on it."
            )


def distal_results(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """model -> its card, distal settings and images (T, 28, 28), from distal runs."""
    results = {}
    for s in summaries:
        with np.load(s["run_dir"] / "distal.npz") as data:
            images = data["images"]
        results[s["model"]] = {
            **s["distal"],
            "images": images,
            "weights": weights_label(s),
            "card": model_card(s),
        }
    return results
