"""ABS inference (docs/paper.md §3.3), batched over images and classes with no Python loop.

The class score is the ELBO bound min_z (||x - G_c(z)||^2 + beta/2 ||z||^2) / 784, found as the
authors' code finds it: the best of a fixed latent bank per class, then Adam in latent space
with the latents clipped to a ball after every step. Here the ten decoders run as one grouped
network with BatchNorm folded in, the backward pass to the latents is written out (no weight
gradients, no autograd graph), and Adam is a few tensor ops: no host syncs inside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from abslab.models.vae import IMAGE_PIXELS, LATENT_DIM, N_CLASSES, GroupedStack

ClipMode = Literal["project", "authors"]
CLIP_MODES: tuple[ClipMode, ...] = ("project", "authors")
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as the authors used them
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class InferenceSettings:
    """The authors' defaults: 49 Adam steps (n_iter=50) at lr 0.05, radius 5, beta 1."""

    n_iter: int = 50
    lr: float = 0.05
    clip: float = 5.0
    beta: float = 1.0
    clip_mode: ClipMode = "project"

    def __post_init__(self) -> None:
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode={self.clip_mode!r}: choose one of {CLIP_MODES}.")
        if self.n_iter < 0:
            raise ValueError(f"n_iter={self.n_iter}: it must be >= 0 (0 or 1: bank search only).")

    @property
    def adam_steps(self) -> int:
        """The authors' loop runs n_iter passes and steps in all but the last one."""
        return max(self.n_iter - 1, 0)


def make_latent_bank(bank_size: int, fraction_to_dismiss: float, seed: int) -> torch.Tensor:
    """The authors' fixed latents: int(n/(1-f)) draws from N(0, I) with numpy's seed, minus the
    least likely fraction f (the largest norms), in draw order. (bank_size, 8) float32.

    With (8000, 0.1, 1234) this is exactly the published `latent_samples_8000.npy`.
    """
    if not 0 <= fraction_to_dismiss < 1:
        raise ValueError(f"fraction_to_dismiss={fraction_to_dismiss}: it must be in [0, 1).")
    n_draws = int(bank_size / (1 - fraction_to_dismiss))
    draws = np.random.RandomState(seed).multivariate_normal(
        np.zeros(LATENT_DIM), np.eye(LATENT_DIM), n_draws
    )
    keep = np.sort(np.argsort(np.linalg.norm(draws, axis=1), kind="stable")[:bank_size])
    return torch.from_numpy(draws[keep].astype(np.float32))


def clip_to_ball(z: torch.Tensor, radius: float, mode: ClipMode) -> torch.Tensor:
    """Latents z (..., 8) with norm above `radius` are put back on the sphere.

    "project" is the Euclidean projection z * r/||z||. "authors" reproduces their
    `clip_to_sphere`, sqrt(z^2 / ||z||^2 * r^2), which drops the sign of every component.
    """
    sq_norm = (z * z).sum(-1, keepdim=True)
    outside = sq_norm > radius**2
    if mode == "authors":
        clipped = torch.sqrt(z * z / sq_norm * radius**2)
    else:
        clipped = z * (radius / sq_norm.sqrt())
    return torch.where(outside, clipped, z)


def transposed_conv(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int
) -> torch.Tensor:
    """F.conv_transpose2d(h, weight, bias, stride, groups=10), computed as the input gradient of
    the ordinary convolution: the same arithmetic (bit for bit here), but on CPU PyTorch runs
    it up to twice as fast on the decoder's shapes (results/abs_inference.md, profile).

    h (B, 10*C_in, n, n), weight (10*C_in, C_out, k, k) -> (B, 10*C_out, L, L), L = (n-1)s + k.
    """
    side = (h.shape[-1] - 1) * stride + weight.shape[-1]
    size = (len(h), weight.shape[1] * N_CLASSES, side, side)
    out = torch.nn.grad.conv2d_input(size, weight, h, stride=stride, groups=N_CLASSES)
    return out.add_(bias.view(1, -1, 1, 1))


