"""Madry et al.'s MNIST model with PGD adversarial training (docs/paper.md §4.4)."""

from __future__ import annotations

import torch

from abslab.models.base import Batch, Defense
from abslab.models.nets import MadryNet
from abslab.models.projected_gradient import iterate


class MadryDefense(Defense):
    """Adversarially trained on L-inf PGD examples.

    Every training batch is replaced by PGD adversarials (`train_steps` steps of
    `train_step_size` from a random start). `eps_warmup` ramps epsilon linearly from 0 to `eps`
    over that fraction of all training steps (the step size scales with it); 0 trains at full
    epsilon from the start, as the paper. PGD is the attack suite's own loop
    (`abslab.models.projected_gradient.iterate`); the test-time check is
    `evaluate.py norm=linf attack=pgd`.
    """

    def __init__(
        self,
        name: str = "madry",
        eps: float = 0.3,
        train_steps: int = 40,
        train_step_size: float = 0.01,
        random_start: bool = True,
        eps_warmup: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        scheduler: str = "none",
        logit_scale: float = 1.0,
        confidence_level: float = 60.0,
    ) -> None:
        super().__init__(name, logit_scale, confidence_level, lr, weight_decay, scheduler)
        self.save_hyperparameters(logger=False)
        if not 0 <= eps_warmup <= 1:
            raise ValueError(f"model.eps_warmup={eps_warmup}: give a fraction in [0, 1].")
        self.eps = eps
        self.train_steps = train_steps
        self.train_step_size = train_step_size
        self.random_start = random_start
        self.eps_warmup = eps_warmup
        self.net = MadryNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 1, 28, 28) in [0, 1] -> logits (N, 10)."""
        return self.net(x)

    def current_eps(self) -> float:
        """Epsilon for the present training step, ramped over the warm-up fraction."""
        if self.eps_warmup == 0:
            return self.eps
        warmup_steps = self.eps_warmup * self.trainer.estimated_stepping_batches
        return self.eps * min(1.0, (self.global_step + 1) / warmup_steps)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        eps = self.current_eps()
        step_size = self.train_step_size * eps / self.eps if self.eps > 0 else 0.0
        x_adv = iterate(
            lambda v, _: self(v), x, y, eps, self.train_steps, step_size, "linf", self.random_start
        )
        self.log("train/eps", eps, on_step=True, on_epoch=False)
        return self.classification_loss(self(x_adv), y, accuracy_key="train/adv_acc")
