"""Nearest-neighbour inference speed: abslab's batched classifier against a per-image loop.

python bench/nearest_neighbor.py --root ../shared/data/mnist --samples 10000 --reference-samples 500
Writes results/nearest_neighbor.md (hardware, commit, sample counts) and prints it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from abslab.data.mnist import MNISTDataModule
from abslab.models.nearest_neighbor import NearestNeighborDefense
from abslab.utils.run_io import command_line, git_commit, hardware


def per_image_reference(refs: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The direct reading of the definition: one image at a time, all 60,000 distances."""
    logits = torch.empty(len(x), 10)
    for i, image in enumerate(x.reshape(len(x), -1)):
        distances = (refs - image).pow(2).sum(1).sqrt()
        for c in range(10):
            logits[i, c] = -distances[labels == c].min()
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--reference-samples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", default="results/nearest_neighbor.md")
    args = parser.parse_args()

    data = MNISTDataModule(root=args.root, download=False, test_samples=args.samples)
    data.setup("test")
    x, y, _ = data.test_set.tensors
    refs, labels = data.reference_set()
    model = NearestNeighborDefense()
    start = time.perf_counter()
    model.fit_reference(refs, labels)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        ours = torch.cat([model(batch) for batch in x.split(args.batch_size)])
    ours_s = time.perf_counter() - start

    n_ref = min(args.reference_samples, args.samples)
    flat_refs = refs.reshape(len(refs), -1)
    start = time.perf_counter()
    theirs = per_image_reference(flat_refs, labels, x[:n_ref])
    ref_s = time.perf_counter() - start

    ours_rate, ref_rate = len(x) / ours_s, n_ref / ref_s
    agreement = (ours[:n_ref].argmax(1) == theirs.argmax(1)).float().mean().item()
    max_diff = (ours[:n_ref] - theirs).abs().max().item()
    accuracy = (ours.argmax(1) == y).float().mean().item()
    report = f"""# Nearest-neighbour inference speed

Command: `{command_line()}`
Commit: {git_commit()}; hardware: {hardware()}.
Test images: the first {len(x)} (the per-image reference: the first {n_ref}); 60,000 references.

| implementation | images/s | seconds | speed-up |
|---|---|---|---|
| per-image loop (reference) | {ref_rate:.1f} | {ref_s:.2f} for {n_ref} | 1.0x |
| abslab batched (batch {args.batch_size}) | {ours_rate:.1f} | {ours_s:.2f} for {len(x)} \
| {ours_rate / ref_rate:.1f}x |

Indexing the references (sort by class, squared norms) took {fit_s:.2f} s once.

Predictions agree on {100 * agreement:.2f}% of the {n_ref} compared images; largest logit
difference {max_diff:.2e}. Accuracy of the batched classifier on its {len(x)} images:
{100 * accuracy:.2f}%.
"""
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
