"""ABS's latent optimisation compiled for the CPU: torch.compile (inductor) with freezing.

The plain loop (`optimise_latents`) runs about forty small kernels per Adam step. Compiled,
the elementwise work between the convolutions fuses, and freezing lets oneDNN prepack the
folded decoder weights: 1.2-1.3x on the 2-core CPU (results/abs_inference.md). It computes
the same function in another float order: logits agree to about 1e-6 relative, not bit for
bit. The first call compiles (tens of seconds); the batch dimension then turns dynamic after
the second shape, so chunks of any size reuse one graph.
"""

from __future__ import annotations

import torch
from torch import nn

from abslab.models.abs_inference import (
    ADAM_BETAS,
    ADAM_EPS,
    FoldedDecoder,
    InferenceSettings,
    LatentBank,
    adam_schedule,
    adam_start,
    clip_to_ball,
    latent_loss_gradient,
)

MAX_STEPS_PER_CALL = 7  # 49 = 7 x 7; more steps per graph compile longer and gain nothing


def steps_per_call(adam_steps: int) -> int:
    """The largest divisor of adam_steps up to MAX_STEPS_PER_CALL: one graph serves every call."""
    return max(k for k in range(1, MAX_STEPS_PER_CALL + 1) if adam_steps % k == 0)


class AdamSteps(nn.Module):
    """`steps` Adam steps of `optimise_latents` as one graph.

    The bias corrections come in as tensors, (steps,) per call, so that one compiled graph
    serves every call of the 49 steps.
    """

    def __init__(self, decoder: FoldedDecoder, settings: InferenceSettings, steps: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.settings = settings
        self.steps = steps

    def forward(
        self,
        z: torch.Tensor,
        first: torch.Tensor,
        second: torch.Tensor,
        target: torch.Tensor,
        step_sizes: torch.Tensor,
        second_scales: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z, first, second (B, 10, 8), target (B, 1, 28, 28); step_sizes, second_scales
        (steps,): lr / (1 - beta1^t) and 1 / sqrt(1 - beta2^t) of each step t."""
        beta1, beta2 = ADAM_BETAS
        for j in range(self.steps):
            grad = latent_loss_gradient(self.decoder, z, target, self.settings.beta)
            first = first * beta1 + grad * (1 - beta1)
            second = second * beta2 + grad * grad * (1 - beta2)
            z = z - step_sizes[j] * first / (second.sqrt() * second_scales[j] + ADAM_EPS)
            z = clip_to_ball(z, self.settings.clip, self.settings.clip_mode)
        return z, first, second


class CompiledOptimiser:
    """`optimise_latents` with its Adam steps compiled; x (B, 1, 28, 28) on the CPU -> z*.

    Build a new one whenever the decoder or the bank change (freezing folds their tensors
    into the compiled code).
    """

    def __init__(self, decoder: FoldedDecoder, bank: LatentBank, settings: InferenceSettings):
        self.bank, self.settings = bank, settings
        steps = steps_per_call(settings.adam_steps) if settings.adam_steps else 1
        self.compiled = torch.compile(AdamSteps(decoder, settings, steps).eval())
        step_sizes, second_scales = adam_schedule(settings)
        # one pair of tensors per call, each its own storage (views would differ in offset)
        self.calls = [
            (a.clone(), b.clone())
            for a, b in zip(step_sizes.split(steps), second_scales.split(steps), strict=True)
        ]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        z, target, first, second = adam_start(self.bank, x, self.settings.beta)
        # freezing is read where the graph compiles, the first call; torch.compile's options=
        # does not reach it (measured: no gain with options={"freezing": True})
        with torch._inductor.config.patch(freezing=True):
            for step_sizes, second_scales in self.calls:
                z, first, second = self.compiled(
                    z, first, second, target, step_sizes, second_scales
                )
        return z
