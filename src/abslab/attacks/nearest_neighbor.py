"""Exact smallest adversarials of the 1-nearest-neighbour classifier (docs/attacks.md §11).

Wang et al. 2019 (arXiv 1906.03972), adapted: x + d is adversarial when some reference image
r_j of another class is nearer to it than every reference r_i of the label's class. With a
margin m > 0 each such condition is linear in d,

    |x + d - r_j|^2 <= |x + d - r_i|^2 - m  <=>  2 (r_i - r_j) . (x + d) <= |r_i|^2 - |r_j|^2 - m,

so the smallest d for candidate j inside the pixel box is a QP (L2: minimise |d|^2) or an LP
(L-inf: minimise t with |d_k| <= t), and the smallest over all candidates is the exact smallest
adversarial up to the margin. Each candidate's problem starts from the label's references nearest
to x and adds the ones its solution violates until none is (constraint generation). Candidates
go in the order of a lower bound on their distance (the distance from x to the halfspace of one
condition: the dual norm of its normal); once the bound reaches the best distance found, no
remaining candidate can win and the sample's result is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import daqp
import numpy as np
import torch
from scipy import sparse
from scipy.optimize import linprog

from abslab.attacks.base import Attack
from abslab.attacks.queries import QueryModel
from abslab.models.base import Defense

EXACT = "exact"
UPPER_BOUND = "upper bound"
DAQP_OPTIMAL, DAQP_INFEASIBLE = 1, -1  # daqp exit flags
HIGHS_OPTIMAL, HIGHS_INFEASIBLE = 0, 2  # scipy.optimize.linprog status codes


@dataclass
class Solution:
    """The search's result for one sample: the smallest perturbation d (D,) found (None: no
    candidate is reachable inside the box), its distance, and whether it is proven smallest."""

    perturbation: np.ndarray | None
    distance: float
    exact: bool


class References:
    """The model's reference set in float64 on the CPU: images (N, D), squared norms (N,) and
    labels (N,). Float64 keeps the conditions' rounding far below the margin."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images.detach().to("cpu", torch.float64).flatten(1)
        self.sq_norms = (self.images * self.images).sum(1)
        self.labels = labels.cpu()


@dataclass(eq=False)
class ReferenceSetAttack(Attack):
    """An attack that reads the reference set of a `nearest_neighbor` model (the exact L2 and
    L-inf attacks, the greedy L0 one) and queries the model only to verify its images."""

    def unsupported(self, defense: Defense) -> str | None:
        if not defense.nearest_neighbor:
            return (
                f"model={defense.name} is no nearest-neighbour classifier (nearest_neighbor = "
                "False): the attack reads its reference set"
            )
        return super().unsupported(defense)

    @staticmethod
    def not_adversarial(
        model: QueryModel, adversarial: torch.Tensor, y: torch.Tensor, found: torch.Tensor
    ) -> torch.Tensor:
        """Which found images (B,) bool the model, queried once per sample (counted, and with
        the harness's margin), does not call adversarial; adversarial (B, 1, 28, 28)."""
        rows = torch.arange(len(adversarial), device=adversarial.device)
        return found & (model.predict(adversarial, rows).cpu() == y.cpu())


