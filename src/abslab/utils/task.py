"""The frame every task shares: a logger opened for the run and always closed with its status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

from abslab.utils.loggers import build_logger, finish_logger


@contextlib.contextmanager
def logged_run(cfg: DictConfig) -> Iterator[Logger | None]:
    """`with logged_run(cfg) as logger:` the task's body. The logger (None for logger=none) is
    finished as "success" when the body returns and "failed" when it raises, so each multirun
    job closes its own W&B run either way."""
    logger = None
    status = "failed"
    try:
        logger = build_logger(cfg)
        yield logger
        status = "success"
    finally:
        finish_logger(logger, status)
