"""The defense as an attack sees it: every forward row counted, every adversarial remembered."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from abslab.attacks.distances import distance
from abslab.attacks.estimators import EstimatedLogits, GradientEstimator
from abslab.models.base import Defense, Inference


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
    - `estimator` (the _ge attacks): input gradients come from the estimator's counted
      queries (`EstimatedLogits`), whatever the model's own `gradient`.
    """

    def __init__(
        self,
        defense: Defense,
        x: torch.Tensor,
        y: torch.Tensor,
        norm: str,
        max_queries: int | None = None,
        estimator: GradientEstimator | None = None,
    ) -> None:
        super().__init__()
        self.max_queries = max_queries
        self.estimator = estimator
        self._jacobian_at: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
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
        if inputs.requires_grad and self.estimator is not None:
            return EstimatedLogits.apply(
                inputs, self.scores, self.estimated_jacobian, self._rows(rows)
            )
        rows = self._admit(inputs, rows)
        logits = self.defense(inputs)
        self._remember(inputs.detach(), logits.detach(), rows)
        return logits

    def scores(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Logits (R, 10) of inputs for samples rows, counted, without autograd on the model."""
        with torch.no_grad():
            return self(inputs.detach(), rows)

    def estimated_jacobian(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The estimator's Jacobian (R, 10, 784) at inputs; the last one is kept, so the
        several gradients an attack takes at one point (DeepFool: one per class) cost its
        queries once."""
        cached = self._jacobian_at
        if cached is None or not (torch.equal(cached[0], rows) and torch.equal(cached[1], inputs)):
            jacobian = self.estimator.jacobian(self, inputs, rows)
            self._jacobian_at = cached = (rows.clone(), inputs.clone(), jacobian)
        return cached[2]

    def infer(self, inputs: torch.Tensor, rows: torch.Tensor | None = None) -> Inference:
        """The defense's `infer(inputs)` (ABS: logits, latents, reconstructions), counted and
        remembered as a forward: for attacks that read a model's reconstructions (Latent
        Descent); only defenses that declare `reconstructs` have them."""
        if not self.defense.reconstructs:
            raise TypeError(
                f"model={self.defense.name} does not reconstruct its input (reconstructs = "
                "False): it has no `infer` for attacks to read."
            )
        rows = self._admit(inputs, rows)
        with torch.no_grad():
            out = self.defense.infer(inputs.detach())
        self._remember(inputs.detach(), out.logits.detach(), rows)
        return out

    def _rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        """The samples a call is about: `rows`, or those selected with `only` (all by default)."""
        return self._active if rows is None else rows.to(self.x.device)

    def _admit(self, inputs: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The rows a call is about, after checking the gradient policy and the budget."""
        rows = self._rows(rows)
        if len(inputs) != len(rows):
            raise ValueError(f"{len(inputs)} inputs for {len(rows)} samples: pass rows=.")
        if inputs.requires_grad and self.defense.gradient == "none":
            raise GradientUnavailable(
                f"model={self.defense.name} has no input gradient (gradient: none): use a "
                "decision- or score-based attack, or a _ge attack (estimated gradients)."
            )
        if self.max_queries is not None:
            after = self.queries + torch.bincount(rows, minlength=len(self.queries))
            if (after > self.max_queries).any():
                raise QueryBudgetExhausted(f"max_queries={self.max_queries} reached")
        return rows

    def _remember(self, inputs: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> None:
        """Count the rows (a sample may appear many times: an estimator's queries) and keep,
        per sample, the smallest adversarial among them if it beats the best so far."""
        self.queries.index_add_(0, rows, torch.ones_like(rows))
        flat = inputs.flatten(1)
        valid = (flat >= 0).all(1) & (flat <= 1).all(1) & torch.isfinite(logits).all(1)
        adversarial = valid & (logits.argmax(1) != self.y[rows])
        if not adversarial.any():
            return
        found = distance(inputs[adversarial], self.x[rows[adversarial]], self.norm)
        owners = rows[adversarial]
        smallest = torch.full_like(self.best_distance, float("inf"))
        smallest = smallest.scatter_reduce(0, owners, found, "amin")
        improves = (found == smallest[owners]) & (found < self.best_distance[owners])
        where = owners[improves]
        self.best_distance[where] = found[improves]
        self.best[where] = inputs[adversarial][improves]

    def predict(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Labels (R,) of inputs for samples rows, counted and remembered, without gradients."""
        with torch.no_grad():
            return self(inputs, rows).argmax(1)
