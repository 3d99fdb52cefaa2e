"""Training a defense: the body of train.py, a plain function of the composed config."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from abslab.models.base import build_defense
from abslab.models.checkpoints import slim_checkpoint
from abslab.tasks.fit_scalars import fit_and_write
from abslab.utils.loggers import log_summary
from abslab.utils.run_io import git_commit, provenance, write_summary
from abslab.utils.seeding import seed_if_given
from abslab.utils.task import logged_run

log = logging.getLogger(__name__)


def export_weights(cfg: DictConfig, checkpoint: str, datamodule: Any) -> dict[str, Any]:
    """<run dir>/weights.ckpt: the tested checkpoint, weights only (what weights=own and
    `checkpoints/` take). With fit_binary_scalars, binary ABS's class scalars are fitted on the
    validation split beside it (weights.scalars.json)."""
    path = slim_checkpoint(checkpoint, Path(cfg.output_dir) / "weights.ckpt")
    exported: dict[str, Any] = {"weights": str(path)}
    if cfg.fit_binary_scalars:
        binary = build_defense(
            cfg.model, name="binary_abs", binarize_input=True, class_scalars=None
        )
        x, y, _ = datamodule.val_set.tensors
        device = "cuda" if torch.cuda.is_available() else "cpu"
        fitted = fit_and_write(binary, path, x, y, device, cfg.data.eval_batch_size)
        exported["binary_abs_scalars"] = fitted["class_scalars"]
        exported["binary_abs_val_accuracy"] = fitted["val_accuracy_fitted"]
        log.info("Binary ABS scalars (validation): %s", fitted["class_scalars"])
    log.info("Weights: %s", path)
    return exported


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit `cfg.model` on `cfg.data`, test the best checkpoint, write summary.json."""
    seed_if_given(cfg.seed)
    torch.set_flush_denormal(cfg.flush_denormals)
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={cfg.ckpt_path} does not exist; give the last.ckpt of the run to resume."
        )
    output_dir = Path(cfg.output_dir)
    datamodule = instantiate(cfg.data)
    model = build_defense(cfg.model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    start = time.time()
    commit = git_commit()  # at the start: the code that runs, whatever HEAD is later
    with logged_run(cfg) as logger:
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger or False, callbacks=callbacks)
        summary: dict[str, Any] = {"model": model.name, "seed": cfg.seed}
        best = None
        if model.needs_training:
            trainer.fit(model, datamodule, ckpt_path=cfg.ckpt_path)
            checkpointer = trainer.checkpoint_callback
            best = (checkpointer.best_model_path or None) if checkpointer else None
            summary["best_checkpoint"] = best
            summary["last_checkpoint"] = (
                (checkpointer.last_model_path or None) if checkpointer else None
            )
            summary["epochs"] = trainer.current_epoch
            summary["steps"] = trainer.global_step
            if model.best_val_acc > float("-inf"):
                summary["val_accuracy_best"] = model.best_val_acc
        else:
            log.info("model=%s needs no training; testing it as it is.", model.name)
        if model.needs_training and trainer.is_global_zero:
            summary.update(export_weights(cfg, best or summary["last_checkpoint"], datamodule))
        if cfg.test_after_fit:
            results = trainer.test(model, datamodule, ckpt_path=best)
            summary.update({k.replace("test/", "test_"): v for k, v in results[0].items()})
        summary.update(provenance(output_dir, start, commit))
        if trainer.is_global_zero:
            log_summary(logger, summary)
            summary["config"] = OmegaConf.to_container(cfg, resolve=True)
            path = write_summary(output_dir, summary)
            log.info("Run directory: %s", output_dir)
            log.info("Best checkpoint: %s", summary.get("best_checkpoint"))
            log.info("Summary: %s", path)
            if "test_acc" in summary:
                log.info("Test accuracy: %.4f", summary["test_acc"])
        return summary
