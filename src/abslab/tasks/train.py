"""Training a defense: the body of train.py, a plain function of the composed config."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from abslab.data.mnist import first_test_images
from abslab.models.abs import ABSDefense
from abslab.models.base import build_defense
from abslab.models.checkpoints import load_checkpoint_weights, slim_checkpoint
from abslab.tasks.abs_margins import bounds_and_errors, margins, objective_terms
from abslab.tasks.fit_scalars import fit_and_write
from abslab.utils.loggers import log_summary
from abslab.utils.run_io import git_commit, job_command, provenance, write_summary
from abslab.utils.seeding import seed_if_given
from abslab.utils.task import logged_run

log = logging.getLogger(__name__)
TESTED_CHECKPOINTS = ("best", "last")  # the epoch with the best val/acc, or the last epoch


def export_weights(cfg: DictConfig, checkpoint: str, datamodule: Any) -> dict[str, Any]:
    """<run dir>/weights.ckpt: the tested checkpoint, weights only (what weights=own and
    `checkpoints/` take). With fit_binary_scalars, binary ABS's class scalars are fitted on the
    validation split beside it (weights.scalars.json; ones where the fit does not win on held-out
    folds, abslab.tasks.fit_scalars)."""
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
        exported["binary_abs_scalars_chosen"] = fitted["chosen"]
        log.info(
            "Binary ABS scalars (validation, %s): %s", fitted["chosen"], fitted["class_scalars"]
        )
    log.info("Weights: %s", path)
    return exported


def abs_diagnostics(cfg: DictConfig, weights: str | Path) -> dict[str, Any]:
    """What results/abs.md compares ABS models by, on the first `cfg.abs_diagnostics` test
    images under the full inference of `cfg.model` with `weights`: accuracy, the training
    objective's squared error and KL per image (each digit through its own class's VAE, beta 1)
    and the median class-specificity margin D_best other - D_true (per pixel). On the CPU, as
    abslab.tasks.abs_margins measures the published VAEs (results/abs_margins.md)."""
    model = build_defense(cfg.model)
    load_checkpoint_weights(model, weights)
    model.eval()
    x, y, _ = first_test_images(cfg.data.root, cfg.abs_diagnostics)
    bounds, _ = bounds_and_errors(model, x)
    terms = objective_terms(model, x, y)
    labels = y.numpy()
    return {
        "abs_images": len(labels),
        "abs_acc": float(np.mean(bounds.argmin(1) == labels)),
        "abs_squared_error": terms["squared error"],
        "abs_kl": terms["KL"],
        "abs_median_margin": float(np.median(margins(bounds, labels))),
    }


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint the fit resumes from: `ckpt_path`, else with `resume_run_dir` the run
    dir's checkpoints/last.ckpt where an earlier call left one (a rerun sweep job)."""
    if cfg.ckpt_path is not None:
        if not Path(cfg.ckpt_path).is_file():
            raise FileNotFoundError(
                f"ckpt_path={cfg.ckpt_path} does not exist; give the last.ckpt of the run to "
                "resume."
            )
        return str(cfg.ckpt_path)
    last = last_checkpoint(cfg)
    return str(last) if cfg.resume_run_dir and last.is_file() else None


def last_checkpoint(cfg: DictConfig) -> Path:
    """Where conf/callbacks/default.yaml's last_checkpoint writes after every epoch, and run()
    at the end of the fit (also a run that saved none: fast_dev_run, max_steps mid-epoch)."""
    return Path(cfg.output_dir) / "checkpoints" / "last.ckpt"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit `cfg.model` on `cfg.data`, test the `tested_checkpoint` (best or last), write
    summary.json. With `resume_run_dir`, a run dir that has summary.json is finished: its
    summary returns."""
    if cfg.tested_checkpoint not in TESTED_CHECKPOINTS:
        raise ValueError(
            f"tested_checkpoint={cfg.tested_checkpoint}: choose one of {TESTED_CHECKPOINTS}."
        )
    output_dir = Path(cfg.output_dir)
    finished = output_dir / "summary.json"
    if cfg.resume_run_dir and finished.is_file():
        log.info("%s exists: the run is finished, skipped (resume_run_dir=true).", finished)
        return json.loads(finished.read_text())
    seed_if_given(cfg.seed)
    torch.set_flush_denormal(cfg.flush_denormals)
    ckpt_path = resume_checkpoint(cfg)
    datamodule = instantiate(cfg.data)
    model = build_defense(cfg.model)
    if cfg.abs_diagnostics and not isinstance(model, ABSDefense):
        raise ValueError(
            f"abs_diagnostics={cfg.abs_diagnostics} measures ABS models; model={model.name} is "
            "not one: set abs_diagnostics=0."
        )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    start = time.time()
    commit = git_commit()  # at the start: the code that runs, whatever HEAD is later
    with logged_run(cfg) as logger:
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger or False, callbacks=callbacks)
        summary: dict[str, Any] = {"model": model.name, "seed": cfg.seed}
        tested = None
        if model.needs_training:
            summary["resumed_from"] = ckpt_path
            trainer.fit(model, datamodule, ckpt_path=ckpt_path, weights_only=True)
            checkpointer = trainer.checkpoint_callback
            best = (checkpointer.best_model_path or None) if checkpointer else None
            summary["best_checkpoint"] = best
            last = last_checkpoint(cfg)
            trainer.save_checkpoint(last)  # on every rank: Lightning writes it from rank zero
            summary["last_checkpoint"] = str(last)
            tested = best if cfg.tested_checkpoint == "best" and best else str(last)
            summary["tested_checkpoint"] = tested
            summary["epochs"] = trainer.current_epoch
            summary["steps"] = trainer.global_step
            if model.best_val_acc > float("-inf"):
                summary["val_accuracy_best"] = model.best_val_acc
        else:
            log.info("model=%s needs no training; testing it as it is.", model.name)
        if model.needs_training and trainer.is_global_zero:
            summary.update(export_weights(cfg, tested, datamodule))
            if cfg.abs_diagnostics:
                summary.update(abs_diagnostics(cfg, summary["weights"]))
        if cfg.test_after_fit:
            results = trainer.test(model, datamodule, ckpt_path=tested, weights_only=True)
            summary.update({k.replace("test/", "test_"): v for k, v in results[0].items()})
        summary.update(provenance(output_dir, start, commit))
        summary["job_command"] = job_command()
        if trainer.is_global_zero:
            log_summary(logger, summary)
            summary["config"] = OmegaConf.to_container(cfg, resolve=True)
            path = write_summary(output_dir, summary)
            log.info("Run directory: %s", output_dir)
            log.info("Tested checkpoint: %s", summary.get("tested_checkpoint"))
            log.info("Summary: %s", path)
            if "test_acc" in summary:
                log.info("Test accuracy: %.4f", summary["test_acc"])
        return summary
