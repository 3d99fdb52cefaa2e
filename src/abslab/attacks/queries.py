"""The defense as an attack sees it: every forward row counted, every adversarial remembered."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from abslab.attacks.distances import distance
from abslab.models.base import Defense


class GradientUnavailable(RuntimeError):
    """An attack asked autograd for the input gradient of a model whose `gradient` is "none"."""


class QueryBudgetExhausted(RuntimeError):
    """A query would take a sample past the attack's `max_queries`: the attack stops there."""


class QueryModel(nn.Module):
    """Wraps a defense for one batch of originals x (B, 1, 28, 28) with labels y (B,).

    - `queries` (B,): forward rows per sample, counted here and never estimated (foolbox 3
      counts nothing). A call's rows belong to `rows` (indices into the batch) or, when not
      given, to the samples selected with `only(rows)` (all by default), in order.
    - `best` (B, 1, 28, 28) and `best_distance` (B,): the smallest adversarial under `norm`
      among every queried image that lies in [0, 1], as foolbox 1.3's `Adversarial` kept; an
      attack that returns only its last iterate loses nothing it met on the way.
    - A model whose `gradient` is "none" refuses inputs that require grad: the harness, not
      the declaration, keeps autograd away from it.
    - `max_queries`: a call that would take any of its samples past it raises
      QueryBudgetExhausted (the harness then keeps what the attack met so far).
    """

    def __init__(
        self,
        defense: Defense,
        x: torch.Tensor,
        y: torch.Tensor,
        norm: str,
        max_queries: int | None = None,
    ) -> None:
        super().__init__()
        self.max_queries = max_queries
        self.defense = defense
        self.norm = norm
        self.register_buffer("x", x.detach())
        self.register_buffer("y", y)
        self.queries = torch.zeros(len(x), dtype=torch.long, device=x.device)
        self.best = x.detach().clone()
        self.best_distance = torch.full((len(x),), float("inf"), device=x.device)
        self._active = torch.arange(len(x), device=x.device)
        self.train(False)

    @contextlib.contextmanager
    def only(self, rows: torch.Tensor) -> Iterator[None]:
        """Calls without `rows` in this block are about the samples `rows` (a library attack run
        on a subset of the batch)."""
        previous, self._active = self._active, rows.to(self.x.device)
        try:
            yield
        finally:
            self._active = previous

    def forward(self, inputs: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """inputs (R, 1, 28, 28) for samples `rows` (R,) -> logits (R, 10)."""
        rows = self._active if rows is None else rows.to(self.x.device)
        if len(inputs) != len(rows):
            raise ValueError(f"{len(inputs)} inputs for {len(rows)} samples: pass rows=.")
        if inputs.requires_grad and self.defense.gradient == "none":
            raise GradientUnavailable(
                f"model={self.defense.name} has no input gradient (gradient: none): use a "
                "decision- or score-based attack."
            )
        if self.max_queries is not None and (self.queries[rows] >= self.max_queries).any():
            raise QueryBudgetExhausted(f"max_queries={self.max_queries} reached")
        logits = self.defense(inputs)
        self._remember(inputs.detach(), logits.detach(), rows)
        return logits

    def _remember(self, inputs: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> None:
        self.queries[rows] += 1
        flat = inputs.flatten(1)
        valid = (flat >= 0).all(1) & (flat <= 1).all(1) & torch.isfinite(logits).all(1)
        adversarial = valid & (logits.argmax(1) != self.y[rows])
        if not adversarial.any():
            return
        found = distance(inputs[adversarial], self.x[rows[adversarial]], self.norm)
        improves = found < self.best_distance[rows[adversarial]]
        where = rows[adversarial][improves]
        self.best_distance[where] = found[improves]
        self.best[where] = inputs[adversarial][improves]

    def predict(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Labels (R,) of inputs for samples rows, counted and remembered, without gradients."""
        with torch.no_grad():
            return self(inputs, rows).argmax(1)
