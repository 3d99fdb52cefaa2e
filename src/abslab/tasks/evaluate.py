"""Evaluating a defense: the body of evaluate.py. Clean accuracy and the norm's attack suite,
per sample, resumable from the run directory's files."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

from abslab.attacks.budget import apply_budget
from abslab.attacks.suite import build_attacks
from abslab.callbacks.attack_evaluation import AttackEvaluation
from abslab.models import registry
from abslab.models.base import Defense
from abslab.results.attack_summary import curve_epsilons, summarize
from abslab.results.cards import ModelCard, NormCard
from abslab.results.cells import run_cell
from abslab.results.figures import curves_figure, gallery_figure
from abslab.results.per_sample import CLEAN_ONLY, COLUMNS, read_rows, smallest_adversarials
from abslab.results.reconstructions import reconstruction_figure
from abslab.utils.loggers import log_summary
from abslab.utils.run_io import git_commit, provenance, write_summary
from abslab.utils.run_records import (
    check_resume,
    check_resume_mode,
    config_hash,
    index_ranges,
    segment,
    segments_summary,
    weights_hash,
    write_final_config,
)
from abslab.utils.seeding import seed_if_given
from abslab.utils.task import logged_run

log = logging.getLogger(__name__)


def load_defense(cfg: DictConfig) -> tuple[Defense, str | None]:
    """The model of `cfg.model` and the checkpoint it loaded (abslab.models.registry.load_model:
    `cfg.ckpt`, else `model.pretrained`, else by name from `cfg.weights`)."""
    return registry.load_model(cfg.model, cfg.weights, cfg.ckpt, cfg.registry, cfg.published_root)


def save_figure(figure: Any, path: Path, logger: Logger | None) -> str:
    """A matplotlib figure as a PNG in the run dir and, with W&B, as an image there too."""
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=110)
    plt.close(figure)
    if isinstance(logger, WandbLogger):
        logger.log_image(key=path.stem, images=[str(path)])
    log.info("Figure: %s", path)
    return str(path)


def _attack_outputs(
    cfg: DictConfig,
    model: Defense,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    _datamodule: Any,
    logger: Logger | None,
) -> list[str]:
    """adversarials.npz, and the report's curves and gallery figures of the run's one cell as
    robustness_curve.png and adversarials.png (the datamodule is not needed any more)."""
    output_dir = Path(cfg.output_dir)
    previous = output_dir / "adversarials.npz"
    smallest = smallest_adversarials(output_dir / "adversarials", rows, previous)
    np.savez_compressed(output_dir / "adversarials.npz", **smallest)
    norm = NormCard.from_config(cfg.norm.name, cfg.norm)
    card = ModelCard.from_config(model.name, cfg.model.get("card"))
    cell = run_cell(summary, rows, smallest, card, norm)
    return [
        save_figure(curves_figure([cell], None), output_dir / "robustness_curve.png", logger),
        save_figure(gallery_figure([cell], norm), output_dir / "adversarials.png", logger),
    ]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `cfg.model` on the test slice under `cfg.norm`'s attacks (`cfg.attack`)."""
    seed_if_given(cfg.seed)
    torch.set_flush_denormal(cfg.flush_denormals)
    check_resume_mode(cfg.resume)
    output_dir = Path(cfg.output_dir)
    apply_budget(cfg)
    datamodule = instantiate(cfg.data)
    model, ckpt = load_defense(cfg)
    attacks, skipped = build_attacks(cfg.get("attack"), cfg.norm.name, model)
    names = [a.name for a in attacks] or [CLEAN_ONLY]
    datamodule.setup("test")
    wanted = set(datamodule.test_set.tensors[2].tolist())
    csv_path = output_dir / "per_sample.csv"
    on_disk = read_rows(csv_path)
    resumed = [r for r in on_disk if r["index"] in wanted]
    done = {(r["index"], r["attack"]) for r in resumed}
    finished = {i for i in wanted if all((i, name) in done for name in names)}
    if finished:
        log.info(
            "Resuming %s: %d of %d samples are finished.", output_dir, len(finished), len(wanted)
        )
    datamodule.skip_test_indices(finished)
    start = time.time()
    commit = git_commit()  # at the start: the code that runs, whatever HEAD is later
    final = OmegaConf.to_container(cfg, resolve=True)  # cfg as it runs: budget, weights applied
    weights = weights_hash(model)
    forced = check_resume(output_dir, final, weights, cfg.resume) if on_disk else []
    write_final_config(output_dir, cfg)
    attacked = sorted(wanted - finished)
    with (
        logged_run(cfg) as logger,
        segment(
            output_dir,
            commit=commit,
            config_hash=config_hash(final),
            weights_hash=weights,
            samples=index_ranges(attacked),
            n_samples=len(attacked),
            **({"forced": forced} if forced else {}),
        ) as this_segment,
    ):
        evaluation = AttackEvaluation(
            attacks,
            output_dir,
            seed=cfg.seed or 0,
            rows=resumed,
            total=len(wanted) - len(finished),
            progress=cfg.trainer.enable_progress_bar,
        )
        trainer: pl.Trainer = instantiate(
            cfg.trainer, logger=logger or False, callbacks=[evaluation]
        )
        if trainer.world_size > 1:
            raise ValueError(
                f"evaluate.py runs on one device, not {trainer.world_size}: set trainer.devices=1 "
                "and shard a large evaluation with data.test_offset and data.test_samples in a "
                "multirun (-m) instead."
            )
        if len(finished) < len(wanted):
            trainer.test(model, datamodule)
        rows = [r for r in read_rows(csv_path) if r["index"] in wanted]
        summary: dict[str, Any] = {
            "model": model.name,
            "norm": cfg.norm.name,
            "n_samples": len({r["index"] for r in rows}),
            "first_index": min(r["index"] for r in rows),
            "clean_accuracy": float(
                np.mean([r["clean_pred"] == r["label"] for r in rows if r["attack"] == names[0]])
            ),
        }
        if attacks:
            epsilons = curve_epsilons(cfg.norm)
            paper = [a.name for a in attacks if a.paper]
            summary.update(summarize(rows, names, float(cfg.norm.threshold), epsilons, paper))
            summary["skipped_attacks"] = skipped
            summary["budgets"] = {a.name: {"source": a.source, **a.settings()} for a in attacks}
        summary.update(
            sweep_name=cfg.sweep_name,
            budget=cfg.budget.name,
            weights=cfg.weights,
            test_offset=cfg.data.test_offset,
            ckpt=ckpt,
            pretrained=model.pretrained if ckpt is None else None,
            **provenance(output_dir, start, commit),
        )
        figures = _attack_outputs(cfg, model, rows, summary, datamodule, logger) if attacks else []
        if cfg.figure_samples > 0 and model.reconstructs and len(datamodule.test_set) > 0:
            x, y, _ = datamodule.test_set[: cfg.figure_samples]
            with torch.no_grad():
                out = model.infer(x.to(model.device))
            figure = reconstruction_figure(x, y, out.logits, out.reconstructions)
            figures.append(save_figure(figure, output_dir / "reconstructions.png", logger))
        summary["figures"] = figures
        log_summary(logger, summary)
        if isinstance(logger, WandbLogger):
            data = [[r[c] for c in COLUMNS] for r in rows]
            logger.log_table("per_sample", columns=list(COLUMNS), data=data)
        summary["config"] = final
        summary.update(segments_summary(this_segment.finish()))
        path = write_summary(output_dir, summary)
        log.info("Per-sample results: %s", csv_path)
        log.info("Summary: %s", path)
        log.info(
            "Clean accuracy on %d samples: %.4f", summary["n_samples"], summary["clean_accuracy"]
        )
        for name, stats in summary.get("attacks", {}).items():
            log.info(
                "%-14s median %s  accuracy at %s: %.4f",
                name,
                stats["median_distance"],
                cfg.norm.threshold,
                stats["accuracy_at_threshold"],
            )
        return summary
