"""Nearest-neighbour inference speed: abslab's batched classifier against a per-image loop;
with --attack-samples, also the exact attacks (conf/attack/nn_exact_<norm>.yaml) through the
harness on the first test images: verified distances, exact/upper-bound notes, seconds.

python -m bench.nearest_neighbor --root ../shared/data/mnist --samples 10000 --reference-samples 500
python -m bench.nearest_neighbor --root ../shared/data/mnist --samples 100 --reference-samples 10 \
    --attack-samples 100 --attack-norms l2 linf
Writes results/nearest_neighbor.md (hardware, commit, sample counts) and prints it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from abslab.attacks.harness import run_attack
from abslab.attacks.suite import instantiate_attack
from abslab.data.mnist import MNISTDataModule
from abslab.models.nearest_neighbor import NearestNeighborDefense
from abslab.utils.run_io import command_line, git_commit, hardware
from bench.configs import attack_config


def per_image_reference(refs: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The direct reading of the definition: one image at a time, all 60,000 distances."""
    logits = torch.empty(len(x), 10)
    for i, image in enumerate(x.reshape(len(x), -1)):
        distances = (refs - image).pow(2).sum(1).sqrt()
        for c in range(10):
            logits[i, c] = -distances[labels == c].min()
    return logits


def exact_attack_report(
    model: NearestNeighborDefense, x: torch.Tensor, y: torch.Tensor, norms: list[str]
) -> str:
    """The exact attacks on x (N, 1, 28, 28) through the harness (which re-verifies every
    adversarial with the full 1-NN): a markdown section."""
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
    lines = [
        f"## Exact attacks (conf/attack/nn_exact_<norm>.yaml), first {len(x)} test images\n",
        "| norm | median | first three | exact | upper bound | other notes | s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for norm in norms:
        name = f"nn_exact_{norm}"
        attack = instantiate_attack(name, attack_config(name))
        out = run_attack(attack, model, x, y, clean_pred, seed=0)
        attacked = clean_pred == y
        notes = [note for note, hit in zip(out.note, attacked.tolist(), strict=True) if hit]
        first = ", ".join(f"{d:.3f}" for d in out.distance[:3].tolist())
        exact, upper = notes.count("exact"), notes.count("upper bound")
        seconds = out.seconds[attacked].mean().item()
        lines.append(
            f"| {norm} | {out.distance.median().item():.3f} | {first} | {exact} | {upper} "
            f"| {len(notes) - exact - upper} | {seconds:.2f} |"
        )
    return "\n".join(lines) + (
        "\n\nDistances are the harness's (0: misclassified clean; inf: nothing verified). "
        "Seconds per attacked image for one batch of all of them (the reference set is converted "
        "once per batch).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--reference-samples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", default="results/nearest_neighbor.md")
    parser.add_argument("--attack-samples", type=int, default=0, help="0: no attack section")
    parser.add_argument("--attack-norms", nargs="+", default=["l2"], choices=["l2", "linf"])
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
    if args.attack_samples:
        n = args.attack_samples
        attack_data = MNISTDataModule(root=args.root, download=False, test_samples=n)
        attack_data.setup("test")
        x_attack, y_attack, _ = attack_data.test_set.tensors
        report += "\n" + exact_attack_report(model, x_attack, y_attack, args.attack_norms)
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
