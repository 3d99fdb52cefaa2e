"""A faithful reference of the authors' ABS inference, kept to measure abslab's against.

Structure as in their `abs_models` (inference.py, loss_functions.py, utils.py): ten separate
VAE modules, the bank searched with broadcast squared distances, then `n_iter` passes of a
Python loop over the ten classes with one small decoder call each, torch.optim.Adam on the
latents, and their sign-dropping `clip_to_sphere` (or the correct projection, to compare).
It is deliberately slow: it is the baseline of bench/abs_inference.py and of the tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from abslab.models.vae import DECODER_LAYERS, ENCODER_LAYERS


class ReferenceStack(nn.Module):
    """Their Encoder / Decoder: conv_i with bn_i + ELU after all but the last layer."""

    def __init__(self, layers: tuple[tuple[int, int, int, int], ...], transposed: bool) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.n_layers = len(layers)
        for i, (c_in, c_out, k, s) in enumerate(layers):
            self.add_module(f"conv_{i}", conv(c_in, c_out, k, stride=s))
            if i < len(layers) - 1:
                self.add_module(f"bn_{i}", nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_layers):
            x = getattr(self, f"conv_{i}")(x)
            if i < self.n_layers - 1:
                x = F.elu(getattr(self, f"bn_{i}")(x))
        return x


class ReferenceVAE(nn.Module):
    """One class's VAE with the authors' key names (Encoder.conv_0.weight, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.Encoder = ReferenceStack(ENCODER_LAYERS, transposed=False)
        self.Decoder = ReferenceStack(DECODER_LAYERS, transposed=True)


def load_reference_vaes(directory: str | Path) -> list[ReferenceVAE]:
    """ABS_0.net ... ABS_9.net as ten eval-mode modules (PyTorch 0.4 files: no BN counters)."""
    vaes = []
    for c in range(10):
        vae = ReferenceVAE()
        path = Path(directory) / f"ABS_{c}.net"
        vae.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=False)
        vaes.append(vae.eval())
    return vaes


def clip_to_sphere(
    z: torch.Tensor, radius: float, channel_dim: int, keep_sign: bool
) -> torch.Tensor:
    """Their utils.clip_to_sphere (keep_sign=False: the sign-dropping original)."""
    sq_norm = torch.sum(z**2, dim=channel_dim, keepdim=True).expand_as(z)
    mask = sq_norm > radius**2
    z = z.clone()
    if keep_sign:
        z[mask] = z[mask] / torch.sqrt(sq_norm[mask]) * radius
    else:
        z[mask] = torch.sqrt(z[mask] ** 2 / sq_norm[mask] * radius**2)
    return z


def elbos(rec: torch.Tensor, z: torch.Tensor, x: torch.Tensor, beta: float) -> torch.Tensor:
    """Their loss_functions.ELBOs: (sum (x - rec)^2 + beta * KL) / 784, keepdim shapes."""
    rec_loss = torch.sum((x - rec) ** 2, dim=(-1, -2, -3), keepdim=True)
    kld = -0.5 * torch.sum(1 - z**2 + math.log(1.0) - 1.0**2, dim=-3, keepdim=True)  # sig_q = 1
    return (rec_loss + beta * kld) / 784


class ReferenceABS:
    """Their ELBOVAE / ELBOVAE_binary forward: logits (B, 10) for x (B, 1, 28, 28)."""

    def __init__(
        self,
        vaes: list[ReferenceVAE],
        bank: torch.Tensor,
        n_iter: int = 50,
        lr: float = 0.05,
        clip: float = 5.0,
        beta: float = 1.0,
        keep_sign: bool = False,
        scalars: torch.Tensor | None = None,
        binary: bool = False,
    ) -> None:
        self.vaes, self.bank = vaes, bank
        self.n_iter, self.lr, self.clip, self.beta = n_iter, lr, clip, beta
        self.keep_sign, self.scalars, self.binary = keep_sign, scalars, binary
        with torch.no_grad():  # their GaussianSamples.get_images: decoded once, cached
            self.bank_images = torch.stack(
                [torch.sigmoid(v.Decoder(bank.view(-1, 8, 1, 1))) for v in vaes]
            )  # (10, S, 1, 28, 28)

    def best_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Their sample selection: all ELBOs by broadcasting, 8 images at a time."""
        n = len(self.bank)
        values = []
        with torch.no_grad():
            for part in x.split(8):
                values.append(
                    elbos(
                        self.bank_images.view(1, 10, n, 1, 28, 28),
                        self.bank.view(1, 1, n, 8, 1, 1),
                        part.view(len(part), 1, 1, 1, 28, 28),
                        self.beta,
                    )
                )
        index = torch.cat(values).view(len(x), 10, n).argmin(2)
        return self.bank[index].view(len(x), 10, 8, 1, 1)

    def gd_inference(self, z0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Their gd_inference_b: ELBOs (B, 10) after n_iter - 1 Adam steps."""
        with torch.enable_grad():
            z = z0.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=self.lr)
            for i in range(self.n_iter):
                values = []
                for j in range(10):
                    if i == self.n_iter - 1:
                        z = z.detach()
                    rec = torch.sigmoid(self.vaes[j].Decoder(z[:, j]))
                    values.append(elbos(rec, z[:, j], x, self.beta).view(len(x), 1))
                values = torch.cat(values, dim=1)
                if i < self.n_iter - 1:
                    loss = values.sum() - 8.0 / 784.0 / 2
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    z.data = clip_to_sphere(z.data, self.clip, 2, self.keep_sign)
        return values.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.binary:
            x = (x >= 0.5).to(x.dtype)
        results = []
        for part in x.split(500):  # their auto_batch(500)
            results.append(self.gd_inference(self.best_latents(part), part))
        values = torch.cat(results)
        if self.scalars is not None:
            values = values * self.scalars
        return -values
