"""Does validation with the bank search alone rank ABS models as the full inference does?

python -m bench.abs_validation [--ckpt CKPT ...] [--samples 1000]

Training validates with `model.val_n_iter=0`: the best of the 8,000 decoded bank latents per
class, no Adam steps, the reimplementation's per-epoch check and 50x cheaper than the full
inference. That ranks VAEs by how well the prior's samples cover their class. A VAE whose
posteriors are narrow (trained with a small `model.train_entropy_weight`) decodes the bank's
N(0, I) draws worse, yet its optimised latents may fit as well as any: the bank search alone
would rank it low for the wrong reason. For the published VAEs and each train.py checkpoint this
prints the accuracy on the first N images of the validation split (data defaults: 5,000 images,
split seed 0) with the bank search alone and with the full inference.
"""

from __future__ import annotations

import time

from abslab.data.mnist import MNISTDataModule
from abslab.models.abs import published_and_trained
from abslab.models.abs_inference import InferenceSettings
from bench.abs_cli import published_and_trained_parser

BANK_ONLY = InferenceSettings(n_iter=0)


def main() -> None:
    args = published_and_trained_parser(
        __doc__.splitlines()[0], 1000, "first N validation images"
    ).parse_args()
    data = MNISTDataModule(root=args.root, download=False)
    data.setup()
    x, y, _ = data.val_set[: args.samples]
    print(f"First {len(y)} validation images: accuracy with the bank search alone / full inference")
    for name, model in published_and_trained(args.published, args.ckpt).items():
        start = time.perf_counter()
        bank = (model.infer(x, BANK_ONLY).logits.argmax(1) == y).float().mean().item()
        full = (model.infer(x).logits.argmax(1) == y).float().mean().item()
        print(f"- {name}: {bank:.2%} / {full:.2%} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
