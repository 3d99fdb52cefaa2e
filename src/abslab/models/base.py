"""The interface every defense shares, and the evaluation steps built on it."""

from __future__ import annotations

import math
from typing import Any, Literal

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


def build_defense(spec: DictConfig, **overrides: Any) -> Defense:
    """The defense of a `model` config, every argument a plain Python value.

    Hydra passes lists and dicts as ListConfig/DictConfig by default; saved as hyperparameters
    they make a checkpoint that `torch.load(weights_only=True)` refuses. The config's `card`
    (how results show the model: label, column, style, paper numbers) is not an argument.
    """
    arguments = {key: value for key, value in spec.items() if key != "card"}
    return instantiate(arguments, _convert_="all", **overrides)


class Defense(pl.LightningModule):
    """A classifier of MNIST digits that attacks can query.

    Subclasses implement `forward(x) -> logits` for x float (N, 1, 28, 28) in [0, 1], logits
    (N, 10), and set `gradient`: "exact" (autograd gives the true input gradient),
    "straight_through" (autograd passes through a binarization as the identity), "envelope"
    (the gradient of an inner minimum at its minimiser, held fixed: ABS's bound at the optimised
    latents, not a gradient through the inner optimisation) or "none" (no input gradient:
    gradient attacks must estimate it). `logit_scale` and
    `confidence_level` are the calibrated-softmax constants (alpha, eta; abs_spec 1.2).
    Training with cross-entropy is the default `training_step`; models that train otherwise
    override it, and models that need no training set `needs_training = False`.
    """

    gradient: GradientMode = "exact"
    needs_training: bool = True

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

    def figures(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Pictures of the model on a few test images x (N, 1, 28, 28), labels y (N,):
        name -> matplotlib Figure. evaluate.py saves them as <name>.png and logs them."""
        return {}

    def attach_data(self, datamodule: Any) -> None:
        """Take what the model needs from the data besides weights (nearest_neighbor: its
        reference set); called by Lightning's setup, and by tasks that run without a Trainer."""

    def accepts_weights_of(self, trained_as: str) -> bool:
        """Whether a checkpoint trained as model=`trained_as` holds this model's weights."""
        return trained_as == self.name

    def calibrated_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """p_c = (exp(a*l_c) + eta) / (sum_j exp(a*l_j) + 10*eta), computed in log space."""
        scaled = self.logit_scale * logits
        log_eta = torch.full_like(scaled[:, :1], math.log(self.confidence_level))
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

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Clean predictions; returns the per-sample columns that evaluate.py writes."""
        x, y, index = batch
        pred = self(x).argmax(1)
        self.test_acc(pred, y)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
        return {"index": index, "label": y, "clean_pred": pred}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler == "none":
            return optimizer
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.lr, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
