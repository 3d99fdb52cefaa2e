"""Experiment loggers from the `logger` config group, and closing them between multirun jobs."""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger


def build_logger(cfg: DictConfig) -> Logger | None:
    """Instantiate `cfg.logger` (None for logger=none) and log the resolved config to it."""
    if cfg.get("logger") is None or "_target_" not in cfg.logger:
        return None
    logger = hydra.utils.instantiate(cfg.logger)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def log_summary(logger: Logger | None, summary: dict[str, Any]) -> None:
    """Put final metrics and paths into the logger's run summary (W&B) or metrics (others)."""
    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update(summary)
    elif logger is not None:
        logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
        logger.save()


def finish_logger(logger: Logger | None, status: str) -> None:
    """Close the logger (status "success" or "failed"), and the W&B run so the next multirun
    job starts its own."""
    if logger is not None:
        logger.finalize(status)
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=0 if status == "success" else 1)
