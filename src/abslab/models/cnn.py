"""The paper's vanilla CNN, binary CNN and the transfer substitute CNN."""

from __future__ import annotations

import torch

from abslab.models.base import Defense, GradientMode
from abslab.models.nets import CNN_ARCHITECTURES, binarize
from abslab.models.pretrained import load_reference_cnn


class CNNDefense(Defense):
    """Vanilla CNN (docs/paper.md §4.1); with `binarize_input` the binary CNN (§4.2);
    `architecture: transfer` the smaller substitute of the transfer attacks (3.5).

    The binary CNN thresholds its input at 0.5 before the CNN; its input gradient is
    straight-through. `pretrained` loads the authors' weights: a directory means their
    `<architecture>_cnn.net`, so the binary CNN uses `vanilla_cnn.net` as their code does
    (their `binary_cnn.net` is never loaded by it; pass its file path to use it).
    """

    def __init__(
        self,
        name: str = "cnn",
        binarize_input: bool = False,
        architecture: str = "vanilla",
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
        if architecture not in CNN_ARCHITECTURES:
            choices = ", ".join(CNN_ARCHITECTURES)
            raise ValueError(f"model.architecture={architecture!r}: choose one of {choices}.")
        self.net = CNN_ARCHITECTURES[architecture]()
        if pretrained is not None:
            file = f"{architecture}_cnn.net"
            self.pretrained = str(load_reference_cnn(self.net, pretrained, file))

    @property
    def gradient(self) -> GradientMode:
        return "straight_through" if self.binarize_input else "exact"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 1, 28, 28) in [0, 1] -> logits (N, 10)."""
        return self.net(binarize(x) if self.binarize_input else x)
