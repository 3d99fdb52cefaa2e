"""Whose images set the ABS VAEs' BatchNorm statistics: their own class's, or all classes'?

python -m bench.abs_bn_statistics [--ckpt CKPT ...] [--samples 4000]

The co-author's reimplementation runs every VAE on the whole batch and masks the loss to its
own class, so its BatchNorm statistics would mix all ten classes; abslab's training packs each
VAE's own class only (abslab.models.vae.pack_by_class). The stored running statistics tell which
one a set of weights was trained with: for the first encoder layer (the only one whose input
does not depend on the weights below it), compare the stored running mean and variance of each
live channel (running variance > 1e-2; many of the published channels are dead) with the
statistics of the layer's outputs on the first N training images of the VAE's own class and of
all classes. Reported per weights: the mean over live channels and VAEs of |mean - stored
mean| / stored std, and of |log(variance / stored variance)|. The smaller pair names the data
the weights were trained on (augmentation keeps neither at zero).
"""

from __future__ import annotations

import torch

from abslab.data.mnist import load_mnist
from abslab.models.abs import ABSDefense, published_and_trained
from abslab.models.vae import N_CLASSES
from bench.abs_cli import published_and_trained_parser

LIVE_VARIANCE = 1e-2


def first_layer_mismatch(model: ABSDefense, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """x (N, 1, 28, 28), y (N,) -> the two mismatches (own class, all classes) of mean and
    variance, in the units of the docstring."""
    conv, norm = model.vaes.encoder.convs[0], model.vaes.encoder.norms[0]
    with torch.no_grad():
        h = conv(x.expand(-1, N_CLASSES, -1, -1))
    h = h.view(len(x), N_CLASSES, -1, h.shape[-2] * h.shape[-1])  # (N, 10, C, pixels)
    stored_mean = norm.running_mean.view(N_CLASSES, -1)
    stored_var = norm.running_var.view(N_CLASSES, -1)
    sums = {"mean, own": 0.0, "mean, all": 0.0, "variance, own": 0.0, "variance, all": 0.0}
    for c in range(N_CLASSES):
        live = stored_var[c] > LIVE_VARIANCE
        std = stored_var[c].sqrt()
        for label, outputs in (("own", h[y == c, c]), ("all", h[:, c])):
            mean, var = outputs.mean((0, 2)), outputs.var((0, 2))
            sums[f"mean, {label}"] += ((mean - stored_mean[c]).abs() / std)[live].mean().item()
            sums[f"variance, {label}"] += (var / stored_var[c]).log().abs()[live].mean().item()
    return {key: value / N_CLASSES for key, value in sums.items()}


def main() -> None:
    args = published_and_trained_parser(
        __doc__.splitlines()[0], 4000, "first N training images"
    ).parse_args()
    data = load_mnist(args.root)
    x = torch.from_numpy(data["train_images"][: args.samples]).float().div(255)[:, None]
    y = torch.from_numpy(data["train_labels"][: args.samples]).long()
    models = published_and_trained(args.published, args.ckpt)
    print(f"First encoder layer, {args.samples} training images; mismatch own / all classes:")
    for name, model in models.items():
        m = first_layer_mismatch(model, x, y)
        print(
            f"- {name}: mean {m['mean, own']:.3f} / {m['mean, all']:.3f} stored std, "
            f"variance {m['variance, own']:.3f} / {m['variance, all']:.3f} |log ratio|"
        )


if __name__ == "__main__":
    main()
