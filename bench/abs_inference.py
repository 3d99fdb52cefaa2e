"""ABS inference speed: abslab against the authors' own code and a reference, in one run.

python -m bench.abs_inference --authors-code DIR --device cpu
python -m bench.abs_inference --authors-code DIR --device cuda --batch-sizes 1 10 100 1000

DIR is a clone of bethgelab/AnalysisBySynthesis (bench/authors_code.py loads it; without it the
authors' rows are skipped, and said so). Every variant classifies the same first test images
with the published weights and bank: the authors' `get_VAE()` as they publish it, the reference
(bench/abs_reference.py, their structure re-typed) and abslab's inference with their clip: the
default CPU kernel (`inference_kernel`), plain torch and compiled torch (`compile_inference`).
The repeats run round-robin over the variants.
Reported per batch size: images/s, latency of one batch (median over repeats), peak memory
(above what was in use before it: CPU resident set, GPU allocated memory), the speed-up against
the authors' code (on CPU the faster of its two rows, as published and with denormals flushed,
at each batch) and against the reference, and the agreement with that baseline: predictions,
and the largest logit difference, absolute and relative (|ours - theirs| / |theirs|).
Writes its section of results/abs_inference.md (one per device) with hardware and commit.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from abslab.data.mnist import first_test_images
from abslab.models.abs import ABSDefense
from abslab.utils.run_io import command_line, git_commit, hardware
from bench.abs_reference import ReferenceABS, load_reference_vaes
from bench.authors_code import authors_modules, missing_reason, revision


@dataclass
class Variant:
    name: str
    classify: Callable[[torch.Tensor], torch.Tensor]  # x (B, 1, 28, 28) -> logits (B, 10)
    flush_denormals: bool
    tf32: bool = False
    cudnn_benchmark: bool = False
    warmup_sizes: tuple[int, ...] = (1,)  # untimed calls first: caches, compiled graphs


@dataclass
class Measurement:
    variant: str
    batch: int
    seconds: list[float]
    peak_bytes: int
    logits: torch.Tensor  # (B, 10) on the CPU


def process_memory(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in bytes (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) * 1024


def reset_peak_memory(device: torch.device) -> int:
    """Start a peak-memory measurement; returns the memory in use now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak resident set
    return process_memory("VmRSS")


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return process_memory("VmHWM")


def measure(variant: Variant, x: torch.Tensor, repeats: int, warmup: bool) -> Measurement:
    """`repeats` timed calls on x; `warmup`: untimed calls on the variant's warm-up sizes first
    (caches; a compiled variant's graphs for chunks of 1, 16 and any other size)."""
    torch.set_flush_denormal(variant.flush_denormals)
    torch.backends.cuda.matmul.allow_tf32 = variant.tf32
    torch.backends.cudnn.allow_tf32 = variant.tf32
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.no_grad():
        if warmup:
            for size in variant.warmup_sizes:
                variant.classify(x[:size])
        in_use = reset_peak_memory(x.device)
        seconds = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            logits = variant.classify(x)
            sync()
            seconds.append(time.perf_counter() - start)
    extra = peak_memory(x.device) - in_use
    return Measurement(variant.name, len(x), seconds, extra, logits.float().cpu())


AUTHORS = "authors' code"  # CPU: the faster of the two rows below, per batch
AUTHORS_ROWS = ("authors' code, as published", "authors' code, denormals flushed")
REFERENCE = "reference (authors' structure), denormals flushed"


def variants(args: argparse.Namespace, device: torch.device) -> list[Variant]:
    """The authors' code (when given), the reference, and abslab's inference."""
    ours = ABSDefense(pretrained=args.weights, clip_mode="authors").to(device).eval()
    ours._inference_parts()  # decode the bank once, outside the timings
    reference = ReferenceABS(
        [vae.to(device) for vae in load_reference_vaes(args.weights)], ours.bank_latents
    )
    theirs = []
    reason = missing_reason(args.authors_code)
    if reason is None:
        models, _ = authors_modules(args.authors_code)
        authors = models.get_VAE(n_iter=50)  # their weights from the clone; their bank
        if device.type == "cpu":
            theirs = [
                Variant(AUTHORS_ROWS[0], authors, False),
                Variant(AUTHORS_ROWS[1], authors, True),
            ]
        else:
            theirs = [Variant(AUTHORS, authors, False)]
    else:
        print(f"Skipping the authors' code: {reason}.", flush=True)
    if device.type == "cpu":
        plain = ABSDefense(pretrained=args.weights, clip_mode="authors", inference_kernel=False)
        compiled = ABSDefense(pretrained=args.weights, clip_mode="authors", compile_inference=True)
        for model in (plain, compiled):
            model.eval()._inference_parts()
        return [
            *theirs,
            Variant(REFERENCE, reference, True),
            Variant("abslab (kernel)", ours, True),
            Variant("abslab, plain torch", plain, True),
            Variant("abslab, compiled torch", compiled, True, warmup_sizes=(1, 16, 5)),
        ]
    graphed = ABSDefense(pretrained=args.weights, clip_mode="authors", cuda_graphs=True)
    graphed = graphed.to(device).eval()
    return [
        *theirs,
        Variant(REFERENCE, reference, False),
        Variant("abslab, fp32", ours, False),
        Variant("abslab, fp32, CUDA graphs, cudnn.benchmark", graphed, False, cudnn_benchmark=True),
        Variant("abslab, TF32, CUDA graphs, cudnn.benchmark", graphed, False, True, True),
    ]


