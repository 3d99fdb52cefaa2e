"""Where abslab's ABS inference spends its time on this CPU, against the machine's fp32 peak.

python -m bench.abs_profile --images 16

Profiles (torch.profiler) one inference of the first test images, published weights, with the
default chunk, and lists the operators by self time with their share. For the decoder's
convolutions it counts the multiply-adds from the layer shapes (a transposed convolution and
its adjoint both do n_in^2 * C_in * C_out * k^2 per class and image) and reports GFLOP/s and the
fraction of the peak, measured in the same process as the best of five 2048x2048 matrix
products. Writes the `cpu-profile` section of results/abs_inference.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from abslab.data.mnist import first_test_images
from abslab.models.abs import ABSDefense
from abslab.models.vae import DECODER_LAYERS, N_CLASSES
from abslab.utils.run_io import command_line, git_commit, hardware
from bench.abs_inference import write_section

# the input side of each decoder layer: 1x1 latents, then (n - 1) * stride + k per layer
SIDES = [1]
for _, _, kernel, stride in DECODER_LAYERS[:-1]:
    SIDES.append((SIDES[-1] - 1) * stride + kernel)
# weight shape of each grouped (transposed) convolution -> (layer, MACs per class and image),
# for layers 1-3 (layer 0, 1x1 -> 4x4, is a matrix product)
CONV_LAYERS = {
    (N_CLASSES * c_in, c_out, k, k): (i, SIDES[i] ** 2 * c_in * c_out * k * k)
    for i, (c_in, c_out, k, _) in enumerate(DECODER_LAYERS)
    if i > 0
}


def peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


CONV_KERNELS = ("aten::convolution_backward", "aten::mkldnn_convolution")  # not their callers


def conv_flops(key: str, shapes: list[list[int]]) -> tuple[str, float] | None:
    """(which layer, FLOPs) of a profiled decoder convolution kernel, from its input shapes."""
    if key not in CONV_KERNELS:
        return None
    for shape in shapes:
        if tuple(shape) in CONV_LAYERS:
            layer, macs = CONV_LAYERS[tuple(shape)]
            return f"layer {layer}", 2.0 * macs * N_CLASSES * shapes[0][0]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="../shared/data/mnist")
    parser.add_argument("--weights", default="../shared/data/reference_models/abs")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--out", default="results/abs_inference.md")
    args = parser.parse_args()

    torch.set_flush_denormal(True)
    x = first_test_images(args.root, args.images)[0]
    model = ABSDefense(pretrained=args.weights, clip_mode="authors").eval()
    peak = peak_gflops()
    with torch.no_grad():
        model(x[:1])  # decode the bank outside the profile
        start = time.perf_counter()
        model(x)
        plain = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x)
    events = sorted(
        prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total
    )
    total = sum(e.self_cpu_time_total for e in events)
    lines = [
        f"## CPU profile: {hardware()}",
        "",
        f"Command: `{command_line()}`; commit {git_commit()}; {args.images} images, chunk "
        f"{model.inference_chunk or model.default_chunk()}. Without the profiler the inference "
        f"ran at {args.images / plain:.1f} img/s. Peak: {peak:.0f} GFLOP/s (best of five "
        "2048x2048 fp32 matrix products, same process). Share: of the profiled self time.",
        "",
        "| operator | what | input shapes | calls | ms | share | GFLOP/s | of peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    conv_time = conv_work = 0.0
    for event in events:
        shapes = [s for s in event.input_shapes if s]
        counted = conv_flops(event.key, shapes)
        seconds = event.self_cpu_time_total / 1e6
        if counted is not None:
            conv_time += seconds
            conv_work += counted[1] * event.count
        if len(lines) - 6 < args.top:
            what = ""
            rate = fraction = ""
            if counted is not None:
                kind = "transposed conv" if "backward" in event.key else "adjoint conv"
                what = f"{kind}, {counted[0]}"
                gflops = counted[1] * event.count / seconds / 1e9
                rate, fraction = f"{gflops:.0f}", f"{gflops / peak:.0%}"
            lines.append(
                f"| {event.key} | {what} | {shapes[:2]} | {event.count} | {seconds * 1e3:.0f} | "
                f"{event.self_cpu_time_total / total:.1%} | {rate} | {fraction} |"
            )
    lines += [
        "",
        f"The decoder's convolutions: {conv_time / (total / 1e6):.0%} of the time, at "
        f"{conv_work / conv_time / 1e9:.0f} GFLOP/s ({conv_work / conv_time / 1e9 / peak:.0%} of "
        f"peak). At peak they alone would take {conv_work / peak / 1e9 * 1e3:.0f} ms of the "
        f"{total / 1e3:.0f} ms profiled. The `copy_` rows of the transposed convolutions' "
        "output shapes are theirs: PyTorch copies the input gradient out of oneDNN's layout.",
    ]
    text = "\n".join(lines) + "\n"
    write_section(Path(args.out), "cpu-profile", text)
    print(text)


if __name__ == "__main__":
    main()
