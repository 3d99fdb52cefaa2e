"""per_sample.csv and the adversarials of a run: appended batch by batch, read back on resume."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = (
    "index",
    "label",
    "clean_pred",
    "attack",
    "success",
    "adv_pred",
    "distance",
    "queries",
    "seconds",
    "error",
)
CLEAN_ONLY = "none"  # the attack column of a clean-accuracy-only run


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of per_sample.csv, typed; the last row of a (index, attack) pair wins.

    A final line cut off by a killed run is dropped (it has too few fields)."""
    if not path.exists():
        return []
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            if raw.get("error") is None:  # a truncated last line
                continue
            row = {
                "index": int(raw["index"]),
                "label": int(raw["label"]),
                "clean_pred": int(raw["clean_pred"]),
                "attack": raw["attack"],
                "success": raw["success"] == "1",
                "adv_pred": int(raw["adv_pred"]),
                "distance": float(raw["distance"]),
                "queries": int(raw["queries"]),
                "seconds": float(raw["seconds"]),
                "error": raw["error"],
            }
            rows[(row["index"], row["attack"])] = row
    return list(rows.values())


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows (a header first if the file is new) and flush them to disk."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        if not new and not _ends_with_newline(path):
            f.write("\n")  # a line cut off by a killed run: start a fresh one
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({**row, "success": int(row["success"])})
        f.flush()
        os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def save_adversarials(
    directory: Path, attack: str, index: np.ndarray, images: np.ndarray, distance: np.ndarray
) -> None:
    """One attack's verified adversarials of one batch (index (B,), images (B, 28, 28),
    distance (B,)), written atomically before the batch's rows."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{attack}_{int(index[0]):05d}.npz"
    temporary = path.with_suffix(".tmp.npz")
    np.savez_compressed(temporary, index=index, images=images, distance=distance)
    temporary.replace(path)


def _stored_adversarials(
    directory: Path, previous: Path | None
) -> Iterator[tuple[int, str, np.ndarray, float]]:
    """(index, attack, image, distance) of every stored adversarial: the per-batch files, then
    an earlier adversarials.npz (which keeps them where adversarials/ was not kept, e.g. a run
    dir committed without it and resumed on another machine)."""
    for path in sorted(directory.glob("*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        attack = path.name.rsplit("_", 1)[0]
        with np.load(path) as data:
            for i, image, dist in zip(data["index"], data["images"], data["distance"]):
                yield int(i), attack, image, float(dist)
    if previous is not None and previous.is_file():
        with np.load(previous) as data:
            for i, attack, image, dist in zip(
                data["index"], data["attack"], data["images"], data["distance"]
            ):
                yield int(i), str(attack), image, float(dist)


def smallest_adversarials(
    directory: Path, rows: list[dict[str, Any]], previous: Path | None = None
) -> dict[str, np.ndarray]:
    """Per sample, the smallest verified adversarial over all attacks (the paper's gallery):
    arrays index, label, adv_pred, attack, distance (N,) and images (N, 28, 28), for the
    samples with a finite all-attacks distance (clean misclassifications: the original).
    Images come from `directory` and the `previous` result (an adversarials.npz)."""
    by_pair = {(r["index"], r["attack"]): r for r in rows}
    best: dict[int, tuple[float, str, np.ndarray]] = {}
    for i, attack, image, dist in _stored_adversarials(directory, previous):
        row = by_pair.get((i, attack))
        if row is None or not math.isfinite(row["distance"]):
            continue
        if not math.isclose(dist, row["distance"], rel_tol=1e-5, abs_tol=1e-6):
            continue  # an image from a killed run that its rerun replaced
        if i not in best or row["distance"] < best[i][0]:
            best[i] = (row["distance"], attack, image)
    order = sorted(best)
    label = {r["index"]: r["label"] for r in rows}
    pred = {(r["index"], r["attack"]): r["adv_pred"] for r in rows}
    return {
        "index": np.array(order, dtype=np.int64),
        "label": np.array([label[i] for i in order], dtype=np.int64),
        "attack": np.array([best[i][1] for i in order]),
        "adv_pred": np.array([pred[(i, best[i][1])] for i in order], dtype=np.int64),
        "distance": np.array([best[i][0] for i in order]),
        "images": np.stack([best[i][2] for i in order]) if order else np.zeros((0, 28, 28)),
    }
