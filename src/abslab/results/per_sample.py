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
    "gradients",
    "seconds",
    "error",
    "note",
)
CLEAN_ONLY = "none"  # the attack column of a clean-accuracy-only run
# Columns that older per_sample.csv files lack: read as unknown (gradients None) or empty.
LATER_COLUMNS = ("gradients", "note")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of per_sample.csv, typed; the last row of a (index, attack) pair wins.

    A final line cut off by a killed run is dropped (it has too few fields). Files written
    before the `gradients` and `note` columns read with gradients None (unknown), note ''."""
    if not path.exists():
        return []
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for raw in reader:
            if any(raw.get(column) is None for column in header):  # a truncated last line
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
                "gradients": int(raw["gradients"]) if raw.get("gradients") else None,
                "seconds": float(raw["seconds"]),
                "error": raw["error"],
                "note": raw.get("note") or "",
            }
            rows[(row["index"], row["attack"])] = row
    return list(rows.values())


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows (a header first if the file is new) and flush them to disk. A file of an
    older header is first rewritten under COLUMNS (its rows with empty new columns)."""
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _upgrade_header(path)
    with path.open("a", newline="") as f:
        if not new and not _ends_with_newline(path):
            f.write("\n")  # a line cut off by a killed run: start a fresh one
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            gradients = row.get("gradients")
            writer.writerow(
                {
                    **row,
                    "success": int(row["success"]),
                    "gradients": "" if gradients is None else gradients,
                }
            )
        f.flush()
        os.fsync(f.fileno())


def _upgrade_header(path: Path) -> None:
    """Rewrite a per_sample.csv whose header lacks LATER_COLUMNS under COLUMNS, atomically."""
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    if tuple(header) == COLUMNS:
        return
    if not set(header) <= set(COLUMNS) or not set(COLUMNS) - set(header) <= set(LATER_COLUMNS):
        raise ValueError(f"{path} has columns {header}, not abslab's {list(COLUMNS)}.")
    with path.open(newline="") as f:
        complete = [r for r in csv.DictReader(f) if all(r.get(c) is not None for c in header)]
    temporary = path.with_suffix(".tmp.csv")
    with temporary.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(complete)
    temporary.replace(path)


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


def row_images(
    directory: Path,
    rows: list[dict[str, Any]],
    previous: Path | None = None,
    attacks: set[str] | None = None,
) -> dict[tuple[int, str], np.ndarray]:
    """The stored adversarial (28, 28) of each (index, attack) row with a finite distance, of
    the `attacks` given (None: all), from `directory` and the `previous` result (an
    adversarials.npz); an image whose stored distance is not the row's (relative 1e-5) is
    left out: it came from a killed run that its rerun replaced."""
    by_pair = {(r["index"], r["attack"]): r for r in rows}
    images: dict[tuple[int, str], np.ndarray] = {}
    for i, attack, image, dist in _stored_adversarials(directory, previous):
        row = by_pair.get((i, attack))
        if row is None or not math.isfinite(row["distance"]) or (i, attack) in images:
            continue
        if attacks is not None and attack not in attacks:
            continue
        if math.isclose(dist, row["distance"], rel_tol=1e-5, abs_tol=1e-6):
            images[(i, attack)] = image
    return images


def smallest_adversarials(
    directory: Path, rows: list[dict[str, Any]], previous: Path | None = None
) -> dict[str, np.ndarray]:
    """Per sample, the smallest verified adversarial over all attacks (the paper's gallery):
    arrays index, label, adv_pred, attack, distance (N,) and images (N, 28, 28), for the
    samples with a finite all-attacks distance (clean misclassifications: the original).
    Images come from `directory` and the `previous` result (an adversarials.npz)."""
    by_pair = {(r["index"], r["attack"]): r for r in rows}
    best: dict[int, tuple[float, str, np.ndarray]] = {}
    for (i, attack), image in row_images(directory, rows, previous).items():
        dist = by_pair[(i, attack)]["distance"]
        if i not in best or dist < best[i][0]:
            best[i] = (dist, attack, image)
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