class FoldedDecoder(nn.Module):
    """The ten decoders in eval mode with BatchNorm folded into the transposed convolutions.

    `forward` keeps the activations that `latent_gradient` needs; together they give the
    gradient of any loss on the reconstructions with respect to the latents only. The folded
    tensors are buffers, so that torch.compile's freezing can treat them as constants.

    The first layer maps each class's latent (1x1) to 32 channels of 4x4: all ten are one
    matrix product with a block-diagonal (80, 10*512) matrix, far cheaper than a grouped
    transposed convolution of a 1x1 input, and a layout that compiles to vectorised code.
    """

    def __init__(self, decoder: GroupedStack, dtype: torch.dtype | None = None) -> None:
        """Folded in `dtype` (None: the decoder's own)."""
        super().__init__()
        folded = []
        with torch.no_grad():
            for i, conv in enumerate(decoder.convs):
                weight, bias = conv.weight.to(dtype, copy=True), conv.bias.to(dtype, copy=True)
                if i < len(decoder.norms):
                    norm = decoder.norms[i]
                    gain, shift = norm.weight.to(dtype), norm.bias.to(dtype)
                    mean, var = norm.running_mean.to(dtype), norm.running_var.to(dtype)
                    scale = gain / torch.sqrt(var + norm.eps)
                    # transposed-conv weight (10*in, out, k, k): output channel g*out + o
                    grouped = weight.view(N_CLASSES, -1, *weight.shape[1:])
                    weight = (grouped * scale.view(N_CLASSES, 1, -1, 1, 1)).view_as(weight)
                    bias = (bias - mean) * scale + shift
                folded.append((weight, bias, conv.stride[0]))
            first_weight, first_bias, _ = folded[0]
            side = first_weight.shape[-1]
            self.first_side = side
            self.register_buffer(
                "first_matrix", torch.block_diag(*first_weight.view(N_CLASSES, LATENT_DIM, -1))
            )
            self.register_buffer("first_bias", first_bias.repeat_interleave(side * side))
            for i, (weight, bias, _) in enumerate(folded[1:], start=1):
                self.register_buffer(f"weight{i}", weight)
                self.register_buffer(f"bias{i}", bias)
        self.strides = tuple(stride for *_, stride in folded[1:])

    @property
    def convs(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """(weight, bias, stride) of the transposed convolutions after the first layer."""
        return [
            (getattr(self, f"weight{i}"), getattr(self, f"bias{i}"), stride)
            for i, stride in enumerate(self.strides, start=1)
        ]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z (B, 10, 8) -> reconstructions (B, 10, 28, 28) and the hidden ELU outputs."""
        h = torch.addmm(self.first_bias, z.reshape(len(z), -1), self.first_matrix)
        h = F.elu(h.view(len(z), -1, self.first_side, self.first_side))
        hidden = [h]
        *inner, last = self.convs
        for weight, bias, stride in inner:
            h = F.elu(transposed_conv(h, weight, bias, stride))
            hidden.append(h)
        weight, bias, stride = last
        return torch.sigmoid(transposed_conv(h, weight, bias, stride)), hidden

    def latent_gradient(
        self, rec: torch.Tensor, hidden: list[torch.Tensor], grad_rec: torch.Tensor
    ) -> torch.Tensor:
        """Backpropagate grad_rec (B, 10, 28, 28) to the latents (B, 10, 8).

        The adjoint of a transposed convolution is the ordinary convolution with the same
        weight; ELU's derivative is 1 above zero and ELU(a) + 1 below.
        """
        grad = grad_rec * rec * (1 - rec)
        for (weight, _, stride), h in zip(self.convs[::-1], hidden[::-1], strict=True):
            grad = F.conv2d(grad, weight, stride=stride, groups=N_CLASSES)
            grad.mul_(h.clamp(max=0).add_(1))  # in place: these are large
        grad = grad.reshape(len(grad), -1) @ self.first_matrix.T
        return grad.view(len(grad), N_CLASSES, LATENT_DIM)


class LatentBank:
    """The fixed latents (S, 8), decoded once per class and searched with one matrix product."""

    def __init__(self, latents: torch.Tensor, decoder: FoldedDecoder, chunk: int = 500) -> None:
        self.latents = latents
        images = torch.cat(
            [
                decoder.forward(latents[i : i + chunk, None].expand(-1, N_CLASSES, -1))[0]
                for i in range(0, len(latents), chunk)
            ]
        )
        # (S, 10, 28, 28) -> (10, S, 784): the class-c bank images are rows of images[c]
        self.images = (
            images.view(len(latents), N_CLASSES, IMAGE_PIXELS).transpose(0, 1).contiguous()
        )
        self.sq_norms = (self.images * self.images).sum(-1)  # (10, S)
        self.prior = 0.5 * (latents * latents).sum(-1)  # (S,)

    def search(
        self, x: torch.Tensor, beta: float, chunk: int = 128
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 784) -> for every class the best bank latent (B, 10, 8) and its ELBO (B, 10).

        ||x - G||^2 = ||x||^2 - 2 x.G + ||G||^2: one matrix product against all 10*S images.
        """
        bank_size = len(self.latents)
        flat_images = self.images.view(N_CLASSES * bank_size, IMAGE_PIXELS)
        offsets = (self.sq_norms + beta * self.prior).view(1, N_CLASSES, bank_size)
        best_values, best_index = [], []
        for part in x.split(chunk):
            scores = (part @ flat_images.T).view(len(part), N_CLASSES, bank_size)
            values, index = (offsets - 2 * scores).min(-1)
            best_values.append(values + (part * part).sum(-1, keepdim=True))
            best_index.append(index)
        elbo = torch.cat(best_values) / IMAGE_PIXELS
        return self.latents[torch.cat(best_index)], elbo


def elbo_at(x: torch.Tensor, rec: torch.Tensor, z: torch.Tensor, beta: float) -> torch.Tensor:
    """(||x - rec_c||^2 + beta/2 ||z_c||^2) / 784 for x (B, 784), rec (B, 10, 784), z (B, 10, 8)."""
    return (((x[:, None] - rec) ** 2).sum(-1) + 0.5 * beta * (z * z).sum(-1)) / IMAGE_PIXELS


def latent_loss_gradient(
    decoder: FoldedDecoder, z: torch.Tensor, target: torch.Tensor, beta: float
) -> torch.Tensor:
    """The gradient of the bound (||x - G_c(z_c)||^2 + beta/2 ||z_c||^2) / 784 with respect to
    the latents z (B, 10, 8), for the images target (B, 1, 28, 28)."""
    rec, hidden = decoder.forward(z)
    grad_rec = (rec - target) * (2 / IMAGE_PIXELS)
    return decoder.latent_gradient(rec, hidden, grad_rec) + z * (beta / IMAGE_PIXELS)


def adam_start(
    bank: LatentBank, x: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the latent optimisation of x (B, 1, 28, 28) starts: the best bank latents z
    (B, 10, 8), x as the target (B, 1, 28, 28), and Adam's two moments at zero (B, 10, 8)."""
    flat = x.reshape(len(x), IMAGE_PIXELS)
    z, _ = bank.search(flat, beta)
    return z, flat.view(len(x), 1, 28, 28), torch.zeros_like(z), torch.zeros_like(z)


def adam_schedule(settings: InferenceSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's bias corrections for steps t = 1..adam_steps, each (adam_steps,) float32: the step
    size lr / (1 - beta1^t) and the second-moment scale 1 / sqrt(1 - beta2^t).

    Rounded as `optimise_latents` meets them: Python floats become float32 where they meet the
    tensors, and torch divides by a scalar as a product with its float32 reciprocal. The fused
    paths (kernel, compiled) take these tensors so that they step as the plain path does.
    """
    beta1, beta2 = ADAM_BETAS
    t = torch.arange(1, settings.adam_steps + 1, dtype=torch.float64)
    return (settings.lr / (1 - beta1**t)).float(), 1 / (1 - beta2**t).sqrt().float()


def optimise_latents(
    decoder: FoldedDecoder, bank: LatentBank, x: torch.Tensor, settings: InferenceSettings
) -> torch.Tensor:
    """The authors' inference for x (B, 1, 28, 28) -> optimised latents z* (B, 10, 8).

    Bank search, then `settings.adam_steps` Adam steps on every class's latent at once, each
    followed by the clip. Adam is elementwise, so images and classes never interact.
    """
    z, target, first, second = adam_start(bank, x, settings.beta)
    for step in range(1, settings.adam_steps + 1):
        grad = latent_loss_gradient(decoder, z, target, settings.beta)
        z = adam_step(z, grad, first, second, step, settings)
    return z


def adam_step(
    z: torch.Tensor,
    grad: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    step: int,
    settings: InferenceSettings,
) -> torch.Tensor:
    """Adam step `step` (from 1) of z (B, 10, 8) along grad, then the clip: the new z. Adam's
    moments first and second (B, 10, 8) are updated in place; torch.optim.Adam's arithmetic."""
    beta1, beta2 = ADAM_BETAS
    first.mul_(beta1).add_(grad, alpha=1 - beta1)
    second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (second.sqrt() / (1 - beta2**step) ** 0.5).add_(ADAM_EPS)
    z = z.addcdiv(first, denom, value=-settings.lr / (1 - beta1**step))
    return clip_to_ball(z, settings.clip, settings.clip_mode)


class GraphedOptimiser:
    """`optimise_latents` captured as one CUDA graph per input shape, then replayed.

    At small batches the 49 steps are a few thousand tiny kernel launches; a replay issues them
    all at once. Build a new one whenever the decoder or the bank change (the graph holds
    their tensors).
    """

    def __init__(self, decoder: FoldedDecoder, bank: LatentBank, settings: InferenceSettings):
        self.decoder, self.bank, self.settings = decoder, bank, settings
        Captured = tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]  # graph, x, z*
        self.graphs: dict[tuple[int, ...], Captured] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, 28, 28) on CUDA -> z* (B, 10, 8), equal to optimise_latents(x)."""
        key = tuple(x.shape)
        if key not in self.graphs:
            static_x = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs need
                optimise_latents(self.decoder, self.bank, static_x, self.settings)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_z = optimise_latents(self.decoder, self.bank, static_x, self.settings)
            self.graphs[key] = (graph, static_x, static_z)
        graph, static_x, static_z = self.graphs[key]
        static_x.copy_(x)
        graph.replay()
        return static_z.clone()
