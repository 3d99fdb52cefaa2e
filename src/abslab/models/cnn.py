"""The paper's vanilla CNN and binary CNN."""

from __future__ import annotations

import torch

from abslab.models.base import Defense, GradientMode
from abslab.models.nets import binarize, vanilla_cnn
from abslab.models.pretrained import load_reference_cnn


class CNNDefense(Defense):
    """Vanilla CNN (abs_spec 3.1); with `binarize_input` the binary CNN (3.2).

    The binary CNN thresholds its input at 0.5 before the CNN; its input gradient is
    straight-through. `pretrained` loads the authors' weights: a directory means their
    `vanilla_cnn.net`, which is also what their binary CNN uses (their `binary_cnn.net`
    is never loaded by their code; pass its file path to use it).
    """

    def __init__(
        self,
        name: str = "cnn",
        binarize_input: bool = False,
        pretrained: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str = "onecycle",
        logit_scale: float = 1.0,
        confidence_level: float = 1_439_000.0,
    ) -> None:
        super().__init__(name, logit_scale, confidence_level, lr, weight_decay, scheduler)
        self.save_hyperparameters(logger=False)
        self.binarize_input = binarize_input
        self.net = vanilla_cnn()
        if pretrained is not None:
            self.pretrained = str(load_reference_cnn(self.net, pretrained, "vanilla_cnn.net"))

    @property
    def gradient(self) -> GradientMode:
        return "straight_through" if self.binarize_input else "exact"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 1, 28, 28) in [0, 1] -> logits (N, 10)."""
        return self.net(binarize(x) if self.binarize_input else x)
