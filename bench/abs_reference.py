"""A faithful reference of the authors' ABS inference, kept to measure abslab's against.

Structure as in their `abs_models` (inference.py, loss_functions.py, utils.py): ten separate
VAE modules, the bank searched per class with one matrix product (their `ELBOs2`), then
`n_iter` passes of a Python loop over the ten classes with one small decoder call each,
torch.optim.Adam on the latents (weight gradients computed too, as theirs do), and their
sign-dropping `clip_to_sphere` (or the correct projection, to compare). It is what the tests
compare abslab's inference with; bench/abs_inference.py times it beside the authors' own code.
(Until commit 8734a88 its bank search broadcast (x - G)^2 over all 8,000 images, which made it
several times slower than the code it mirrors; see results/abs_inference.md.)
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
        """Their sample selection (inference.py with loss_functions.ELBOs2): per class, all
        squared distances as ||x||^2 + ||G||^2 - 2 x.G (one matrix product), for the whole batch."""
        n = len(self.bank)
        flat = x.reshape(len(x), -1)
        kl = 0.5 * (self.bank**2).sum(1) / 784  # their KLD with sig_q = 1, per latent
        values = []
        with torch.no_grad():
            for images in self.bank_images:  # (S, 1, 28, 28): one class
                y = images.reshape(n, -1)
                x2 = torch.norm(flat, p=2, dim=-1, keepdim=True).pow(2)
                y2 = torch.norm(y, p=2, dim=-1, keepdim=True).pow(2)
                values.append((x2 + y2.t() - 2 * torch.mm(flat, y.t())) / 784 + self.beta * kl)
        index = torch.stack(values, dim=1).argmin(2)
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
        latents = self.best_latents(x)  # the whole batch, as theirs
        values = torch.cat(  # their auto_batch(1000) around the latent optimisation
            [self.gd_inference(z, part) for z, part in zip(latents.split(1000), x.split(1000))]
        )
        if self.scalars is not None:
            values = values * self.scalars
        return -values
