"""The command line shared by the benches that compare the published VAEs with abslab's ABS
checkpoints (abs_validation, abs_bn_statistics, abs_training_traces)."""

from __future__ import annotations

import argparse


def published_and_trained_parser(
    description: str, samples: int, samples_help: str
) -> argparse.ArgumentParser:
    """--ckpt (train.py checkpoints), --published (the authors' VAEs), --root (MNIST) and
    --samples (default `samples`): the inputs of abslab.models.abs.published_and_trained."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--ckpt", nargs="*", default=[], help="train.py checkpoints of model=abs")
    parser.add_argument("--published", default="../shared/data/reference_models/abs")
    parser.add_argument("--root", default="../shared/data/mnist")
    parser.add_argument("--samples", type=int, default=samples, help=samples_help)
    return parser
