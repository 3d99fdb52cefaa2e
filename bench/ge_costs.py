"""What the "w/ GE" attacks cost on ABS: measured at CPU budgets, computed at the paper's.

python -m bench.ge_costs --samples 2 \
    --cpu-budget "estimator=antithetic ge_samples=100 max_queries=300"

A _ge attack spends 1,568 queries (coordinate-wise) on every gradient. For each _ge attack this
measures on the published ABS, first --samples test images, one batch:
- the seconds of one coordinate-wise gradient per sample (1,568 ABS inferences, batched);
- the gradients the attack takes per sample at the paper's budget, counted by running the same
  attack with ABS's own (envelope) gradients, where a gradient costs one query: a forward with
  autograd (DeepFool asks one per candidate class at the same point, which the estimator's
  cache answers once: those count once);
- from the two, the paper-budget cost per sample (gradients x seconds per gradient, plus the
  gradient-free queries at the measured seconds per query): computed, not run;
- the attack itself at the CPU budget given (--cpu-budget, applied to every _ge attack):
  measured seconds and queries per sample.
Writes its section of results/attacks_speed.md with the command, commit, hardware and N.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from abslab.attacks.estimators import GradientEstimator
from abslab.attacks.harness import run_attack
from abslab.attacks.queries import QueryModel
from abslab.attacks.suite import instantiate_attack
from abslab.data.mnist import first_test_images
from abslab.models.abs import ABSDefense
from abslab.models.projected_gradient import input_gradient
from abslab.utils.run_io import command_line, git_commit, hardware
from bench.attacks import write_section
from bench.configs import attack_config

REPO = Path(__file__).resolve().parents[1]
GE_ATTACKS = [
    *("fgm_ge", "deepfool_l2_ge", "bim_l2_ge"),
    *("fgsm_ge", "deepfool_linf_ge", "bim_ge", "mim_ge"),
]


class GradientCounter(nn.Module):
    """ABS as an attack sees it, counting the rows it answers with autograd on (gradients) and
    without (plain queries). Consecutive gradient calls at the same inputs count once."""

    def __init__(self, model: ABSDefense) -> None:
        super().__init__()
        self.model, self.name, self.gradient = model, model.name, model.gradient
        self.gradients, self.plain = 0, 0
        self._last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            repeated = self._last is not None and torch.equal(self._last, x.detach())
            self.gradients += 0 if repeated else len(x)
            self._last = x.detach().clone()
        else:
            self.plain += len(x)
        return self.model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument(
        "--cpu-budget",
        default="estimator.kind=antithetic estimator.samples=100 max_queries=300",
    )
    parser.add_argument("--only", nargs="*", default=GE_ATTACKS)
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--weights", default=str(REPO.parent / "shared/data/reference_models"))
    parser.add_argument("--out", default=str(REPO / "results" / "attacks_speed.md"))
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    x, y, _ = first_test_images(args.root, args.samples)
    model = ABSDefense(pretrained=str(Path(args.weights) / "abs")).eval()
    with torch.no_grad():
        clean = model(x).argmax(1)
    x, y = x[clean == y], y[clean == y]
    n = len(x)

    started = time.perf_counter()
    rows = torch.arange(n)
    estimating = QueryModel(model, x, y, "l2", estimator=GradientEstimator())
    input_gradient(estimating, x, y, rows)
    per_gradient = (time.perf_counter() - started) / n
    per_query = per_gradient / (2 * 784 + 1)

    lines = [
        f"## abs, GE attacks, {hardware()}",
        "",
        f"`{command_line()}` at commit {git_commit()}; published ABS, the first {args.samples} "
        f"test images ({n} correctly classified and attacked), one batch. One coordinate-wise "
        f"gradient: **{per_gradient:.1f} s per sample** (1,569 queries, {1000 * per_query:.0f} "
        "ms per query). Paper budget: the gradients per sample are counted by running the base "
        "attack at the paper's budget with ABS's envelope gradients; the cost is computed from "
        "them, not run. CPU budget: measured.",
        "",
        "| attack | paper budget: gradients/sample | paper budget: s/sample (computed) | "
        f"CPU budget ({args.cpu_budget}) | s/sample (measured) | queries/sample | broken |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.only:
        base = name.removesuffix("_ge")
        counter = GradientCounter(model)
        run_attack(instantiate_attack(base, attack_config(base)), counter, x, y, y, seed=0)
        gradients, plain = counter.gradients / n, counter.plain / n
        paper_seconds = gradients * per_gradient + plain * per_query
        attack = instantiate_attack(name, attack_config(name, args.cpu_budget.split()))
        started = time.perf_counter()
        outcome = run_attack(attack, model, x, y, y, seed=0)
        seconds = (time.perf_counter() - started) / n
        lines.append(
            f"| {name} | {gradients:.0f} | {paper_seconds:,.0f} ({paper_seconds / 3600:.1f} h) | "
            f"as given | {seconds:.1f} | {outcome.queries.float().mean():.0f} | "
            f"{int(outcome.success.sum())}/{n} |"
        )
        print(lines[-1], flush=True)
    write_section(Path(args.out), "## abs, GE attacks, ", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
