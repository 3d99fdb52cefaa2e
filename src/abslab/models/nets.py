"""Plain nn.Modules of the paper's classifiers; the LightningModules that train them live beside."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class ConvNet(nn.Module):
    """Unpadded convolutions with BatchNorm + ELU after all but the last; the last maps to 1x1.

    The authors' CNNs (vanilla, binary, transfer) are all of this form (docs/paper.md §4.1, §4.5).
    Input (N, 1, 28, 28) -> logits (N, channels[-1]).
    """

    def __init__(
        self, channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int]
    ) -> None:
        super().__init__()
        if not len(channels) - 1 == len(kernels) == len(strides):
            raise ValueError("ConvNet needs one kernel size and one stride per layer.")
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, k, s)
            for c_in, c_out, k, s in zip(channels[:-1], channels[1:], kernels, strides)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels[1:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs[:-1], self.norms):
            x = F.elu(norm(conv(x)))
        return self.convs[-1](x).flatten(1)


def vanilla_cnn() -> ConvNet:
    """The paper's vanilla CNN: 249,228 parameters, logits from a 10x1x1 output."""
    return ConvNet([1, 20, 70, 256, 10], kernels=[5, 4, 3, 5], strides=[1, 2, 2, 1])


def transfer_cnn() -> ConvNet:
    """The authors' transfer substitute (docs/paper.md §4.5): 52,010 parameters, the vanilla CNN's
    layout with 32, 32, 64 channels."""
    return ConvNet([1, 32, 32, 64, 10], kernels=[5, 4, 3, 5], strides=[1, 2, 2, 1])


CNN_ARCHITECTURES = {"vanilla": vanilla_cnn, "transfer": transfer_cnn}


class MadryNet(nn.Module):
    """Madry et al.'s MNIST challenge network: two 5x5 'SAME' convs with max-pooling, FC 1024."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 1024)
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def binarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """x >= threshold -> 1, else 0 (as the authors' `binarize`), with a straight-through gradient.

    The forward value is exactly binary; the backward pass is the identity, since the true
    gradient (zero almost everywhere) would give gradient attacks nothing to follow.
    """
    hard = (x >= threshold).to(x.dtype)
    return x + (hard - x).detach()
