"""What the published ABS VAEs' parameters say about how they were trained, against abslab's.

python -m bench.abs_training_traces [--ckpt CKPT ...] [--samples 3000]

The authors published weights but no training code (docs/paper.md §3.2), so two traces of
their training are read off the weights:

1. **Length.** Convolutions followed by BatchNorm are scale-invariant: Adam without weight
   decay makes their weights' norm grow with the number of steps (about as the square root of
   the steps times the learning rate). The mean |w| of each layer, against abslab's runs with
   known step counts (`num_batches_tracked`), brackets how long the published VAEs trained.
2. **Data.** The training objective (squared-error ELBO, beta 1, each digit through its own
   class's VAE, abslab.tasks.abs_margins.objective_terms) on the first N images of abslab's
   training split, of its validation split (held out from abslab's runs) and of the test set.
   A model that saw the validation images in training scores them like the training images.
"""

from __future__ import annotations

import torch

from abslab.data.mnist import MNISTDataModule
from abslab.models.abs import ABSDefense, published_and_trained
from abslab.tasks.abs_margins import objective_terms
from bench.abs_cli import published_and_trained_parser


def weight_scales(model: ABSDefense) -> dict[str, float]:
    """Mean |w| of every convolution weight of the ten VAEs, by layer name."""
    return {
        name.removeprefix("vaes.").removesuffix(".weight"): param.abs().mean().item()
        for name, param in model.named_parameters()
        if "convs" in name and name.endswith(".weight")
    }


def steps(model: ABSDefense) -> str:
    """Optimiser steps stored by BatchNorm (`num_batches_tracked`); unknown for the published."""
    tracked = int(model.vaes.decoder.norms[0].num_batches_tracked)
    return str(tracked) if tracked else "not stored"


def main() -> None:
    args = published_and_trained_parser(
        __doc__.splitlines()[0], 3000, "first N images of each split"
    ).parse_args()
    torch.set_flush_denormal(True)

    data = MNISTDataModule(root=args.root, download=False)
    data.setup("fit")
    data.setup("test")
    splits = {
        "train": data.train_set.tensors,
        "validation": data.val_set.tensors,
        "test": data.test_set.tensors,
    }
    models = published_and_trained(args.published, args.ckpt)

    scales = {name: weight_scales(model) for name, model in models.items()}
    layers = list(scales["published"])
    print("Mean |w| of the convolution weights (ten VAEs together):\n")
    print("| weights | steps | " + " | ".join(layers) + " |")
    print("|---|---|" + "---|" * len(layers))
    for name, model in models.items():
        cells = " | ".join(f"{scales[name][layer]:.4f}" for layer in layers)
        print(f"| {name} | {steps(model)} | {cells} |")

    print(
        f"\nELBO per image (beta 1, own class's VAE), first {args.samples} images of each split:\n"
    )
    print("| weights | " + " | ".join(splits) + " |")
    print("|---|" + "---|" * len(splits))
    for name, model in models.items():
        n = args.samples
        elbos = [
            objective_terms(model, x[:n], y[:n])["ELBO (beta 1)"] for x, y, _ in splits.values()
        ]
        cells = [f"{elbo:.2f}" for elbo in elbos]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
