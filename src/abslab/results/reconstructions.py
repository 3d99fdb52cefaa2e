"""reconstructions.png: test digits beside their ten class reconstructions and scores."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure


def reconstruction_figure(
    x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, reconstructions: torch.Tensor
) -> Figure:
    """One row per image: the input, then G_c(z*_c) for c = 0..9 titled with logit_c.

    x (N, 1, 28, 28), y (N,), logits (N, 10), reconstructions (N, 10, 28, 28). The predicted
    class is framed green when right and red when wrong; the label is in the row title.
    """
    n = len(x)
    fig = Figure(figsize=(11 * 1.05, n * 1.25))  # no pyplot: no GUI backend, nothing to close
    axes = fig.subplots(n, 11, squeeze=False)
    predictions = logits.argmax(1)
    for i in range(n):
        axes[i, 0].imshow(x[i, 0].cpu(), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(f"input ({int(y[i])})", fontsize=8)
        for c in range(10):
            ax = axes[i, c + 1]
            ax.imshow(reconstructions[i, c].cpu(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{c}: {float(logits[i, c]):.4f}", fontsize=7)
            if c == int(predictions[i]):
                colour = "tab:green" if c == int(y[i]) else "tab:red"
                for spine in ax.spines.values():
                    spine.set(color=colour, linewidth=3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("ABS: input and class reconstructions G_c(z*_c); titles: logit_c = -ELBO_c")
    fig.tight_layout()
    return fig
