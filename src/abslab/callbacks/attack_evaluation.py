"""The attack-evaluation callback: every attack on every test batch, one verified row per
(sample, attack), flushed as it goes, so a killed run resumes where it stopped."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from tqdm import tqdm

from abslab.attacks.base import Attack
from abslab.attacks.harness import Outcome, attack_seed, run_attack
from abslab.models.base import CleanPredictions, Defense
from abslab.results.per_sample import CLEAN_ONLY, append_rows, save_adversarials


class AttackEvaluation(pl.Callback):
    """Runs `attacks` on each test batch the defense's `test_step` has classified (its
    `CleanPredictions`: the batch's clean predictions are what the attacks start from).

    Writes `per_sample.csv` rows (results.per_sample.COLUMNS) and each batch's adversarials
    under `adversarials/` in `run_dir`. Pairs in `done` (index, attack), read back from an
    earlier run in the same directory, are not recomputed. With no attacks it records clean
    predictions only (attack "none"). `progress`: a bar over (sample, attack) pairs with the
    running all-attacks median.
    """

    def __init__(
        self,
        attacks: list[Attack],
        run_dir: str | Path,
        seed: int,
        done: set[tuple[int, str]] | None = None,
        total: int = 0,
        progress: bool = True,
    ) -> None:
        self.attacks = attacks
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.done = done or set()
        self.total = total
        self.progress = progress
        self._bar: tqdm | None = None
        self._smallest: dict[int, float] = {}

    @property
    def csv_path(self) -> Path:
        return self.run_dir / "per_sample.csv"

    def on_test_start(self, trainer: pl.Trainer, pl_module: Defense) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pairs = self.total * max(1, len(self.attacks))
        self._bar = tqdm(total=pairs, desc="attacks", disable=not self.progress, leave=True)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: Defense,
        outputs: CleanPredictions,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, CleanPredictions):
            raise TypeError(
                f"model={pl_module.name}: test_step returned {type(outputs).__name__}; attack "
                "evaluation needs the CleanPredictions that Defense.test_step returns."
            )
        x, y, index = batch
        clean_pred = outputs.clean_pred
        if not self.attacks:
            self._write(CLEAN_ONLY, index, y, clean_pred, Outcome.unattacked(x, y, clean_pred))
            return
        for attack in self.attacks:
            todo = torch.tensor(
                [(int(i), attack.name) not in self.done for i in index], device=index.device
            )
            if not todo.any():
                continue
            seed = attack_seed(self.seed, attack.name, int(index[todo][0]))
            if self._bar is not None:
                self._bar.set_postfix_str(f"{attack.name} on {int(todo.sum())} samples")
            outcome = run_attack(attack, pl_module, x[todo], y[todo], clean_pred[todo], seed)
            self._write(attack.name, index[todo], y[todo], clean_pred[todo], outcome)

    def _write(
        self,
        attack: str,
        index: torch.Tensor,
        y: torch.Tensor,
        clean_pred: torch.Tensor,
        outcome: Outcome,
    ) -> None:
        index_np = index.cpu().numpy()
        if attack != CLEAN_ONLY:  # the images first: a row always has its adversarial on disk
            save_adversarials(
                self.run_dir / "adversarials",
                attack,
                index_np,
                outcome.adversarial.squeeze(1).cpu().numpy().astype(np.float32),
                outcome.distance.cpu().numpy(),
            )
        rows = []
        for i in range(len(index_np)):
            rows.append(
                {
                    "index": int(index_np[i]),
                    "label": int(y[i]),
                    "clean_pred": int(clean_pred[i]),
                    "attack": attack,
                    "success": bool(outcome.success[i]),
                    "adv_pred": int(outcome.adv_pred[i]),
                    "distance": float(outcome.distance[i]),
                    "queries": int(outcome.queries[i]),
                    "seconds": round(float(outcome.seconds[i]), 6),
                    "error": outcome.error[i],
                }
            )
            self.done.add((int(index_np[i]), attack))
            previous = self._smallest.get(int(index_np[i]), math.inf)
            self._smallest[int(index_np[i])] = min(previous, float(outcome.distance[i]))
        append_rows(self.csv_path, rows)
        if self._bar is not None:
            self._bar.update(len(rows))
            if attack != CLEAN_ONLY:
                median = float(np.median(list(self._smallest.values())))
                self._bar.set_postfix_str(f"{attack} done; all-attacks median {median:.4g}")

    def on_test_end(self, trainer: pl.Trainer, pl_module: Defense) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
