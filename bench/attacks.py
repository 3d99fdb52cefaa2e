"""Cost of each attack per sample: seconds and model queries, to plan a sweep.

python -m bench.attacks --model cnn --samples 100
python -m bench.attacks --model abs --samples 4 --budget boundary.steps=200

Runs each configured attack (conf/attack/<name>.yaml, the paper's budgets unless --budget
lowers them, and the table then says so) through the harness on the first test images with the
authors' published weights, and writes its section of results/attacks_speed.md (one section per
model and device) with the command, commit, hardware and sample count. Times are wall-clock
seconds per attacked sample for a batch of --samples images (batching lowers them);
s/query is the time per forward row, so a budget change can be extrapolated.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from abslab.attacks.harness import run_attack
from abslab.attacks.suite import instantiate_attack
from abslab.data.mnist import first_test_images
from abslab.models.abs import ABSDefense
from abslab.models.base import Defense
from abslab.models.cnn import CNNDefense
from abslab.utils.run_io import command_line, git_commit, hardware
from bench.configs import attack_config

REPO = Path(__file__).resolve().parents[1]
SUITES = {
    "l2": ["gaussian_noise", "boundary", "pointwise_l2", "fgm", "deepfool_l2", "bim_l2"],
    "linf": ["fgsm", "deepfool_linf", "bim", "mim", "pgd"],
    "l0": ["salt_pepper", "pointwise"],
}


def load_model(name: str, weights: Path) -> Defense:
    if name == "cnn":
        return CNNDefense(pretrained=str(weights / "cnn")).eval()
    return ABSDefense(pretrained=str(weights / "abs")).eval()


def lowered(name: str, budget: list[str]) -> list[str]:
    """The `key=value` items of --budget that belong to attack `name` (given as name.key=value)."""
    return [item.split(".", 1)[1] for item in budget if item.split(".", 1)[0] == name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cnn", "abs"], default="cnn")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--norms", nargs="+", default=list(SUITES))
    parser.add_argument("--only", nargs="*", default=None, help="attack names to run")
    parser.add_argument("--budget", nargs="*", default=[], help="attack.key=value overrides")
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--weights", default=str(REPO.parent / "shared/data/reference_models"))
    parser.add_argument("--out", default=str(REPO / "results" / "attacks_speed.md"))
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    x, y, _ = first_test_images(args.root, args.samples)
    model = load_model(args.model, Path(args.weights))
    with torch.no_grad():
        clean = model(x).argmax(1)
    lines = [
        f"## {args.model}, {hardware()}",
        "",
        f"`{command_line()}` at commit {git_commit()}; the first {args.samples} test images "
        f"({int((clean == y).sum())} correctly classified and attacked), one batch.",
        "",
        "| norm | attack | code | budget changed from the paper's | s/sample | queries/sample "
        "| ms/query | broken | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for norm in args.norms:
        for name in SUITES[norm]:
            if args.only and name not in args.only:
                continue
            changed = lowered(name, args.budget)
            attack = instantiate_attack(name, attack_config(name, changed))
            started = time.perf_counter()
            outcome = run_attack(attack, model, x, y, clean, seed=0)
            elapsed = time.perf_counter() - started
            attacked = clean == y
            queries = outcome.queries[attacked].float().mean().item()
            seconds = elapsed / int(attacked.sum())
            broken = int((outcome.success & attacked).sum())
            changes = ", ".join(changed) or "none"
            lines.append(
                f"| {norm} | {name} | {attack.source} | {changes} | {seconds:.3f} | "
                f"{queries:.0f} | {1000 * seconds / max(queries, 1):.2f} | "
                f"{broken}/{int(attacked.sum())} | {sum(bool(e) for e in outcome.error)} |"
            )
            print(lines[-1], flush=True)
    write_section(Path(args.out), f"## {args.model}, ", "\n".join(lines) + "\n")


def write_section(path: Path, heading_prefix: str, section: str) -> None:
    """Replace this model's section of the results file (or append it)."""
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"^{re.escape(heading_prefix)}.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text + section
    path.write_text(text)


HEADER = """# Attack cost per sample (bench/attacks.py)

Seconds and model queries (forward rows, counted by the harness) per attacked sample, for
planning a sweep. Each section names its command, commit, hardware and samples.

"""


if __name__ == "__main__":
    main()
