"""Per-image agreement of abslab's ABS with the authors' inference, on published weights.

python -m bench.abs_agreement --root ../shared/data/mnist --device cuda --samples 10000

For ABS and binary ABS, runs the reference (bench/abs_reference.py: the authors' structure and
their sign-dropping clip) and abslab with both clip modes on the first N test images. Writes
per-image predictions and top-two logit gaps to results/abs_agreement.csv, and the accuracies,
agreement rates and every disagreement (with the reference's own gap between its two best
classes, which says whether float order can flip it) to results/abs_agreement.md.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from tqdm import tqdm

from abslab.data.mnist import first_test_images
from abslab.models.abs import PUBLISHED_CLASS_SCALARS, ABSDefense
from abslab.utils.run_io import command_line, git_commit, hardware
from bench.abs_reference import ReferenceABS, load_reference_vaes


def top_gap(logits: torch.Tensor) -> torch.Tensor:
    """Gap between the best and second-best logit, (B,)."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def classify(fn, x: torch.Tensor, batch: int, label: str) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(part).cpu() for part in tqdm(x.split(batch), desc=label)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data")
    parser.add_argument("--weights", default="../shared/data/reference_models/abs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", default="results/abs_agreement")
    args = parser.parse_args()

    torch.set_flush_denormal(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    x, y, index = first_test_images(args.root, args.samples)
    x = x.to(device)
    vaes = [vae.to(device) for vae in load_reference_vaes(args.weights)]
    rows = {"index": index.tolist(), "label": y.tolist()}
    report = []
    for binary in (False, True):
        name = "binary_abs" if binary else "abs"
        scalars = PUBLISHED_CLASS_SCALARS if binary else None
        models = {
            mode: ABSDefense(
                pretrained=args.weights,
                clip_mode=mode,
                binarize_input=binary,
                class_scalars=scalars,
            )
            .to(device)
            .eval()
            for mode in ("authors", "project")
        }
        reference = ReferenceABS(
            vaes,
            models["authors"].bank_latents,
            binary=binary,
            scalars=None if scalars is None else torch.tensor(scalars, device=device),
        )
        ref = classify(reference, x, args.batch_size, f"{name} reference")
        ours = {
            mode: classify(m, x, args.batch_size, f"{name} abslab {mode}")
            for mode, m in models.items()
        }
        ref_pred = ref.argmax(1)
        rows[f"{name}_reference"] = ref_pred.tolist()
        rows[f"{name}_reference_gap"] = [f"{g:.3e}" for g in top_gap(ref).tolist()]
        for mode, logits in ours.items():
            rows[f"{name}_abslab_{mode}"] = logits.argmax(1).tolist()
        max_diff = (ours["authors"] - ref).abs().max().item()
        report += [
            f"### {name}",
            "",
            "| inference | accuracy | agreement with the reference |",
            "|---|---|---|",
            f"| reference (their structure and clip) | {(ref_pred == y).float().mean():.4f} | 1 |",
        ]
        for mode, logits in ours.items():
            pred = logits.argmax(1)
            report.append(
                f"| abslab, clip_mode={mode} | {(pred == y).float().mean():.4f} | "
                f"{(pred == ref_pred).float().mean():.4f} |"
            )
        report += [
            "",
            f"Largest logit difference, abslab (their clip) vs reference: {max_diff:.2e}.",
            "",
        ]
        gaps = top_gap(ref)
        for mode, logits in ours.items():
            differ = (logits.argmax(1) != ref_pred).nonzero().flatten()
            for i in differ.tolist():
                report.append(
                    f"- clip_mode={mode}: test image {int(index[i])} (label {int(y[i])}): "
                    f"reference {int(ref_pred[i])}, abslab {int(logits[i].argmax())}; the "
                    f"reference's gap between its two best classes is {float(gaps[i]):.2e}; "
                    f"abslab's logits differ by up to {(logits[i] - ref[i]).abs().max():.2e}."
                )
        report.append("")
    out = Path(args.out)
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows)
        writer.writerows(zip(*rows.values()))
    header = [
        "# ABS on published weights: agreement with the authors' inference",
        "",
        f"Command: `{command_line()}`; commit {git_commit()}; {hardware()}; first {len(y)} test "
        "images; fp32 (TF32 off), denormals flushed. Per-image predictions: "
        f"`{out.with_suffix('.csv').name}`.",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(header + report) + "\n")
    print("\n".join(header + report))


if __name__ == "__main__":
    main()
