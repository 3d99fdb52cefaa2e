"""A callback that writes one CSV row per test sample as the test loop produces them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class PerSampleRecorder(pl.Callback):
    """Collects the per-sample columns `test_step` returns and appends them to `path`.

    Rows are flushed batch by batch, so an interrupted evaluation keeps what it measured.
    Columns come from the first batch: `index,label,clean_pred` and whatever else the model adds.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, int]] = []
        self._writer: csv.DictWriter | None = None
        self._file = None

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", newline="")
        self._writer = None

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        columns = {k: v.tolist() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(columns))
            self._writer.writeheader()
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        self._writer.writerows(rows)
        self._file.flush()
        self.rows.extend(rows)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
