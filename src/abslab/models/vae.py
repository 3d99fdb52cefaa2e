"""Ten class-conditional VAEs as one grouped network (docs/paper.md §3.1).

Channel group c of every layer is class c's VAE: grouped convolutions run all ten in one call,
so there is no Python loop over classes, in training or in inference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

N_CLASSES = 10
LATENT_DIM = 8
IMAGE_PIXELS = 784

# (in, out, kernel, stride) per VAE, as the authors' nets (no padding anywhere).
ENCODER_LAYERS = ((1, 32, 5, 1), (32, 32, 4, 2), (32, 64, 3, 2), (64, 2 * LATENT_DIM, 5, 1))
DECODER_LAYERS = ((LATENT_DIM, 32, 4, 1), (32, 16, 5, 2), (16, 16, 5, 2), (16, 1, 4, 1))


class GroupedStack(nn.Module):
    """Grouped (transposed) convolutions with BatchNorm + ELU between; the last layer is linear.

    `convs.i` / `norms.i` hold all ten classes' layer i, class c in channel group c: the authors'
    per-class `conv_i` / `bn_i` concatenated along dimension 0.
    """

    def __init__(self, layers: tuple[tuple[int, int, int, int], ...], transposed: bool) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        g = N_CLASSES
        self.convs = nn.ModuleList(
            conv(g * c_in, g * c_out, k, stride=s, groups=g) for c_in, c_out, k, s in layers
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(g * c_out) for _, c_out, _, _ in layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs[:-1], self.norms):
            x = F.elu(norm(conv(x)))
        return self.convs[-1](x)


class TenVAEs(nn.Module):
    """Ten VAEs with latent dimension 8; 853,610 parameters, 85,361 per class."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = GroupedStack(ENCODER_LAYERS, transposed=False)
        self.decoder = GroupedStack(DECODER_LAYERS, transposed=True)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 10, 28, 28), channel c for VAE c -> mean and log-variance, each (B, 10, 8)."""
        out = self.encoder(x).view(len(x), N_CLASSES, 2 * LATENT_DIM)
        return out[..., :LATENT_DIM], out[..., LATENT_DIM:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, 10, 8), z[:, c] for VAE c -> images (B, 10, 28, 28) in [0, 1]."""
        return torch.sigmoid(self.decoder(z.reshape(len(z), N_CLASSES * LATENT_DIM, 1, 1)))


def pack_by_class(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrange a batch so that VAE c sees only images of class c.

    x (N, 1, 28, 28), y (N,) -> packed (K, 10, 28, 28) with K the largest class count, and a
    mask (K, 10) of real entries. Classes with fewer than K images fill their column with
    repeats of their own images (masked out of the loss), so each VAE's BatchNorm statistics
    come from its own class only; a class absent from the batch gets zeros, masked too.
    """
    counts = torch.bincount(y, minlength=N_CLASSES)
    rows = int(counts.max())
    order = torch.argsort(y, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    row = torch.arange(rows, device=y.device)[:, None]
    offset = torch.randperm(rows, generator=generator).to(y.device)[:, None]
    # real rows first, then repeats drawn by a random offset (pure cycling would favour the first)
    slot = torch.where(row < counts, row, offset) % counts.clamp_min(1)
    index = order[(starts + slot).clamp_max(len(y) - 1)]
    mask = (row < counts).to(x.dtype)
    packed = x.reshape(len(x), -1)[index] * (counts > 0).to(x.dtype)[None, :, None]
    return packed.view(rows, N_CLASSES, 28, 28), mask


def vae_loss_terms(
    vaes: TenVAEs, packed: torch.Tensor, mask: torch.Tensor, entropy_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of each VAE's squared-error ELBO on its own class, summed over real entries.

    packed (K, 10, 28, 28), mask (K, 10) -> (squared reconstruction error, KL to N(0, I));
    the co-author's reimplementation trains on (error + beta * KL) / batch size.
    KL = 1/2 sum(mean^2 + var - 1 - entropy_weight * log var): 1 is the KL; 0.5 is the authors'
    `loss_functions.KLD(mean, sig_q=std)`, whose log(sig_q) is half of log var
    (docs/paper.md §3.2).
    """
    mean, log_var = vaes.encode(packed)
    z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
    rec = vaes.decode(z)
    rec_error = ((rec - packed) ** 2).sum((2, 3))
    kl = 0.5 * (mean**2 + log_var.exp() - 1 - entropy_weight * log_var).sum(2)
    return (rec_error * mask).sum(), (kl * mask).sum()
