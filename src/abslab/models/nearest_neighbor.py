"""1-nearest-neighbour classifier in L2 over the MNIST training set (docs/paper.md §4.3)."""

from __future__ import annotations

from typing import Any

import torch

from abslab.models.base import Defense


class NearestNeighborDefense(Defense):
    """logit_c = -(smallest L2 distance from x to a training image of class c).

    The 60,000 training images are taken from the datamodule at setup (or given with
    `fit_reference`), sorted by class, with their squared norms cached; a batch then costs one
    matrix product per class. No training and no input gradient.
    """

    gradient = "none"
    needs_training = False
    nearest_neighbor = True

    def __init__(
        self,
        name: str = "nearest_neighbor",
        logit_scale: float = 5.0,
        confidence_level: float = 4e-12,
    ) -> None:
        super().__init__(name, logit_scale, confidence_level)
        self.save_hyperparameters(logger=False)
        # The reference set comes from the data, not the checkpoint: non-persistent buffers.
        self.register_buffer("references", torch.empty(0, 784), persistent=False)
        self.register_buffer("reference_sq_norms", torch.empty(0), persistent=False)
        self.class_starts: list[int] = []

    def fit_reference(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Memorise images (N, 1, 28, 28) in [0, 1] with labels (N,) covering all ten classes."""
        counts = torch.bincount(labels, minlength=10)
        if len(counts) != 10 or (counts == 0).any():
            raise ValueError(f"The reference set needs every class 0-9; counts {counts.tolist()}.")
        order = torch.argsort(labels, stable=True)
        flat = images[order].reshape(len(labels), -1).float().to(self.device)
        self.references = flat
        self.reference_sq_norms = (flat * flat).sum(1)
        self.class_starts = [0, *torch.cumsum(counts, 0).tolist()]

    def attach_data(self, datamodule: Any) -> None:
        if len(self.references) == 0:
            self.fit_reference(*datamodule.reference_set())

    def setup(self, stage: str) -> None:
        self.attach_data(self.trainer.datamodule)

    def reference_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The memorised images, flattened and sorted by class (N, 784), and labels (N,)."""
        self._check_fitted()
        labels = torch.arange(10).repeat_interleave(torch.tensor(self.class_starts).diff())
        return self.references, labels.to(self.references.device)

    def _check_fitted(self) -> None:
        if len(self.references) == 0:
            raise RuntimeError("NearestNeighborDefense has no reference set: call fit_reference.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, 28, 28) -> logits (B, 10), minus the per-class nearest L2 distance."""
        self._check_fitted()
        flat = x.reshape(len(x), -1)
        x_sq = (flat * flat).sum(1, keepdim=True)
        logits = []
        for start, stop in zip(self.class_starts[:-1], self.class_starts[1:]):
            refs = self.references[start:stop]
            sq_dist = x_sq + self.reference_sq_norms[start:stop] - 2 * flat @ refs.T
            logits.append(-sq_dist.min(1).values.clamp_min(0).sqrt())
        return torch.stack(logits, 1)
