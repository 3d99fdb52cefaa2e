"""The defense as an attack sees it: every forward row and every gradient counted per sample,
each sample's query budget enforced, every adversarial met remembered."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from abslab.attacks.distances import distance
from abslab.attacks.estimators import EstimatedLogits, GradientEstimator
from abslab.models.base import Defense, Inference

# An image is adversarial only if the defense's best wrong logit beats the true one by MARGIN
# in calibrated units: logit_scale * (max_other - true) >= MARGIN (logit_scale: the calibrated
# softmax's alpha, so the rule means the same for every model). A plain argmax accepted ties
# within 5e-5 logits that flipped when the same image was re-predicted at another batch size
# (float32 sums depend on how a batch is cut); 1e-3 is far above such rounding and far below
# any distance the tables resolve. The harness and `python -m abslab.verify` decide with
# `adversarial`. Attacks aim at AIM, twice as far: searches bisect to the very edge of what they
# are shown, so an edge at MARGIN itself would fall back under it at another batch size.
MARGIN = 1e-3
AIM = 2 * MARGIN
# What a frozen sample's rows are answered with: the true class ahead by this many calibrated
# units (probability ~1), so no attack takes the sample further.
FROZEN_MARGIN = 100.0
CLASSES = 10


def margin(logits: torch.Tensor, y: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """logit_scale * (best wrong logit - true logit) (N,) for logits (N, 10), labels y (N,)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return logit_scale * (others.amax(1) - true)


def adversarial(
    logits: torch.Tensor,
    y: torch.Tensor,
    logit_scale: float,
    at_least: float | torch.Tensor = MARGIN,
) -> torch.Tensor:
    """Whether each row of logits (N, 10) is misclassified by at least `at_least` calibrated
    units (N,) bool; a row with NaN or inf is never adversarial."""
    finite = torch.isfinite(logits).all(1)
    return finite & (margin(logits, y, logit_scale) >= at_least)


class GradientUnavailable(RuntimeError):
    """An attack asked autograd for the input gradient of a model whose `gradient` is "none"."""


