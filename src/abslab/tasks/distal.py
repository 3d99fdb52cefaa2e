"""Distal adversarials of one model (conf/paper/figure_distal.yaml): `distal.npz`, `distal.png`
and summary.json in the run dir; `python -m abslab.report` puts the models side by side."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from abslab.attacks.distal import distal_adversarials
from abslab.attacks.ranges import BUDGET_RANGES, check_settings
from abslab.attacks.suite import estimator_of
from abslab.results.figures import distal_figure
from abslab.tasks.evaluate import load_defense, save_figure
from abslab.utils.loggers import log_summary
from abslab.utils.run_io import git_commit, provenance, write_summary
from abslab.utils.seeding import seed_if_given
from abslab.utils.task import logged_run

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Distal adversarials of `cfg.model` for the digits `cfg.distal.targets`."""
    seed_if_given(cfg.seed)
    torch.set_flush_denormal(cfg.flush_denormals)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = cfg.distal
    check_settings(cfg.budget, "budget", BUDGET_RANGES)  # budget.distal_steps: the step count
    steps = cfg.budget.distal_steps
    model, ckpt = load_defense(cfg)
    model.attach_data(instantiate(cfg.data))
    model.eval()
    estimated = settings.estimate_all or model.gradient == "none"
    estimator = estimator_of(settings.estimator, "distal.estimator") if estimated else None
    start = time.time()
    commit = git_commit()
    with logged_run(cfg) as logger:
        targets = torch.tensor(list(settings.targets))
        result = distal_adversarials(
            model,
            targets,
            steps=steps,
            lr=settings.lr,
            momentum=settings.momentum,
            confidence=settings.confidence,
            seed=cfg.seed or 0,
            estimator=estimator,
            progress=cfg.trainer.enable_progress_bar,
        )
        np.savez_compressed(
            output_dir / "distal.npz",
            targets=targets.numpy(),
            images=result.images[:, 0].numpy(),
            confidence=result.confidence.numpy(),
            steps=result.steps.numpy(),
            reached=result.reached.numpy(),
        )
        summary: dict[str, Any] = {
            "model": model.name,
            "sweep_name": cfg.sweep_name,
            "budget": cfg.budget.name,
            "weights": cfg.weights,
            "ckpt": ckpt,
            "pretrained": model.pretrained if ckpt is None else None,
            "distal": {
                "steps": steps,
                "gradient": (
                    f"estimated ({settings.estimator.kind})" if estimated else model.gradient
                ),
                "confidence_level": settings.confidence,
                "targets": targets.tolist(),
                "confidence": [round(float(c), 4) for c in result.confidence],
                "steps_taken": result.steps.tolist(),
                "reached": int(result.reached.sum()),
            },
            **provenance(output_dir, start, commit),
        }
        figure = distal_figure({model.name: summary["distal"] | {"images": result.images[:, 0]}})
        summary["figures"] = [save_figure(figure, output_dir / "distal.png", logger)]
        log_summary(logger, {"distal_reached": summary["distal"]["reached"]})
        summary["config"] = OmegaConf.to_container(cfg, resolve=True)
        write_summary(output_dir, summary)
        log.info(
            "Distal adversarials of %s: %d of %d reach confidence %.2f within %d steps.",
            model.name,
            summary["distal"]["reached"],
            len(targets),
            settings.confidence,
            steps,
        )
        return summary
