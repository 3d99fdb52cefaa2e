"""Seeding that treats 0 as a seed."""

from __future__ import annotations

import pytorch_lightning as pl


def seed_if_given(seed: int | None) -> None:
    """Seed Python, numpy and torch (and dataloader workers) unless seed is None."""
    if seed is not None:
        pl.seed_everything(seed, workers=True)
