"""Loading the authors' published weights (PyTorch 0.4 state dicts) into abslab's networks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from abslab.models.nets import ConvNet

# Their CNN key layout `conv_i.*` / `bn_i.*` -> ConvNet's `convs.i.*` / `norms.i.*`.
_REFERENCE_CNN_KEY = re.compile(r"^(conv|bn)_(\d+)\.(.+)$")
# Their VAE key layout `Encoder.conv_i.*` -> TenVAEs' `encoder.convs.i.*`, classes stacked.
_REFERENCE_ABS_KEY = re.compile(r"^(Encoder|Decoder)\.(conv|bn)_(\d+)\.(.+)$")


# What load_untrusted's message quotes of torch's refusal: the object a pickle would build.
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_PUBLISHED_FILES = (
    "one of the authors' published weight files (vanilla_cnn.net, ABS_0.net, ...; "
    "model.pretrained= takes their folder)"
)


class WeightsError(RuntimeError):
    """A weight file is missing or does not fit the model; the message names the file and fix."""


def load_untrusted(path: Path, name: str, expected: str) -> Any:
    """torch.load(weights_only=True) of a file a user named (`name`: how the message calls it,
    e.g. "ckpt=PATH"). A file that is no PyTorch file of tensors (text, a truncated copy, a pickle
    of Python objects) raises a WeightsError that names it and `expected`, not torch's advice to
    load it with weights_only=False (which would run code from the file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        found = _UNSUPPORTED_GLOBAL.search(str(err))
        what = (
            f"it holds a Python object ({found.group(1)}), not only tensors"
            if found is not None
            else "its bytes are no complete PyTorch file (a text file, a cut-off copy, or "
            f"another format: {type(err).__name__})"
        )
        raise WeightsError(
            f"{name} is not a loadable checkpoint: {what}. Expected {expected}."
        ) from None  # torch's message would advise weights_only=False


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from an untrusted file, loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"No weight file at {path.resolve()}. Check the path.")
    state = load_untrusted(path, str(path), _PUBLISHED_FILES)
    if not isinstance(state, dict):
        raise WeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict: give the file of the "
            "published weights (e.g. vanilla_cnn.net) or the directory that holds it."
        )
    return state


def convert_reference_cnn(
    state: dict[str, torch.Tensor], source: str | Path
) -> dict[str, torch.Tensor]:
    """Rename the authors' CNN keys (conv_0.weight, bn_0.running_mean, ...) to ConvNet's."""
    converted = {}
    for key, value in state.items():
        match = _REFERENCE_CNN_KEY.match(key)
        if match is None:
            raise WeightsError(
                f"{source} has key {key!r}, which is not in the authors' CNN layout "
                "(conv_i.*, bn_i.*): it is not one of their CNN weight files."
            )
        kind, index, rest = match.groups()
        converted[f"{'convs' if kind == 'conv' else 'norms'}.{index}.{rest}"] = value
    return converted


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy `state` into `module` after checking every key and shape.

    BatchNorm's `num_batches_tracked` may be absent (PyTorch 0.4 files lack it); nothing else may.
    """
    expected = module.state_dict()
    required = {k for k in expected if not k.endswith("num_batches_tracked")}
    missing = sorted(required - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise WeightsError(
            f"{source} does not fit {type(module).__name__}: missing {missing}, "
            f"unexpected {unexpected}, shape mismatches {mismatched}."
        )
    module.load_state_dict(state, strict=False)


def load_reference_cnn(net: ConvNet, path: str | Path, default_file: str) -> Path:
    """Load the authors' CNN weights into `net`; a directory means `default_file` inside it."""
    path = Path(path)
    if path.is_dir():
        path = path / default_file
    load_checked(net, convert_reference_cnn(load_state_dict_file(path), path), path)
    return path


def load_reference_abs(directory: str | Path) -> dict[str, torch.Tensor]:
    """The authors' ten VAE files ABS_0.net ... ABS_9.net as one TenVAEs state dict."""
    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsError(
            f"model.pretrained={directory}: not a directory. Give the folder that holds "
            "ABS_0.net ... ABS_9.net (e.g. ../shared/data/reference_models/abs)."
        )
    states = [load_state_dict_file(directory / f"ABS_{c}.net") for c in range(10)]
    return stack_reference_vaes(states, directory)


def stack_reference_vaes(
    states: list[dict[str, torch.Tensor]], source: str | Path
) -> dict[str, torch.Tensor]:
    """Ten per-class VAE state dicts in the authors' layout -> one TenVAEs state dict.

    Their `Encoder.conv_i.*` / `Decoder.bn_i.*` tensors are concatenated along dimension 0 in
    class order: class c becomes channel group c of the grouped layers. BatchNorm's
    `num_batches_tracked` counters are dropped (they are not part of the function).
    """
    converted = {}
    for key in states[0]:
        match = _REFERENCE_ABS_KEY.match(key)
        if match is None:
            raise WeightsError(
                f"{source} has key {key!r}, not in the authors' VAE layout "
                "(Encoder.conv_i.*, Encoder.bn_i.*, Decoder.conv_i.*, Decoder.bn_i.*)."
            )
        part, kind, index, rest = match.groups()
        if rest == "num_batches_tracked":
            continue
        if any(key not in state for state in states):
            raise WeightsError(f"{source}: not every class's VAE file has {key!r}.")
        name = f"{part.lower()}.{'convs' if kind == 'conv' else 'norms'}.{index}.{rest}"
        converted[name] = torch.cat([state[key] for state in states])
    return converted