@dataclass(eq=False)
class NearestNeighborExact(ReferenceSetAttack):
    """The smallest L2 (QP) or L-inf (LP) adversarial of a `nearest_neighbor` model, solved
    from its reference set; the model is queried once per sample, to verify the float32 image.

    - `max_candidates`: other-class references whose problem is solved per sample at most; a
      sample it stops before the bound closes is noted "upper bound", otherwise "exact".
    - `initial_constraints`: the label's references nearest to x that every problem starts
      with; the lower bound takes the largest of their halfspace distances.
    - `constraints_per_round`: the most violated conditions added per round; `max_rounds`
      rounds at most per candidate (a candidate that needs more leaves an upper bound).
    - `margin`: m above, in squared L2 units, so that float32 rounding cannot undo the win.
    - `primal_tolerance`: the solver's feasibility tolerance, also the violation the rounds
      accept; `iteration_limit`: the solver's (DAQP active-set, HiGHS simplex) iterations.
    """

    norms = ("l2", "linf")
    accepts_start = False

    max_candidates: int = 1000
    initial_constraints: int = 20
    constraints_per_round: int = 20
    max_rounds: int = 50
    margin: float = 1e-2
    primal_tolerance: float = 1e-9
    iteration_limit: int = 10_000

    def run(
        self,
        model: QueryModel,
        x: torch.Tensor,
        y: torch.Tensor,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, 1, 28, 28) correctly classified, y (B,) -> adversarials (B, 1, 28, 28), x
        itself where no candidate is reachable; each sample noted "exact" or "upper bound"."""
        references = References(*model.defense.reference_set())
        flat = x.detach().to("cpu", torch.float64).flatten(1)
        adversarial = x.detach().clone()
        exact = torch.zeros(len(x), dtype=torch.bool)
        found = torch.zeros(len(x), dtype=torch.bool)
        for i in range(len(x)):
            solution = self.solve(references, flat[i], int(y[i]))
            exact[i] = solution.exact
            if solution.perturbation is not None:
                found[i] = True
                image = (flat[i] + torch.from_numpy(solution.perturbation)).clamp(0, 1)
                adversarial[i] = image.reshape(x.shape[1:]).to(x)
        rows = torch.arange(len(x))
        lost = self.not_adversarial(model, adversarial, y, found)
        for where, note in [
            (exact & ~lost, EXACT),  # also a sample proven to have no adversarial in the box
            (~exact & ~lost, UPPER_BOUND),
            (lost, f"not adversarial by the harness's margin: raise attack.{self.name}.margin"),
        ]:
            model.set_note(rows[where].to(x.device), note)
        return adversarial

    def solve(self, references: References, x: torch.Tensor, label: int) -> Solution:
        """The smallest perturbation of x (D,) float64 that another class's reference wins."""
        sq_dist = references.sq_norms + x @ x - 2 * references.images @ x
        same = (references.labels == label).nonzero().flatten()
        same = same[sq_dist[same].argsort()]
        other = (references.labels != label).nonzero().flatten()
        initial = same[: self.initial_constraints]
        bounds = self.lower_bounds(references, sq_dist, initial, other)
        order = bounds.argsort()
        best = Solution(None, float("inf"), exact=True)
        for tried, k in enumerate(order.tolist()):
            if bounds[k] >= best.distance:  # the bound closed every remaining candidate
                return best
            if tried == self.max_candidates:
                best.exact = False
                return best
            found = self.solve_candidate(references, x, int(other[k]), same, initial, best)
            if found is None:
                best.exact = False
            elif found.distance < best.distance:
                best = Solution(found.perturbation, found.distance, best.exact)
        return best  # every candidate solved

    def lower_bounds(
        self,
        references: References,
        sq_dist: torch.Tensor,
        initial: torch.Tensor,
        other: torch.Tensor,
    ) -> torch.Tensor:
        """Per candidate of `other` (C,): no perturbation smaller than this makes it win.

        Winning over r_i needs the halfspace above, a . (x + d) <= b with a = 2 (r_i - r_j);
        its distance from x is (|x - r_j|^2 - |x - r_i|^2 + m) / |a|_dual (dual norm: L2 for
        L2, L1 for L-inf), and every condition must hold, so the largest over `initial` counts.
        It is at least the triangle-inequality bound (|x - r_j| - |x - r_i|) / 2 in L2.
        """
        images, sq_norms = references.images, references.sq_norms
        if self.norm == "l2":  # by the Gram matrix: no (C, D) copy of the references
            sq_apart = sq_norms[:, None] + sq_norms[initial][None] - 2 * images @ images[initial].T
            apart = sq_apart.clamp_min(0).sqrt()
        else:
            apart = torch.cdist(images, images[initial], p=1.0)
        gap = sq_dist[other][:, None] - sq_dist[initial][None] + self.margin  # (C, K)
        return (gap / (2 * apart[other]).clamp_min(1e-12)).amax(1).clamp_min(0)

    def solve_candidate(
        self,
        references: References,
        x: torch.Tensor,
        j: int,
        same: torch.Tensor,
        initial: torch.Tensor,
        best: Solution,
    ) -> Solution | None:
        """Candidate j's smallest perturbation by constraint generation: a Solution (distance
        inf when unreachable or when a relaxation already loses to `best`), or None when a
        solve failed or the rounds ran out (the candidate stays undecided)."""
        images, sq_norms = references.images, references.sq_norms
        rows = initial
        x_np = x.numpy()
        for _ in range(self.max_rounds):
            normal = 2 * (images[rows] - images[j])
            bound = sq_norms[rows] - sq_norms[j] - self.margin - normal @ x
            status, d = self.solve_program(normal.numpy(), bound.numpy(), x_np)
            if status == "infeasible":
                return Solution(None, float("inf"), exact=True)
            if status == "failed":
                return None
            distance = float(np.linalg.norm(d, ord=2 if self.norm == "l2" else np.inf))
            if distance >= best.distance:  # a relaxation: the full problem is no smaller
                return Solution(None, float("inf"), exact=True)
            z = x + torch.from_numpy(d)
            along = images @ z  # (N,): no (S, D) copy of the label's references
            excess = 2 * (along[same] - along[j]) - sq_norms[same] + sq_norms[j] + self.margin
            violated = (excess > self.primal_tolerance).nonzero().flatten()
            if len(violated) == 0:
                return Solution(d, distance, exact=True)
            worst = violated[excess[violated].argsort(descending=True)]
            rows = torch.cat([rows, same[worst[: self.constraints_per_round]]])
        return None

    def solve_program(
        self, normal: np.ndarray, bound: np.ndarray, x: np.ndarray
    ) -> tuple[str, np.ndarray]:
        """The smallest d (D,) with normal (K, D) @ d <= bound (K,) and 0 <= x + d <= 1:
        status "optimal", "infeasible" or "failed" (anything else the solver reports)."""
        if self.norm == "l2":
            return self._quadratic(normal, bound, x)
        return self._linear(normal, bound, x)

    def _quadratic(
        self, normal: np.ndarray, bound: np.ndarray, x: np.ndarray
    ) -> tuple[str, np.ndarray]:
        """min |d|^2 by DAQP (a dual active-set method: exact up to its tolerance). DAQP
        reads the first D entries of the bounds as simple bounds on d."""
        n = len(x)
        upper = np.concatenate([1 - x, bound])
        lower = np.concatenate([-x, np.full(len(bound), -np.inf)])
        sense = np.zeros(len(upper), dtype=np.int32)
        d, _, flag, _ = daqp.solve(
            np.eye(n),
            np.zeros(n),
            np.ascontiguousarray(normal),
            upper,
            lower,
            sense,
            primal_tol=self.primal_tolerance,
            iter_limit=self.iteration_limit,
        )
        status = {DAQP_OPTIMAL: "optimal", DAQP_INFEASIBLE: "infeasible"}.get(flag, "failed")
        return status, np.asarray(d)

    def _linear(
        self, normal: np.ndarray, bound: np.ndarray, x: np.ndarray
    ) -> tuple[str, np.ndarray]:
        """min t subject to -t <= d_k <= t, over (d, t), by HiGHS's simplex."""
        n = len(x)
        eye, ones = sparse.identity(n, format="csr"), np.ones((n, 1))
        rows = sparse.vstack(
            [
                sparse.hstack([sparse.csr_matrix(normal), sparse.csr_matrix((len(bound), 1))]),
                sparse.hstack([eye, -ones]),
                sparse.hstack([-eye, -ones]),
            ],
            format="csr",
        )
        result = linprog(
            c=np.r_[np.zeros(n), 1.0],
            A_ub=rows,
            b_ub=np.r_[bound, np.zeros(2 * n)],
            bounds=np.c_[np.r_[-x, 0.0], np.r_[1 - x, np.inf]],
            method="highs",
            options={
                "primal_feasibility_tolerance": self.primal_tolerance,
                "maxiter": self.iteration_limit,
            },
        )
        status = {HIGHS_OPTIMAL: "optimal", HIGHS_INFEASIBLE: "infeasible"}.get(result.status)
        return status or "failed", (result.x[:n] if result.x is not None else np.zeros(n))