class QueryModel(nn.Module):
    """Wraps a defense for one batch of originals x (B, 1, 28, 28) with labels y (B,).

    - `queries` (B,): forward rows per sample that reached the defense, counted here and never
      estimated (foolbox 3 counts nothing). A call's rows belong to `rows` (indices into the
      batch) or, when not given, to the samples selected with `only(rows)` (all by default).
    - `gradients` (B,): backward passes that reached the defense's logits, per sample (an
      estimator's gradients are queries, not gradients: they count in `queries`).
    - `max_queries`: a sample that has used it is frozen (`frozen`): its further rows never
      reach the defense and are answered with logits that put the true class FROZEN_MARGIN
      ahead and have a zero gradient, so the attack cannot take it past its budget while the
      other samples go on.
    - `settle`: a sample with an adversarial (`best` found) is settled: its further rows never
      reach the defense and are answered with a wrong class FROZEN_MARGIN ahead, zero gradient.
      For attacks whose work on a sample ends at its first adversarial but whose loop goes on
      querying the batch until every sample has one (foolbox's DeepFool): the sample's counts
      then equal a run at batch size 1, so the attack can run batched.
    - `best` (B, 1, 28, 28) and `best_distance` (B,): the smallest adversarial (misclassified
      by AIM, so the harness's MARGIN holds at any batch size) under `norm` among every
      queried image in [0, 1], as foolbox 1.3's `Adversarial` kept; an attack that returns
      only its last iterate, or raises, loses nothing it met on the way.
    - `margin_view`: the logits returned raise the true class by `aim` / logit_scale, so an
      attack's own argmax test (foolbox's criteria, `predict`) aims beyond the harness's
      margin. The harness sets it; the plain wrapper (distal adversarials) leaves logits as is.
      `aim` (B,) is AIM, lowered for a sample whose given start sits under it (`start_from`).
    - Per-sample randomness: `rand` and `randn` draw each sample's numbers from its own
      generator (seeded by the harness from the sample's test index, `seeds`), so an attack
      drawing from them gives a sample the same numbers in any batch.
    - `has_start` (B,): which samples the harness gave a starting adversarial (`start: best`).
      `index` (B,) and `seed`: the samples' test-file indices and the run seed (for attacks
      that run the harness themselves: transfer). `notes` (B,): `set_note`, written to the
      per-sample CSV.
    - A model whose `gradient` is "none" refuses inputs that require grad: the harness, not
      the declaration, keeps autograd away from it.
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
        seeds: Sequence[int] | None = None,
        margin_view: bool = False,
        settle: bool = False,
    ) -> None:
        super().__init__()
        n, device = len(x), x.device
        self.max_queries = max_queries
        self.estimator = estimator
        self.margin_view = margin_view
        self.settle = settle
        self.aim = torch.full((n,), AIM, device=device)
        self._jacobian_at: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.defense = defense
        self.norm = norm
        self.register_buffer("x", x.detach())
        self.register_buffer("y", y)
        self.queries = torch.zeros(n, dtype=torch.long, device=device)
        self.gradients = torch.zeros(n, dtype=torch.long, device=device)
        self.best = x.detach().clone()
        self.best_distance = torch.full((n,), float("inf"), device=device)
        self.has_start = torch.zeros(n, dtype=torch.bool, device=device)
        self.index = torch.arange(n, device=device)
        self.seed = 0
        self.notes = [""] * n
        seeds = range(n) if seeds is None else seeds
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self._active = torch.arange(n, device=device)
        self.train(False)

    @property
    def frozen(self) -> torch.Tensor:
        """(B,) bool: the samples that have used their `max_queries`."""
        if self.max_queries is None:
            return torch.zeros_like(self.has_start)
        return self.queries >= self.max_queries

    @property
    def settled(self) -> torch.Tensor:
        """(B,) bool: with `settle`, the samples that have an adversarial."""
        if not self.settle:
            return torch.zeros_like(self.has_start)
        return torch.isfinite(self.best_distance)

    def set_note(self, rows: torch.Tensor, text: str) -> None:
        """A note for samples rows (e.g. the exact 1-NN attack: "exact" or "upper bound")."""
        for row in rows.tolist():
            self.notes[row] = text

    def rand(self, rows: torch.Tensor, shape: Sequence[int] = (1, 28, 28)) -> torch.Tensor:
        """Uniform [0, 1) numbers (R, *shape), row r from sample rows[r]'s own generator."""
        return self._draw(torch.rand, rows, shape)

    def randn(self, rows: torch.Tensor, shape: Sequence[int] = (1, 28, 28)) -> torch.Tensor:
        """Standard normal numbers (R, *shape), row r from sample rows[r]'s own generator."""
        return self._draw(torch.randn, rows, shape)

    def _draw(self, draw, rows: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        numbers = [draw(tuple(shape), generator=self.generators[r]) for r in rows.tolist()]
        stacked = torch.stack(numbers) if numbers else torch.empty(0, *shape)
        return stacked.to(self.x.device)

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
        rows = self._checked(inputs, rows)
        admitted = self._admit(rows)
        if len(admitted) == 0:
            return self._view(self._frozen_logits(inputs, rows, CLASSES), rows)
        everyone = len(admitted) == len(rows)
        logits = self.defense(inputs if everyone else inputs[admitted])
        if logits.requires_grad:
            owners = rows[admitted]
            logits.register_hook(lambda grad: self._count_gradient(owners))
        self._remember(inputs[admitted].detach(), logits.detach(), rows[admitted])
        if not everyone:
            frozen = self._frozen_logits(inputs, rows, logits.shape[1])
            logits = frozen.to(logits.dtype).index_put((admitted,), logits)
        return self._view(logits, rows)

    def _count_gradient(self, owners: torch.Tensor) -> None:
        self.gradients.index_add_(0, owners, torch.ones_like(owners))

    def _view(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if not self.margin_view:
            return logits
        shift = nn.functional.one_hot(self.y[rows], logits.shape[1]).to(logits.dtype)
        return logits + shift * (self.aim[rows, None] / self.defense.logit_scale)

    def _frozen_logits(
        self, inputs: torch.Tensor, rows: torch.Tensor, classes: int
    ) -> torch.Tensor:
        """The answer to rows that do not reach the defense (R, classes), with a zero gradient
        (connected to inputs, so autograd still finds them in the graph): for a frozen sample
        the true class FROZEN_MARGIN ahead; for a settled one, a wrong class."""
        y = self.y[rows]
        label = torch.where(self.settled[rows], (y + 1) % classes, y)
        logits = nn.functional.one_hot(label, classes).to(inputs.dtype)
        logits = logits * (FROZEN_MARGIN / self.defense.logit_scale)
        if inputs.requires_grad:
            anchor = inputs.flatten(1)[:, :1] * 0
            logits = logits + torch.where(torch.isfinite(anchor), anchor, 0)
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
        Descent); only defenses that declare `reconstructs` have them. A frozen sample's
        reconstructions are its input itself (nothing to walk towards), its latents zero."""
        if not self.defense.reconstructs:
            raise TypeError(
                f"model={self.defense.name} does not reconstruct its input (reconstructs = "
                "False): it has no `infer` for attacks to read."
            )
        rows = self._checked(inputs, rows)
        admitted = self._admit(rows)
        inputs = inputs.detach()
        logits = self._frozen_logits(inputs, rows, CLASSES)
        reconstructions = inputs.expand(-1, CLASSES, -1, -1).clone()
        latents = torch.zeros(len(rows), CLASSES, 0, device=inputs.device)
        if len(admitted):
            with torch.no_grad():
                out = self.defense.infer(inputs[admitted])
            self._remember(inputs[admitted], out.logits, rows[admitted])
            logits[admitted] = out.logits.to(logits.dtype)
            reconstructions[admitted] = out.reconstructions.to(inputs.dtype)
            latents = latents.new_zeros(len(rows), *out.latents.shape[1:])
            latents[admitted] = out.latents
        return Inference(self._view(logits, rows), latents, reconstructions)

    def _rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        """The samples a call is about: `rows`, or those selected with `only` (all by default)."""
        return self._active if rows is None else rows.to(self.x.device)

    def _checked(self, inputs: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The rows a call is about, after checking their count and the gradient policy."""
        rows = self._rows(rows)
        if len(inputs) != len(rows):
            raise ValueError(f"{len(inputs)} inputs for {len(rows)} samples: pass rows=.")
        if inputs.requires_grad and self.defense.gradient == "none":
            raise GradientUnavailable(
                f"model={self.defense.name} has no input gradient (gradient: none): use a "
                "decision- or score-based attack, or a _ge attack (estimated gradients)."
            )
        return rows

    def _admit(self, rows: torch.Tensor) -> torch.Tensor:
        """Positions (A,) of the call's rows (R,) that reach the defense: none of a settled
        sample; all without a budget; else, per sample, as many of its rows, in order, as its
        budget has left."""
        positions = torch.arange(len(rows), device=rows.device)[~self.settled[rows]]
        rows = rows[positions]
        if self.max_queries is None:
            return positions
        order = torch.argsort(rows, stable=True)
        sorted_rows = rows[order]
        first = torch.searchsorted(sorted_rows, sorted_rows, right=False)
        rank = torch.empty_like(rows)
        rank[order] = torch.arange(len(rows), device=rows.device) - first  # k-th row of its sample
        return positions[self.queries[rows] + rank < self.max_queries]

    def _remember(self, inputs: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> None:
        """Count the rows (a sample may appear many times: an estimator's queries) and keep,
        per sample, the smallest adversarial among them if it beats the best so far."""
        self.queries.index_add_(0, rows, torch.ones_like(rows))
        flat = inputs.flatten(1)
        valid = (flat >= 0).all(1) & (flat <= 1).all(1)
        found = valid & adversarial(logits, self.y[rows], self.defense.logit_scale, self.aim[rows])
        if not found.any():
            return
        size = distance(inputs[found], self.x[rows[found]], self.norm)
        owners = rows[found]
        smallest = torch.full_like(self.best_distance, float("inf"))
        smallest = smallest.scatter_reduce(0, owners, size, "amin")
        improves = (size == smallest[owners]) & (size < self.best_distance[owners])
        where = owners[improves]
        self.best_distance[where] = size[improves]
        self.best[where] = inputs[found][improves]

    def start_from(self, starts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Which starts (R, 1, 28, 28) of samples rows (R,) are adversarial by the harness's
        MARGIN now (R,) bool, counted. A start the harness verified elsewhere (another batch,
        another attack) can sit a float32 rounding under AIM here, which the margin view would
        call not adversarial: for such a sample the view and the kept adversarials aim at the
        midpoint of MARGIN and the start's margin instead, still beyond MARGIN."""
        with torch.no_grad():
            viewed = self(starts, rows)
        rows = rows.to(self.x.device)
        raw = margin(viewed, self.y[rows], self.defense.logit_scale)
        if self.margin_view:
            raw = raw + self.aim[rows]
        usable = torch.isfinite(viewed).all(1) & (raw >= MARGIN)
        lowered = torch.minimum(self.aim[rows], (MARGIN + raw) / 2)
        self.aim[rows[usable]] = lowered[usable]
        return usable

    def predict(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Labels (R,) of inputs for samples rows, counted and remembered, without gradients
        (with `margin_view`, a label other than y means adversarial with the margin)."""
        with torch.no_grad():
            return self(inputs, rows).argmax(1)
