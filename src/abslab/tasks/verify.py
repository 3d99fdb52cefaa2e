"""Re-verifying a run dir in a fresh process: `python -m abslab.verify RUN_DIR... [--all]`.

Every stored adversarial (adversarials.npz; with --all also each attack's files under
adversarials/) is re-predicted by the run's model at batch size 1 and at the run's eval batch
size, and re-measured against its original from MNIST. A row passes if, at both batch sizes,
the defense calls the image adversarial with the harness's margin
(abslab.attacks.queries.MARGIN; clean misclassifications, distance 0: misclassified) with
per_sample.csv's adv_pred, and the distance measured is the row's (relative 1e-5).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from abslab.attacks.distances import distance
from abslab.attacks.harness import judge
from abslab.models.base import Defense
from abslab.models.registry import load_model
from abslab.results.per_sample import read_rows, row_images
from abslab.utils.run_records import CONFIG_FILE, read_segments, weights_hash

log = logging.getLogger(__name__)

MODEL_CONFIGS = Path("conf/model")  # run from the repository root, as evaluate.py
RELATIVE_TOLERANCE = 1e-5  # a distance re-measured in another process: float32 rounding only


def run_config(run_dir: Path) -> DictConfig:
    """The run's final config: config.yaml, else summary.json's "config"."""
    if (run_dir / CONFIG_FILE).is_file():
        return OmegaConf.load(run_dir / CONFIG_FILE)
    summary = run_dir / "summary.json"
    if summary.is_file() and "config" in json.loads(summary.read_text()):
        return OmegaConf.create(json.loads(summary.read_text())["config"])
    raise FileNotFoundError(f"{run_dir} has neither {CONFIG_FILE} nor summary.json's config.")


def _checkpoint(run_dir: Path, cfg: DictConfig) -> str | None:
    """The checkpoint the run loaded: the config's `ckpt`, else summary.json's where that file
    still exists (else None: the model is found again by `weights`)."""
    if cfg.get("ckpt"):
        return str(cfg.ckpt)
    summary = run_dir / "summary.json"
    recorded = json.loads(summary.read_text()).get("ckpt") if summary.is_file() else None
    return recorded if recorded and Path(recorded).is_file() else None


# What a run's config must hold for its model to be loaded again as the run loaded it.
RUN_KEYS = ("model", "data", "norm", "weights", "registry", "published_root")


class UnverifiableRun(Exception):
    """A run dir whose records cannot reload its model (written by an older abslab)."""


def load_run(
    run_dir: Path, data_root: str | None
) -> tuple[DictConfig, Defense, dict[int, tuple[torch.Tensor, int]], list[str]]:
    """The config, the model (its weights as the run loaded them), the test originals by
    test-file index (image (1, 28, 28), label) and problems found on the way."""
    cfg = run_config(run_dir)
    missing = [key for key in RUN_KEYS if key not in cfg]
    if missing:
        raise UnverifiableRun(
            f"{run_dir}: its config.yaml has no {', '.join(missing)}: it was written before runs "
            "recorded how to reload their model, so it cannot be verified. Rerun it (its sweep's "
            "command) to replace it."
        )
    torch.set_flush_denormal(bool(cfg.get("flush_denormals", False)))
    if "card" not in cfg.model:  # written before models had cards: the card of today's config
        card = OmegaConf.load(MODEL_CONFIGS / f"{cfg.model.name}.yaml").card
        OmegaConf.update(cfg, "model.card", card, force_add=True)
    model, _ = load_model(
        cfg.model, cfg.weights, _checkpoint(run_dir, cfg), cfg.registry, cfg.published_root
    )
    model.eval()
    problems = []
    segments = read_segments(run_dir)
    if segments and segments[-1].get("weights_hash") != weights_hash(model):
        problems.append(
            f"{run_dir}: the model loaded now (weights hash {weights_hash(model)}) is not the one "
            f"the run recorded ({segments[-1].get('weights_hash')})"
        )
    overrides: dict[str, Any] = {"download": False}
    if data_root is not None:
        overrides["root"] = data_root
    datamodule = instantiate(cfg.data, **overrides)
    datamodule.setup("test")
    model.attach_data(datamodule)
    x, y, index = datamodule.test_set.tensors
    originals = {int(i): (x[k], int(y[k])) for k, i in enumerate(index)}
    return cfg, model, originals, problems


def verify_run(
    run_dir: Path, data_root: str | None = None, every_attack: bool = False
) -> list[str]:
    """The mismatches of one run dir (empty: every stored adversarial verified)."""
    cfg, model, originals, problems = load_run(run_dir, data_root)
    rows = {(r["index"], r["attack"]): r for r in read_rows(run_dir / "per_sample.csv")}
    stored: dict[tuple[int, str], np.ndarray] = {}
    smallest = run_dir / "adversarials.npz"
    if smallest.is_file():
        with np.load(smallest) as data:
            for i, attack, image in zip(data["index"], data["attack"], data["images"]):
                stored[(int(i), str(attack))] = image
    if every_attack:
        found = row_images(run_dir / "adversarials", list(rows.values()))
        for pair, row in rows.items():
            if math.isfinite(row["distance"]) and row["distance"] > 0 and pair not in found:
                problems.append(f"{run_dir}: {_name(pair)}: no stored image has its distance")
        stored.update(found)
    norm = str(cfg.norm.name)
    pairs = sorted(stored)
    missing = [p for p in pairs if p not in rows or p[0] not in originals]
    problems += [f"{run_dir}: {_name(p)}: no per_sample.csv row or original" for p in missing]
    pairs = [p for p in pairs if p not in missing]
    if not pairs:
        return problems
    images = torch.from_numpy(np.stack([stored[p] for p in pairs])).float().unsqueeze(1)
    x = torch.stack([originals[i][0] for i, _ in pairs]).to(images.dtype)
    y = torch.tensor([originals[i][1] for i, _ in pairs])
    images, x, y = images.to(model.device), x.to(model.device), y.to(model.device)
    measured = distance(images, x, norm).cpu()
    verdicts = {size: judge(model, images, y, size) for size in (1, int(cfg.data.eval_batch_size))}
    for k, pair in enumerate(pairs):
        row = rows[pair]
        what = []
        if not math.isclose(measured[k], row["distance"], rel_tol=RELATIVE_TOLERANCE):
            what.append(f"distance {float(measured[k]):.7g}, per_sample.csv {row['distance']:.7g}")
        for size, (pred, fooled) in verdicts.items():
            clean = row["distance"] == 0
            if int(pred[k]) != row["adv_pred"] or not (clean or bool(fooled[k])):
                margin = "" if clean else " by the margin" if bool(fooled[k]) else " (no margin)"
                what.append(
                    f"at batch size {size}: predicted {int(pred[k])}{margin}, per_sample.csv "
                    f"adv_pred {row['adv_pred']} (label {row['label']})"
                )
        if what:
            problems.append(f"{run_dir}: {_name(pair)}: " + "; ".join(what))
    log.info("%s: %d stored adversarials re-verified", run_dir, len(pairs))
    return problems


def _name(pair: tuple[int, str]) -> str:
    return f"index {pair[0]} attack {pair[1]}"


def main(argv: list[str] | None = None) -> int:
    """The CLI: 0 if every run dir verifies, else 1, each mismatch listed on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m abslab.verify", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--data-root", help="MNIST folder (default: the run's data.root)")
    parser.add_argument(
        "--all", action="store_true", help="also every attack's adversarials under adversarials/"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problems = []
    for run_dir in args.run_dirs:
        try:
            found = verify_run(run_dir, args.data_root, args.all)
            status = f"{len(found)} mismatches" if found else "verified"
        except UnverifiableRun as err:
            found, status = [str(err)], "cannot be verified"
        print(f"{run_dir}: {status}")
        problems += found
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0
