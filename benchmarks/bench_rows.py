"""Why GradientSHAP runs the image's own forward apart: 16 gradient rows + a batch-1 forward
against 17 gradient rows (the image riding along), VGG16 (random weights), CPU, one run.

    CNNLENS_BENCH_CLOCK=cpu python benchmarks/bench_rows.py [--size 112] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
import torchvision

from cnnlens.core.capture import frozen
from common import interleaved_medians, machine, markdown_table, setup_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    setup_threads()
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))

    def rows(n: int) -> None:
        with frozen(model):
            leaf = x.repeat(n, 1, 1, 1).requires_grad_(True)
            torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)

    def apart() -> None:
        with torch.no_grad():
            model(x)
        rows(16)

    medians = interleaved_medians(
        {
            "16 rows + batch-1 forward": apart,
            "17 rows": lambda: rows(17),
            "16 rows": lambda: rows(16),
        },
        repeats=args.repeats,
    )
    print(f"machine: {machine()}\n")
    print(markdown_table(medians, "16 rows + batch-1 forward"))


if __name__ == "__main__":
    main()
