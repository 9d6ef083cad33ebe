"""Occlusion speed: cnnlens vs captum vs the floor, in one run.

resnet18 (random weights), 224x224, batch 1, window 16, stride 8 (27 x 27 = 729 windows),
baseline 0, 32 occluded inputs per forward for both (captum's ``perturbations_per_eval``),
CPU, top class. The floor is the 729 occluded inputs (made beforehand) and the image run as
plain batched forwards, in the default memory layout (what captum runs) and in channels-last.

    python benchmarks/bench_occlusion.py [--repeats 3] [--size 224] [--batch-size 32] [--quick]
"""

from __future__ import annotations

import argparse
import math

import torch
import torchvision

import cnnlens
from common import interleaved_medians, machine, markdown_table, setup_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="112x112, one repeat (< 1 min)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 112, 1
    setup_threads()

    from captum.attr import Occlusion

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = int(model(x).argmax())
    w, s, bs = args.window, args.stride, args.batch_size
    n_windows = (math.ceil((args.size - w) / s) + 1) ** 2

    def run_cnnlens() -> torch.Tensor:
        return cnnlens.explain(
            model, x, "occlusion", target=top, window=w, stride=s, batch_size=bs
        ).raw

    captum_occ = Occlusion(model)

    def run_captum() -> torch.Tensor:
        with torch.no_grad():
            return captum_occ.attribute(
                x,
                target=top,
                sliding_window_shapes=(3, w, w),
                strides=(3, s, s),
                baselines=0.0,
                perturbations_per_eval=bs,
            )

    n_side = math.ceil((args.size - w) / s) + 1
    occluded = x.repeat(n_windows, 1, 1, 1)  # the occluded inputs, made beforehand
    for i in range(n_windows):
        y0, x0 = (i // n_side) * s, (i % n_side) * s
        occluded[i, :, y0 : y0 + w, x0 : x0 + w] = 0.0

    def floor(fmt: torch.memory_format) -> None:
        with torch.inference_mode():
            model(x.contiguous(memory_format=fmt))
            for start in range(0, n_windows, bs):
                model(occluded[start : start + bs].contiguous(memory_format=fmt))

    ours, ref = run_cnnlens(), run_captum()
    err = float((ours - ref).abs().max() / ref.abs().max())
    medians = interleaved_medians(
        {
            "cnnlens": run_cnnlens,
            "captum": run_captum,
            "floor (default layout)": lambda: floor(torch.contiguous_format),
            "floor (channels-last)": lambda: floor(torch.channels_last),
        },
        repeats=args.repeats,
    )
    print(
        f"Occlusion, resnet18, {args.size}x{args.size}, batch 1, window {w}, stride {s} "
        f"({n_windows} windows), {bs} per forward, CPU"
    )
    print(f"machine: {machine()}")
    print(markdown_table(medians, "cnnlens"))
    print(f"\nmax |cnnlens - captum| / max |captum| = {err:.1e}")


if __name__ == "__main__":
    main()
