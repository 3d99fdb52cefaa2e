"""The Analysis-by-Synthesis classifier and binary ABS (docs/paper.md §3.1-§3.7)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from abslab.data.augment import PIPELINES
from abslab.models.abs_compiled import CompiledOptimiser
from abslab.models.abs_inference import (
    FoldedDecoder,
    GraphedOptimiser,
    InferenceSettings,
    LatentBank,
    elbo_at,
    make_latent_bank,
    optimise_latents,
)
from abslab.models.abs_kernel import KernelOptimiser
from abslab.models.base import Batch, Defense, Inference
from abslab.models.checkpoints import load_checkpoint_weights
from abslab.models.nets import binarize
from abslab.models.pretrained import WeightsError, load_checked, load_reference_abs
from abslab.models.vae import (
    IMAGE_PIXELS,
    LATENT_DIM,
    N_CLASSES,
    TenVAEs,
    pack_by_class,
    vae_loss_terms,
)

# The published binary ABS's per-class ELBO multipliers (docs/paper.md §3.6).
PUBLISHED_CLASS_SCALARS = (1.0, 0.96, 1.001, 1.06, 0.98, 0.96, 1.03, 1.0, 1.0, 1.0)


def annealed_kl_weight(train_beta: float, warmup_epochs: float, epoch: float) -> float:
    """The KL weight of a training step `epoch` epochs in (fractional): train_beta, ramped
    linearly from 0 over the first `warmup_epochs` (KL annealing; 0: none). Training only: the
    bound that classifies keeps `beta` (results/abs_margins.md: the decoders, not the KL, fall
    short of the published VAEs, so training may weigh the KL less)."""
    if warmup_epochs == 0:
        return train_beta
    return train_beta * min(1.0, epoch / warmup_epochs)


class ABSDefense(Defense):
    """logit_c = -ELBO_c(x): class c's VAE explains x best when its bound is lowest.

    Training fits each class's VAE to its own digits (squared-error ELBO; KL weight
    `train_beta`, null: `beta`, annealed over `kl_warmup_epochs`; the KL's log-variance term
    weighted by `train_entropy_weight`, vae.vae_loss_terms) on augmented images
    (`augmentation`: "light" or "augmentor", data/augment.py; each op with probability `augment`).
    Inference is the authors' (`abs_inference`): bank search, then `n_iter - 1` Adam steps in
    latent space.
    With `binarize_input` the model is binary ABS: input thresholded at 0.5 and every class's
    ELBO multiplied by `class_scalars`.

    Gradient: "envelope". Autograd on the logits gives the gradient of the final bound at the
    optimised latents held fixed, -2 (x - G_c(z*_c)) / 784 (times s_c): the envelope-theorem
    gradient of docs/paper.md §3.7. It does not differentiate through the inner optimisation, which
    is not the intended gradient; binary ABS passes it straight through the binarization.
    """

    gradient = "envelope"
    reconstructs = True  # `infer`: latents z*_c (B, 10, 8) and reconstructions G_c(z*_c)

    def __init__(
        self,
        name: str = "abs",
        binarize_input: bool = False,
        class_scalars: Sequence[float] | None = None,
        pretrained: str | None = None,
        latent_samples: str | None = None,
        bank_size: int = 8000,
        fraction_to_dismiss: float = 0.1,
        bank_seed: int = 1234,
        n_iter: int = 50,
        inference_lr: float = 0.05,
        clip: float = 5.0,
        clip_mode: str = "project",
        beta: float = 1.0,
        train_beta: float | None = None,
        kl_warmup_epochs: float = 0.0,
        train_entropy_weight: float = 1.0,
        val_n_iter: int = 0,
        inference_chunk: int | None = None,
        cuda_graphs: bool = False,
        compile_inference: bool = False,
        inference_kernel: bool = True,
        augment: float = 0.1,
        augmentation: str = "light",
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        scheduler: str = "none",
        logit_scale: float = 440.0,
        confidence_level: float = 0.000039,
    ) -> None:
        super().__init__(name, logit_scale, confidence_level, lr, weight_decay, scheduler)
        self.save_hyperparameters(logger=False)
        self.binarize_input = binarize_input
        scalars = torch.ones(N_CLASSES) if class_scalars is None else torch.tensor(class_scalars)
        if scalars.shape != (N_CLASSES,) or not (scalars > 0).all():
            raise ValueError(
                f"model.class_scalars={class_scalars}: give ten positive numbers, or null for ones."
            )
        # the config, not a checkpoint, decides scalars and bank: non-persistent buffers
        self.register_buffer("class_scalars", scalars.float(), persistent=False)
        self.settings = InferenceSettings(n_iter, inference_lr, clip, beta, clip_mode)
        self.val_settings = InferenceSettings(val_n_iter, inference_lr, clip, beta, clip_mode)
        self.beta = beta
        if train_beta is not None and not train_beta >= 0:
            raise ValueError(
                f"model.train_beta={train_beta}: the training KL weight must be >= 0, or null "
                "for model.beta."
            )
        if not kl_warmup_epochs >= 0:
            raise ValueError(
                f"model.kl_warmup_epochs={kl_warmup_epochs}: give the epochs of KL annealing, "
                ">= 0 (0: none)."
            )
        if not 0 <= train_entropy_weight <= 1:
            raise ValueError(
                f"model.train_entropy_weight={train_entropy_weight}: give a weight in [0, 1] "
                "(1: the KL; 0.5: the authors' KLD with the posterior std)."
            )
        self.train_beta = beta if train_beta is None else train_beta
        self.train_entropy_weight = train_entropy_weight
        self.kl_warmup_epochs = kl_warmup_epochs
        self.augment = augment
        if augmentation not in PIPELINES:
            raise ValueError(
                f"model.augmentation={augmentation!r}: choose one of {', '.join(PIPELINES)}."
            )
        self.augmentation = PIPELINES[augmentation]
        self.inference_chunk = inference_chunk
        self.cuda_graphs = cuda_graphs
        self.compile_inference = compile_inference
        self.inference_kernel = inference_kernel
        self.vaes = TenVAEs()
        bank = self._bank(latent_samples, bank_size, fraction_to_dismiss, bank_seed)
        self.register_buffer("bank_latents", bank, persistent=False)
        if pretrained is not None:
            load_checked(self.vaes, load_reference_abs(pretrained), pretrained)
            self.pretrained = str(pretrained)
        self._cache: tuple[tuple, FoldedDecoder, LatentBank] | None = None
        Optimiser = GraphedOptimiser | CompiledOptimiser | KernelOptimiser
        self._optimisers: dict[InferenceSettings, Optimiser] = {}

    @staticmethod
    def _bank(path: str | None, bank_size: int, fraction: float, seed: int) -> torch.Tensor:
        """The fixed latents (bank_size, 8): from a .npy file, or drawn as the authors did."""
        if path is None:
            return make_latent_bank(bank_size, fraction, seed)
        if not Path(path).is_file():
            raise WeightsError(f"model.latent_samples={path}: no such file (an (N, 8) .npy).")
        bank = np.load(path, allow_pickle=False)
        if bank.ndim != 2 or bank.shape[1] != LATENT_DIM or len(bank) < bank_size:
            raise WeightsError(
                f"model.latent_samples={path} holds shape {bank.shape}; it needs (N, 8) with "
                f"N >= model.bank_size={bank_size}."
            )
        return torch.from_numpy(bank[:bank_size].astype(np.float32))

    def accepts_weights_of(self, trained_as: str) -> bool:
        """ABS and binary ABS share their ten VAEs: either's checkpoint serves both."""
        return trained_as in ("abs", "binary_abs")

    def _inference_parts(self) -> tuple[FoldedDecoder, LatentBank]:
        """The folded decoders and the decoded bank, rebuilt only when the weights changed."""
        state = [*self.vaes.decoder.parameters(), *self.vaes.decoder.buffers(), self.bank_latents]
        key = (self.device, *(t._version for t in state), *(t.data_ptr() for t in state))
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                decoder = FoldedDecoder(self.vaes.decoder)
                self._cache = (key, decoder, LatentBank(self.bank_latents, decoder))
                self._optimisers = {}  # captured or compiled with the old tensors
        return self._cache[1], self._cache[2]

    def _optimiser(
        self, decoder: FoldedDecoder, bank: LatentBank, settings: InferenceSettings
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """x (B, 1, 28, 28) -> z* (B, 10, 8). On the CPU: the hand-written kernel
        (`inference_kernel`, the default; float32 only, a float64 model runs plain torch),
        torch.compile'd torch (`compile_inference`, which takes precedence), or plain torch;
        on CUDA: plain or replayed graphs (`cuda_graphs`)."""
        cuda = self.device.type == "cuda"
        if self.compile_inference and cuda:
            raise ValueError(
                "model.compile_inference=true compiles for the CPU; on CUDA set "
                "model.compile_inference=false (model.cuda_graphs=true is the CUDA path)."
            )
        if cuda:
            kind = GraphedOptimiser if self.cuda_graphs else None
        elif self._kernel_runs(settings):
            kind = KernelOptimiser
        elif self.compile_inference and settings.adam_steps > 0:
            kind = CompiledOptimiser
        else:  # plain torch; also the bank search alone (no Adam steps)
            kind = None
        if kind is None:
            return partial(optimise_latents, decoder, bank, settings=settings)
        if settings not in self._optimisers:
            if kind is KernelOptimiser:  # its few float64 gradients: the decoders folded in float64
                exact = FoldedDecoder(self.vaes.decoder, torch.float64)
                self._optimisers[settings] = KernelOptimiser(decoder, bank, settings, exact)
            else:
                self._optimisers[settings] = kind(decoder, bank, settings)
        return self._optimisers[settings]

    def default_chunk(self, settings: InferenceSettings | None = None) -> int:
        """Images per inference chunk when `inference_chunk` is null. The kernel keeps each
        (image, class) pair in cache by itself, so its chunks only share the bank search's
        pass over the 80,000 decoded bank images: 256 (chunks of 16 left it a third of the
        time). The torch path on CPU: chunks of 16 keep the activations in cache (whole
        batches of 100 run at about half the throughput on 2 cores; 8-16 measured best,
        results/abs_inference.md). A GPU wants whole batches."""
        if self.device.type != "cpu":
            return 1000
        return 256 if self._kernel_runs(settings or self.settings) else 16

    def _kernel_runs(self, settings: InferenceSettings) -> bool:
        """Whether `settings`' Adam steps run in the CPU kernel: a float32 model on the CPU
        with `inference_kernel` and without `compile_inference`."""
        fp32 = self.vaes.decoder.convs[0].weight.dtype == torch.float32
        return (
            self.device.type == "cpu"
            and settings.adam_steps > 0
            and self.inference_kernel
            and not self.compile_inference
            and fp32
        )

    def infer(self, x: torch.Tensor, settings: InferenceSettings | None = None) -> Inference:
        """x (B, 1, 28, 28) in [0, 1] -> logits, optimised latents and reconstructions.

        The latents are optimised without a graph; the logits are then the bound at z*, a
        differentiable function of x with the reconstructions held fixed.
        """
        settings = settings or self.settings
        x_in = binarize(x) if self.binarize_input else x
        decoder, bank = self._inference_parts()
        optimise = self._optimiser(decoder, bank, settings)
        with torch.no_grad():
            chunks = x_in.detach().split(self.inference_chunk or self.default_chunk(settings))
            z = torch.cat([optimise(part) for part in chunks])
            rec = decoder.forward(z)[0]
        elbo = elbo_at(x_in.reshape(len(x), IMAGE_PIXELS), rec.flatten(2), z, settings.beta)
        if not torch.isfinite(elbo).all():
            raise FloatingPointError(
                f"model={self.name}: non-finite ELBO; check the input (NaN pixels?) and weights."
            )
        return Inference(-elbo * self.class_scalars, z, rec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, 28, 28) in [0, 1] -> logits (B, 10), minus the (scaled) ELBOs."""
        return self.infer(x).logits

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        x = self.augmentation(x, self.augment)
        packed, mask = pack_by_class(x, y)
        rec_error, kl = vae_loss_terms(self.vaes, packed, mask, self.train_entropy_weight)
        epoch = self.global_step / self.trainer.num_training_batches if self._trainer else 0.0
        kl_weight = annealed_kl_weight(self.train_beta, self.kl_warmup_epochs, epoch)
        loss = (rec_error + kl_weight * kl) / len(x)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"model={self.name}: the VAE loss is {loss.item()} at step {self.global_step}. "
                "Lower model.lr, or resume from an earlier checkpoint."
            )
        self.train_loss(loss)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/reconstruction", rec_error / len(x), on_step=True, on_epoch=True)
        self.log("train/kl", kl / len(x), on_step=True, on_epoch=True)
        self.log("train/kl_weight", kl_weight, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Accuracy with `val_n_iter` (0: bank search only, as the reimplementation's epochs)."""
        x, y, _ = batch
        self.val_acc(self.infer(x, self.val_settings).logits.argmax(1), y)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)


def published_and_trained(published: str | Path, ckpts: Sequence[str]) -> dict[str, ABSDefense]:
    """The published VAEs (key "published") and abslab's ABS of each train.py checkpoint (key:
    its path), in eval mode: the side by side of every ABS diagnostic."""
    models = {"published": ABSDefense(pretrained=str(published)).eval()}
    for path in ckpts:
        models[path] = ABSDefense().eval()
        load_checkpoint_weights(models[path], path)
    return models
