"""Madry et al.'s MNIST model with PGD adversarial training (abs_spec 1.2 and 3.4)."""

from __future__ import annotations

import torch

from abslab.attacks.pgd import pgd_linf
from abslab.models.base import Batch, Defense
from abslab.models.nets import MadryNet


class MadryDefense(Defense):
    """Adversarially trained on L-inf PGD examples; reports PGD accuracy at test time.

    Every training batch is replaced by PGD adversarials (`train_steps` steps of
    `train_step_size` from a random start). `eps_warmup` ramps epsilon linearly from 0 to `eps`
    over that fraction of all training steps (the step size scales with it); 0 trains at full
    epsilon from the start, as the paper. With `test_pgd_steps` > 0 the test step also runs
    PGD (random start) at `eps` and logs `test/pgd_acc` beside the clean accuracy.
    """

    def __init__(
        self,
        name: str = "madry",
        eps: float = 0.3,
        train_steps: int = 40,
        train_step_size: float = 0.01,
        random_start: bool = True,
        eps_warmup: float = 0.0,
        test_pgd_steps: int = 40,
        test_pgd_step_size: float = 0.01,
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
        self.test_pgd_steps = test_pgd_steps
        self.test_pgd_step_size = test_pgd_step_size
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
        x_adv = pgd_linf(self, x, y, eps, self.train_steps, step_size, self.random_start)
        self.log("train/eps", eps, on_step=True, on_epoch=False)
        return self.classification_loss(self(x_adv), y, accuracy_key="train/adv_acc")

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        columns = super().test_step(batch, batch_idx)
        if self.test_pgd_steps > 0:
            x, y, _ = batch
            x_adv = pgd_linf(self, x, y, self.eps, self.test_pgd_steps, self.test_pgd_step_size)
            if (x_adv - x).abs().max() > self.eps + 1e-6:
                raise RuntimeError("PGD left the epsilon ball; this is a bug in pgd_linf.")
            pgd_pred = self(x_adv).argmax(1)
            self.log(
                "test/pgd_acc", (pgd_pred == y).float().mean(), on_epoch=True, batch_size=len(y)
            )
            columns["pgd_pred"] = pgd_pred
        return columns
