"""Class-balanced batches, as the co-author's reimplementation trains the ABS VAEs (2.2)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ClassBalancedSampler(Sampler[int]):
    """Indices interleaved class by class: every batch holds about batch_size / 10 of each class.

    Each epoch every class contributes ceil(N / 10) indices, a fresh permutation of its images,
    cycled: small classes repeat a few images, large ones leave a few out. Each class's VAE then
    sees the same number of its own images per batch, as with the reimplementation's
    MergingSampler. The permutation is seeded from torch's global generator, like shuffling.
    """

    def __init__(self, labels: torch.Tensor, n_classes: int = 10) -> None:
        self.by_class = [torch.nonzero(labels == c).flatten() for c in range(n_classes)]
        missing = [c for c, index in enumerate(self.by_class) if len(index) == 0]
        if missing:
            raise ValueError(f"data.class_balanced=true needs every class; none of {missing}.")
        self.per_class = math.ceil(len(labels) / n_classes)

    def __len__(self) -> int:
        return self.per_class * len(self.by_class)

    def __iter__(self) -> Iterator[int]:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator().manual_seed(seed)
        columns = []
        for index in self.by_class:
            repeats = math.ceil(self.per_class / len(index))
            cycled = [
                index[torch.randperm(len(index), generator=generator)] for _ in range(repeats)
            ]
            columns.append(torch.cat(cycled)[: self.per_class])
        return iter(torch.stack(columns, 1).flatten().tolist())
