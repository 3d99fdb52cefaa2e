"""How class-specific two ABS models' VAEs are: own-class against other-class bounds.

python -m abslab.tasks.abs_margins --ckpt checkpoints/abs.ckpt --samples 1000

ABS classifies by the lowest bound D_c(x) = min_z ||x - G_c(z)||^2 + beta/2 ||z||^2 (/784), so
what decides its accuracy (and its robustness) is how well each class's decoder explains its own
digits and how badly it explains the others. For the first N test images this runs the full
inference under both models (abslab's checkpoint and the published VAEs) and writes:
- abs_margins.png: per model the mean reconstruction error ||x - G_c(z*_c)||^2/784 of VAE c on
  digits of class y (a 10x10 matrix, own class on the diagonal), abslab's minus the published
  one, and the distribution of the margin D_best other - D_true per image (negative: wrong);
- abs_margins.csv: per image and model, the label, the ten bounds and the ten reconstruction
  errors, so the figure can be re-derived;
- abs_margins.md: the summary numbers, with command, commit and hardware, and the terms of the
  training objective (squared error, KL, posterior log-variance: one posterior sample per
  image, each digit through its own class's VAE), which say where on the rate-distortion
  trade-off each model's VAEs sit.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from abslab.data.mnist import first_test_images
from abslab.models.abs import ABSDefense, published_and_trained
from abslab.models.vae import pack_by_class, vae_loss_terms
from abslab.utils.run_io import command_line, git_commit, hardware


def bounds_and_errors(model: ABSDefense, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """x (N, 1, 28, 28) -> the ten bounds D_c (N, 10) and reconstruction errors (N, 10)."""
    with torch.no_grad():
        out = model.infer(x)
    errors = ((x - out.reconstructions) ** 2).flatten(2).sum(2) / x[0].numel()
    return (-out.logits).numpy(), errors.numpy()


def objective_terms(model: ABSDefense, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per image: the training objective's squared error and KL (beta = 1) on the images'
    own classes, and the mean posterior log-variance. x (N, 1, 28, 28), y (N,)."""
    packed, mask = pack_by_class(x, y)
    vaes = model.vaes.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        rec_error, kl = vae_loss_terms(vaes, packed, mask)
        log_var = vaes.encode(packed)[1].mean(2)
    return {
        "squared error": rec_error.item() / len(x),
        "KL": kl.item() / len(x),
        "ELBO (beta 1)": (rec_error + kl).item() / len(x),
        "posterior log-variance": ((log_var * mask).sum() / mask.sum()).item(),
    }


def margins(bounds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """D of the best other class minus D of the true class, per image (N,)."""
    own = bounds[np.arange(len(labels)), labels]
    others = bounds.copy()
    others[np.arange(len(labels)), labels] = np.inf
    return others.min(1) - own


def error_matrix(errors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean reconstruction error of VAE c (column) on digits of class y (row), (10, 10)."""
    return np.stack([errors[labels == y].mean(0) for y in range(10)])


def figure(results: dict[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray) -> Figure:
    """The error matrix of each model, their difference (second minus first), the margins."""
    matrices = {name: error_matrix(errors, labels) for name, (_, errors) in results.items()}
    fig = Figure(figsize=(5 * len(results) + 11, 4.6))
    axes = fig.subplots(1, len(results) + 2)
    top = np.nanmax(list(matrices.values()))
    first, *_, last = matrices
    difference = matrices[last] - matrices[first]
    spread = np.nanmax(np.abs(difference))
    panels = [
        *[
            (f"{name}: mean ||x - G_c(z*)||^2 / 784", m, "viridis", 0, top)
            for name, m in matrices.items()
        ],
        (f"{last} - {first}", difference, "coolwarm", -spread, spread),
    ]
    for ax, (title, matrix, cmap, low, high) in zip(axes, panels):
        image = ax.imshow(matrix, cmap=cmap, vmin=low, vmax=high)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("VAE of class c")
        ax.set_ylabel("digits of class y")
        ax.set_xticks(range(10))
        ax.set_yticks(range(10))
        fig.colorbar(image, ax=ax, fraction=0.046)
    ax = axes[-1]
    every = np.concatenate([margins(b, labels) for b, _ in results.values()])
    edges = np.linspace(min(every.min(), 0), np.quantile(every, 0.995), 60)
    for name, (bounds, _) in results.items():
        m = margins(bounds, labels)
        ax.hist(
            m,
            bins=edges,
            histtype="step",
            linewidth=1.5,
            label=f"{name} (error {np.mean(m < 0):.1%})",
        )
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("margin: D_best other - D_true (per image)")
    ax.set_ylabel("test images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary_lines(
    results: dict[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray
) -> list[str]:
    lines = [
        "| model | error | median margin | mean own-class rec. error | mean best other-class "
        "rec. error | mean own-class bound | mean best other-class bound |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = np.arange(len(labels))
    for name, (bounds, errors) in results.items():
        m = margins(bounds, labels)
        other_errors = errors.copy()
        other_errors[rows, labels] = np.inf
        own_bound = bounds[rows, labels]
        lines.append(
            f"| {name} | {np.mean(m < 0):.2%} | {np.median(m):.4f} | "
            f"{errors[rows, labels].mean():.4f} | {other_errors.min(1).mean():.4f} | "
            f"{own_bound.mean():.4f} | {(own_bound + m).mean():.4f} |"
        )
    return lines


def write_rows(
    path: Path, results: dict[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray
) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["index", "model", "label"]
            + [f"bound_{c}" for c in range(10)]
            + [f"rec_error_{c}" for c in range(10)]
        )
        for name, (bounds, errors) in results.items():
            for i, label in enumerate(labels):
                writer.writerow(
                    [i, name, int(label)]
                    + [f"{v:.6f}" for v in bounds[i]]
                    + [f"{v:.6f}" for v in errors[i]]
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", required=True, help="abslab's ABS checkpoint (train.py)")
    parser.add_argument("--pretrained", default="../shared/data/reference_models/abs")
    parser.add_argument("--root", default="../shared/data/mnist")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", default="results/abs_margins")
    args = parser.parse_args()

    torch.set_flush_denormal(True)
    x, y, _ = first_test_images(args.root, args.samples)
    models = published_and_trained(args.pretrained, [args.ckpt])
    models["abslab"] = models.pop(args.ckpt)
    results = {name: bounds_and_errors(model, x) for name, model in models.items()}
    terms = {name: objective_terms(model, x, y) for name, model in models.items()}
    labels = y.numpy()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure(results, labels).savefig(out.with_suffix(".png"), dpi=110)
    write_rows(out.with_suffix(".csv"), results, labels)
    text = "\n".join(
        [
            f"Command: `{command_line()}`; commit {git_commit()}; {hardware()}; the first "
            f"{args.samples} test images; full inference (default settings) under each model. "
            "Bounds and errors are per pixel (/784).",
            "",
            *summary_lines(results, labels),
            "",
            "The training objective on the same images, per image:",
            "",
            "| model | " + " | ".join(terms["abslab"]) + " |",
            "|---|" + "---|" * len(terms["abslab"]),
            *[
                f"| {name} | " + " | ".join(f"{v:.2f}" for v in values.values()) + " |"
                for name, values in terms.items()
            ],
        ]
    )
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