def baseline_of(by_key: dict[tuple[str, int], Measurement], batch: int) -> Measurement:
    """The authors' code at this batch (the faster of its rows), else the reference."""
    theirs = [by_key[(name, batch)] for name in (AUTHORS, *AUTHORS_ROWS) if (name, batch) in by_key]
    if not theirs:
        return by_key[(REFERENCE, batch)]
    return min(theirs, key=lambda m: statistics.median(m.seconds))


def markdown(args: argparse.Namespace, results: list[Measurement], device: torch.device) -> str:
    by_key = {(m.variant, m.batch): m for m in results}
    reason = missing_reason(args.authors_code)
    baseline = (
        f"**the authors' code** (`{args.authors_code}`, AnalysisBySynthesis "
        f"{revision(args.authors_code)}, `get_VAE()` unchanged; on CPU the faster of its two "
        "rows at each batch)"
        if reason is None
        else f"**the reference** (no authors' code: {reason})"
    )
    lines = [
        f"## {device.type.upper()}: {hardware()}",
        "",
        f"Command: `{command_line()}`; commit {git_commit()}; published weights and bank; the "
        f"first test images; median of {args.repeats} repeats (fewer where marked). Baseline: "
        f"{baseline}. Agreement (predictions, largest logit difference: absolute, and "
        "relative to the baseline's logit) is against the baseline on the same batch.",
        "",
        "| batch | variant | images/s | latency (s/batch) | peak extra memory (MiB) | "
        "speed-up vs authors' code | speed-up vs reference | agreement | max logit diff | "
        "max relative logit diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        base = baseline_of(by_key, m.batch)
        latency = statistics.median(m.seconds)
        speedup = f"{statistics.median(base.seconds) / latency:.1f}x" if reason is None else "-"
        versus_reference = statistics.median(by_key[(REFERENCE, m.batch)].seconds) / latency
        agree = (m.logits.argmax(1) == base.logits.argmax(1)).float().mean().item()
        diff = (m.logits - base.logits).abs()
        relative = (diff / base.logits.abs()).max().item()
        runs = "" if len(m.seconds) == args.repeats else f" ({len(m.seconds)} run)"
        lines.append(
            f"| {m.batch} | {m.variant}{runs} | {m.batch / latency:.2f} | {latency:.4f} | "
            f"{m.peak_bytes / 2**20:.0f} | {speedup} | {versus_reference:.1f}x | "
            f"{agree:.3f} | {diff.max().item():.1e} | {relative:.1e} |"
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, device: str, text: str) -> None:
    """Replace this device's section of the results file, keeping the others."""
    begin, end = f"<!-- bench:{device} -->", f"<!-- /bench:{device} -->"
    header = "# ABS inference speed (bench/abs_inference.py)\n\n"
    old = path.read_text() if path.exists() else header
    block = f"{begin}\n{text}{end}\n"
    if begin in old:
        old = re.sub(
            re.escape(begin) + ".*?" + re.escape(end) + "\n", lambda _: block, old, flags=re.S
        )
        path.write_text(old)
    else:
        path.write_text(old.rstrip("\n") + "\n\n" + block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="data")
    parser.add_argument("--weights", default="../shared/data/reference_models/abs")
    parser.add_argument(
        "--authors-code", default=None, help="a clone of bethgelab/AnalysisBySynthesis"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=60.0,
        help="a variant whose first timed run takes longer is not repeated",
    )
    parser.add_argument("--out", default="results/abs_inference.md")
    args = parser.parse_args()

    device = torch.device(args.device)
    images = first_test_images(args.root, max(args.batch_sizes))[0].to(device)
    candidates = variants(args, device)
    results = []
    for batch in args.batch_sizes:
        x = images[:batch]
        # round-robin: every variant's first timed run, then a second round, ...: on a shared
        # machine a slow minute then slows one repeat of each variant, not all of one
        runs = [measure(variant, x, 1, warmup=True) for variant in candidates]
        for _ in range(args.repeats - 1):
            for variant, run in zip(candidates, runs, strict=True):
                if run.seconds[0] < args.slow_seconds:
                    again = measure(variant, x, 1, warmup=False)
                    run.seconds += again.seconds
                    run.peak_bytes = max(run.peak_bytes, again.peak_bytes)
        for variant, run in zip(candidates, runs, strict=True):
            print(f"batch {batch:5d}  {variant.name:50s} {batch / min(run.seconds):9.2f} img/s")
        results += runs
    text = markdown(args, results, device)
    write_section(Path(args.out), device.type, text)
    print(text)


if __name__ == "__main__":
    main()
