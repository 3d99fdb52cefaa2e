"""Evaluating a defense: the body of evaluate.py. Clean accuracy, per sample."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from abslab.callbacks.per_sample import PerSampleRecorder
from abslab.models.base import Defense
from abslab.models.checkpoints import load_checkpoint_weights
from abslab.models.pretrained import WeightsError
from abslab.utils.loggers import build_logger, finish_logger, log_summary
from abslab.utils.run_io import git_commit, provenance, write_summary
from abslab.utils.seeding import seed_if_given

log = logging.getLogger(__name__)


def accuracy(rows: list[dict[str, int]], column: str) -> float:
    """Fraction of rows whose `column` prediction equals the label."""
    return sum(row[column] == row["label"] for row in rows) / len(rows)


def save_figures(
    model: Defense, datamodule: Any, output_dir: Path, logger: Any, n_images: int
) -> list[str]:
    """The model's pictures of the first test images, as PNGs in the run dir and in W&B."""
    if n_images <= 0:
        return []
    x, y, _ = datamodule.test_set[:n_images]
    paths = []
    for name, figure in model.figures(x, y).items():
        path = output_dir / f"{name}.png"
        figure.savefig(path, dpi=100)
        if isinstance(logger, WandbLogger):
            logger.log_image(key=name, images=[str(path)])
        log.info("Figure: %s", path)
        paths.append(str(path))
    return paths


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.model` (weights from `cfg.ckpt` or `model.pretrained`) on the test slice."""
    seed_if_given(cfg.seed)
    torch.set_flush_denormal(cfg.flush_denormals)
    output_dir = Path(cfg.output_dir)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    if cfg.ckpt is not None:
        load_checkpoint_weights(model, cfg.ckpt)
    elif model.needs_training and model.pretrained is None:
        raise WeightsError(
            f"model={model.name} has no weights: give ckpt=PATH (a checkpoint from train.py)"
            " or, where published weights exist, model.pretrained=PATH."
        )
    recorder = PerSampleRecorder(output_dir / "per_sample.csv")
    logger = None
    status = "failed"
    start = time.time()
    commit = git_commit()  # at the start: the code that runs, whatever HEAD is later
    try:
        logger = build_logger(cfg)
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger or False, callbacks=[recorder])
        if trainer.world_size > 1:
            raise ValueError(
                f"evaluate.py runs on one device, not {trainer.world_size}: set trainer.devices=1 "
                "and shard a large evaluation with data.test_offset and data.test_samples in a "
                "multirun (-m) instead."
            )
        trainer.test(model, datamodule)
        rows = recorder.rows
        summary: dict[str, Any] = {
            "model": model.name,
            "attack": cfg.attack.name,
            "n_samples": len(rows),
            "first_index": rows[0]["index"],
            "clean_accuracy": accuracy(rows, "clean_pred"),
        }
        if "pgd_pred" in rows[0]:  # Madry's own PGD check (model.test_pgd_steps), not an attack
            summary["pgd_accuracy"] = accuracy(rows, "pgd_pred")
            summary["pgd_steps"] = model.test_pgd_steps
            summary["pgd_eps"] = model.eps
        summary.update(
            ckpt=cfg.ckpt,
            pretrained=model.pretrained if cfg.ckpt is None else None,
            **provenance(output_dir, start, commit),
        )
        summary["figures"] = save_figures(model, datamodule, output_dir, logger, cfg.figure_samples)
        log_summary(logger, summary)
        if isinstance(logger, WandbLogger):
            columns = list(rows[0])
            logger.log_table("per_sample", columns=columns, data=[list(r.values()) for r in rows])
        summary["config"] = OmegaConf.to_container(cfg, resolve=True)
        path = write_summary(output_dir, summary)
        log.info("Per-sample results: %s", recorder.path)
        log.info("Summary: %s", path)
        log.info("Clean accuracy on %d samples: %.4f", len(rows), summary["clean_accuracy"])
        status = "success"
        return summary
    finally:
        finish_logger(logger, status)
