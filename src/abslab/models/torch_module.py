"""Bring your own defense: any importable torch nn.Module, attacked as abslab's own models are.

`python evaluate.py model=torch_module model.name=my_net model.module._target_=my_pkg.MyNet
model.weights=my_net.pt norm=l2` (conf/model/torch_module.yaml; docs/defenses.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from abslab.models.base import Defense, GradientMode
from abslab.models.pretrained import WeightsError, load_checked, load_untrusted

# What autograd on a module can give attacks ("envelope" is ABS's alone).
MODULE_GRADIENTS: tuple[GradientMode, ...] = ("exact", "straight_through", "none")
WEIGHT_FILES = (
    "a state dict of the module (torch.save(module.state_dict(), path)) or a Lightning/torch "
    "checkpoint holding one under 'state_dict'"
)


def load_module_weights(module: nn.Module, path: str | Path) -> None:
    """Copy the weights of file `path` into `module`: loaded with weights_only=True, every key
    and shape checked; a mismatch raises a WeightsError naming the file and the keys."""
    path = Path(path)
    source = f"model.weights={path}"
    if not path.is_file():
        raise WeightsError(f"{source}: no such file. Give {WEIGHT_FILES}.")
    state = load_untrusted(path, source, WEIGHT_FILES)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source} holds no state dict of tensors: give {WEIGHT_FILES}.")
    load_checked(module, state, source)


class TorchModuleDefense(Defense):
    """`module` (any nn.Module mapping images (N, 1, 28, 28) to logits (N, 10)) as a defense.

    abslab's pixels in [0, 1] are mapped linearly onto `input_range` before the module sees
    them. `weights`: a file for `load_module_weights`, or null to take the module as its
    constructor left it. `gradient` declares what autograd on the module gives attacks
    (`exact`, `straight_through` if the module binarizes with a straight-through gradient, or
    `none`: only score- and decision-based attacks, or the _ge attacks, run). `logit_scale` and
    `confidence_level` are the calibrated softmax's alpha and eta (0: the plain softmax). Never
    trained here: evaluate only.
    """

    needs_training = False

    def __init__(
        self,
        module: nn.Module,
        weights: str | None = None,
        name: str = "torch_module",
        input_range: Sequence[float] = (0.0, 1.0),
        gradient: GradientMode = "exact",
        logit_scale: float = 1.0,
        confidence_level: float = 0.0,
    ) -> None:
        super().__init__(name, logit_scale, confidence_level)
        self.save_hyperparameters(logger=False, ignore=["module"])
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"model.module built a {type(module).__name__}, not a torch nn.Module: its "
                "_target_ must be an nn.Module class or a function that returns one."
            )
        if gradient not in MODULE_GRADIENTS:
            raise ValueError(
                f"model.gradient={gradient!r}: choose one of {', '.join(MODULE_GRADIENTS)}."
            )
        if len(input_range) != 2 or not input_range[0] < input_range[1]:
            raise ValueError(
                f"model.input_range={list(input_range)}: give [low, high] with low < high."
            )
        self.module = module
        self.gradient = gradient
        self.low, self.high = float(input_range[0]), float(input_range[1])
        if weights is not None:
            load_module_weights(module, weights)
            self.pretrained = str(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 1, 28, 28) in [0, 1] -> the module's logits (N, 10) on x mapped to its range."""
        logits = self.module(self.low + (self.high - self.low) * x)
        if logits.shape != (len(x), 10):
            raise ValueError(
                f"model={self.name}: the module returned shape {tuple(logits.shape)} for "
                f"{len(x)} images; a defense gives logits (N, 10)."
            )
        return logits
