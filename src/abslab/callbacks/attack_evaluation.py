"""The attack-evaluation callback: every attack on every test batch, one verified row per
(sample, attack), flushed as it goes, so a killed run resumes where it stopped; each sample's
smallest adversarial so far handed to the attacks that start from it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from tqdm import tqdm

from abslab.attacks.base import Attack
from abslab.attacks.harness import Outcome, run_attack
from abslab.models.base import CleanPredictions, Defense
from abslab.results.per_sample import CLEAN_ONLY, append_rows, row_images, save_adversarials


class AttackEvaluation(pl.Callback):
    """Runs `attacks` on each test batch the defense's `test_step` has classified (its
    `CleanPredictions`: the batch's clean predictions are what the attacks start from).

    Writes `per_sample.csv` rows (results.per_sample.COLUMNS) and each batch's adversarials
    under `adversarials/` in `run_dir`. The (index, attack) pairs of `rows`, read back from an
    earlier run in the same directory, are not recomputed. With no attacks it records clean
    predictions only (attack "none"). `progress`: a bar over (sample, attack) pairs with the
    running all-attacks median.

    Hand-over: the attacks run in the suite's order (`attacks`); an attack with `start: best`
    gets each sample's smallest verified adversarial over the attacks before it, on this batch
    or read back (their images from `adversarials/`, else the run's `adversarials.npz`), or
    the original where they found none (`has_start` False).
    """

    def __init__(
        self,
        attacks: list[Attack],
        run_dir: str | Path,
        seed: int,
        rows: list[dict[str, Any]] | None = None,
        total: int = 0,
        progress: bool = True,
    ) -> None:
        self.attacks = attacks
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.rows = {(r["index"], r["attack"]): r for r in rows or []}
        self.done = set(self.rows)
        self.total = total
        self.progress = progress
        self._bar: tqdm | None = None
        self._smallest: dict[int, float] = {}
        self._images: dict[tuple[int, str], np.ndarray] = {}

    @property
    def csv_path(self) -> Path:
        return self.run_dir / "per_sample.csv"

    def on_test_start(self, trainer: pl.Trainer, pl_module: Defense) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last = max((k for k, a in enumerate(self.attacks) if a.start == "best"), default=0)
        handing = {a.name for a in self.attacks[:last]}
        if handing and self.rows:
            self._images = row_images(
                self.run_dir / "adversarials",
                list(self.rows.values()),
                self.run_dir / "adversarials.npz",
                handing,
            )
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
        best = x.clone()  # each sample's smallest adversarial so far, (B, 1, 28, 28)
        best_distance = torch.full((len(x),), float("inf"), device=x.device)
        for attack in self.attacks:
            todo = torch.tensor(
                [(int(i), attack.name) not in self.done for i in index], device=index.device
            )
            if todo.any():
                if self._bar is not None:
                    self._bar.set_postfix_str(f"{attack.name} on {int(todo.sum())} samples")
                start = best[todo] if attack.start == "best" else None
                has_start = torch.isfinite(best_distance[todo]) if start is not None else None
                outcome = run_attack(
                    attack,
                    pl_module,
                    x[todo],
                    y[todo],
                    clean_pred[todo],
                    self.seed,
                    index[todo],
                    start,
                    has_start,
                )
                self._write(attack.name, index[todo], y[todo], clean_pred[todo], outcome)
                _improve(best, best_distance, todo, outcome.adversarial, outcome.distance)
            self._hand_over_resumed(attack.name, index, ~todo, best, best_distance)

    def _hand_over_resumed(
        self,
        attack: str,
        index: torch.Tensor,
        resumed: torch.Tensor,
        best: torch.Tensor,
        best_distance: torch.Tensor,
    ) -> None:
        """Take the read-back adversarials of `attack` for the samples `resumed` (B,) bool."""
        for position in resumed.nonzero().flatten().tolist():
            image = self._images.get((int(index[position]), attack))
            if image is None:
                continue
            found = torch.tensor([self.rows[(int(index[position]), attack)]["distance"]])
            at = torch.zeros(len(best), dtype=torch.bool, device=best.device)
            at[position] = True
            adversarial = torch.from_numpy(image).to(best.device, best.dtype).reshape(1, 1, 28, 28)
            _improve(best, best_distance, at, adversarial, found.to(best_distance))

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
                    "gradients": int(outcome.gradients[i]),
                    "seconds": round(float(outcome.seconds[i]), 6),
                    "error": outcome.error[i],
                    "note": outcome.note[i],
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


def _improve(
    best: torch.Tensor,
    best_distance: torch.Tensor,
    at: torch.Tensor,
    adversarial: torch.Tensor,
    found: torch.Tensor,
) -> None:
    """Where `at` (B,) bool, take adversarial (A, 1, 28, 28) at distance found (A,) if it is
    smaller than the best so far (clean misclassifications, distance 0, are no start)."""
    positions = at.nonzero().flatten()
    smaller = (found > 0) & (found < best_distance[positions])
    best[positions[smaller]] = adversarial[smaller]
    best_distance[positions[smaller]] = found[smaller]
