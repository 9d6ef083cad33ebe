"""Integrated gradients speed: cnnlens vs captum vs the floor, in one run.

resnet50 (random weights), 224x224, batch 1, n_steps 50 (Gauss-Legendre), internal batch
size 10 for everyone, CPU, top class. The floor is the 50 forward + backward passes to the
input in the same internal batches, with nothing else; it is timed in the default memory
layout (what captum runs) and in channels-last (what cnnlens chooses on the CPU).

    python benchmarks/bench_ig.py [--repeats 3] [--size 224] [--steps 50] [--ibs 10] [--quick]
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import cnnlens
from cnnlens.core.capture import frozen
from cnnlens.methods.gradients import path_rule
from common import interleaved_medians, machine, markdown_table, setup_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--ibs", type=int, default=10, help="internal batch size")
    parser.add_argument("--quick", action="store_true", help="112x112, 20 steps, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.repeats = 112, 20, 1
    setup_threads()

    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = int(model(x).argmax())
    alphas, weights = path_rule("gausslegendre", args.steps)
    alphas, weights = alphas.float(), weights.float()

    def run_cnnlens() -> torch.Tensor:
        return cnnlens.explain(
            model,
            x,
            "integrated_gradients",
            target=top,
            n_steps=args.steps,
            internal_batch_size=args.ibs,
        ).raw

    captum_ig = IntegratedGradients(model)

    def run_captum() -> torch.Tensor:
        return captum_ig.attribute(x, target=top, n_steps=args.steps, internal_batch_size=args.ibs)

    def floor(channels_last: bool) -> torch.Tensor:
        total = torch.zeros_like(x)
        with frozen(model):  # parameters need no graph
            for start in range(0, args.steps, args.ibs):
                a = alphas[start : start + args.ibs].view(-1, 1, 1, 1)
                points = a * x
                if channels_last:
                    points = points.contiguous(memory_format=torch.channels_last)
                points.requires_grad_(True)
                out = model(points)
                (g,) = torch.autograd.grad(out[:, top].sum(), points)
                total += (g * weights[start : start + args.ibs].view(-1, 1, 1, 1)).sum(0)
        return x * total

    medians = interleaved_medians(
        {
            "cnnlens": run_cnnlens,
            "captum": run_captum,
            "floor (default layout)": lambda: floor(False),
            "floor (channels-last)": lambda: floor(True),
        },
        repeats=args.repeats,
    )
    ours, ref = run_cnnlens(), run_captum()
    err = float((ours - ref).abs().max() / ref.abs().max())
    print(
        f"Integrated gradients, resnet50, {args.size}x{args.size}, batch 1, "
        f"n_steps {args.steps}, internal batch size {args.ibs}, CPU"
    )
    print(f"machine: {machine()}")
    print(markdown_table(medians, "cnnlens"))
    print(f"\nmax |cnnlens - captum| / max |captum| = {err:.1e}")


if __name__ == "__main__":
    main()
