"""The interface every defense shares, and the evaluation steps built on it."""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

GradientMode = Literal["exact", "straight_through", "envelope", "none"]
GRADIENT_MODES: tuple[GradientMode, ...] = ("exact", "straight_through", "envelope", "none")
SCHEDULERS = ("none", "onecycle")

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x (B,1,28,28), y (B,), index (B,)


class Inference(NamedTuple):
    """What a reconstructing defense's `infer` finds for a batch of B images (ABS)."""

    logits: torch.Tensor  # (B, 10): what `forward` returns
    latents: torch.Tensor  # (B, 10, L): the optimised latent of each class
    reconstructions: torch.Tensor  # (B, 10, 28, 28): each class's reconstruction of the image


class CleanPredictions(NamedTuple):
    """What `Defense.test_step` returns for a test batch of B, and the attack-evaluation
    callback reads: the samples' test-file indices, labels and clean predictions, (B,) each."""

    index: torch.Tensor
    label: torch.Tensor
    clean_pred: torch.Tensor


def build_defense(spec: DictConfig, **overrides: Any) -> Defense:
    """The defense of a `model` config, every argument a plain Python value.

    Hydra passes lists and dicts as ListConfig/DictConfig by default; saved as hyperparameters
    they make a checkpoint that `torch.load(weights_only=True)` refuses. The config's `card`
    (how results show the model: label, column, style, paper numbers) is not an argument.
    """
    arguments = {key: value for key, value in spec.items() if key != "card"}
    return instantiate(arguments, _convert_="all", **overrides)


class Defense(pl.LightningModule):
    """A classifier of MNIST digits that attacks can query (the contract: docs/defenses.md).

    Subclasses implement `forward(x) -> logits` for x float (N, 1, 28, 28) in [0, 1], logits
    (N, 10), and declare what attacks may use of them:

    - `gradient`: "exact" (autograd gives the true input gradient), "straight_through"
      (autograd passes through a binarization as the identity), "envelope" (the gradient of an
      inner minimum at its minimiser, held fixed: ABS's bound at the optimised latents, not a
      gradient through the inner optimisation) or "none" (no input gradient: gradient attacks
      must estimate it).
    - `binarize_input`: the model thresholds its input at 0.5 first, so the harness also tries
      each adversarial after binarization refinement (and Latent Descent projects its targets).
    - `reconstructs`: `infer(x)` gives per-class reconstructions (`Inference`), which Latent
      Descent walks towards; the base `infer` raises.
    - `nearest_neighbor`: the model predicts the label of the image of `reference_set()`
      nearest to its input in L2, so an exact attack can solve for its smallest adversarials
      (attacks/nearest_neighbor.py); the base `reference_set` raises.

    `logit_scale` and `confidence_level` are the calibrated-softmax constants (alpha, eta;
    docs/defenses.md). Training with cross-entropy is the default `training_step`; models that
    train otherwise override it, and models that need no training set `needs_training = False`.
    """

    gradient: GradientMode = "exact"
    needs_training: bool = True
    binarize_input: bool = False
    reconstructs: bool = False
    nearest_neighbor: bool = False

    def __init__(
        self,
        name: str,
        logit_scale: float,
        confidence_level: float,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str = "none",
    ) -> None:
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"model.scheduler={scheduler!r}: choose one of {SCHEDULERS}.")
        if logit_scale <= 0 or confidence_level < 0:
            raise ValueError(
                f"model.logit_scale={logit_scale} must be > 0 and model.confidence_level="
                f"{confidence_level} >= 0 (0: the plain softmax)."
            )
        self.name = name
        self.logit_scale = logit_scale
        self.confidence_level = confidence_level
        self.lr = lr
        self.weight_decay = weight_decay
        self.scheduler = scheduler
        self.pretrained: str | None = None
        self.train_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.train_loss = MeanMetric()
        self.best_val_acc = float("-inf")  # kept in checkpoints, so a resumed run knows it

    def infer(self, x: torch.Tensor) -> Inference:
        """x (B, 1, 28, 28) in [0, 1] -> logits, per-class latents and reconstructions, for
        models that declare `reconstructs` (ABS); without gradients through the latents."""
        raise NotImplementedError(
            f"model={self.name} does not reconstruct its input (reconstructs = False): "
            "attacks that need `infer` (Latent Descent) do not apply to it."
        )

    def reference_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The images a `nearest_neighbor` model compares its input with, flattened as it
        compares them (N, D), and their labels (N,)."""
        raise NotImplementedError(
            f"model={self.name} is no nearest-neighbour classifier (nearest_neighbor = False): "
            "it has no reference set for attacks to read."
        )

    def attach_data(self, datamodule: Any) -> None:
        """Take what the model needs from the data besides weights (nearest_neighbor: its
        reference set); called by Lightning's setup, and by tasks that run without a Trainer."""

    def accepts_weights_of(self, trained_as: str) -> bool:
        """Whether a checkpoint trained as model=`trained_as` holds this model's weights."""
        return trained_as == self.name

    def calibrated_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """p_c = (exp(a*l_c) + eta) / (sum_j exp(a*l_j) + 10*eta), computed in log space, for
        logits (N, 10); eta = 0 is the plain softmax of a*l."""
        scaled = self.logit_scale * logits
        eta = self.confidence_level
        log_eta = torch.full_like(scaled[:, :1], math.log(eta) if eta > 0 else -math.inf)
        numerator = torch.logaddexp(scaled, log_eta)
        denominator = torch.logsumexp(torch.cat([scaled, log_eta + math.log(10)], dim=1), dim=1)
        return (numerator - denominator[:, None]).exp()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        return self.classification_loss(self(x), y, accuracy_key="train/acc")

    def classification_loss(
        self, logits: torch.Tensor, y: torch.Tensor, accuracy_key: str
    ) -> torch.Tensor:
        """Cross-entropy of logits (B, 10) against y (B,), logged; stops the run on NaN or inf."""
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"model={self.name}: the training loss is {loss.item()} at step "
                f"{self.global_step}. Lower model.lr, or resume from an earlier checkpoint."
            )
        self.train_loss(loss)
        self.train_acc(logits.argmax(1), y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log(accuracy_key, self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, y, _ = batch
        self.val_acc(self(x).argmax(1), y)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a couple of batches before training: not an epoch
            return
        self.best_val_acc = max(self.best_val_acc, float(self.val_acc.compute()))
        self.log("val/acc_best", self.best_val_acc, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_acc"] = self.best_val_acc

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_acc = checkpoint.get("best_val_acc", float("-inf"))

    def test_step(self, batch: Batch, batch_idx: int) -> CleanPredictions:
        """Clean predictions of the batch, which the attack-evaluation callback attacks."""
        x, y, index = batch
        pred = self(x).argmax(1)
        self.test_acc(pred, y)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
        return CleanPredictions(index, y, pred)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler == "none":
            return optimizer
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.lr, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
