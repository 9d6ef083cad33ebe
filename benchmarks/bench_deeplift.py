"""DeepLIFT, DeepLIFT-SHAP and GradientSHAP speed: cnnlens vs captum, in one run.

VGG16 (random weights, seeded; ReLU modules, as captum's DeepLift needs), 224x224, batch 1,
CPU, top class. DeepLIFT against a zero reference; DeepLIFT-SHAP against 4 references;
GradientSHAP with 16 samples from 8 references (stdevs 0, internal batch 16 for both). The
same number of model evaluations on each side; captum's GradientSHAP draws are its own.

    python benchmarks/bench_deeplift.py [--repeats 3] [--size 224] [--quick]
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torchvision

import cnnlens
from common import interleaved_medians, machine, markdown_table, pearson, setup_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="112x112, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 112, 1
    setup_threads()
    warnings.filterwarnings("ignore")
    from captum.attr import DeepLift, DeepLiftShap, GradientShap

    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, args.size, args.size, generator=gen)
    dist = 0.5 * torch.randn(8, 3, args.size, args.size, generator=gen)
    with torch.no_grad():
        top = int(model(x).argmax())
    zero = torch.zeros_like(x)
    print(f"machine: {machine()}")
    cases = {
        "DeepLIFT": (
            lambda: cnnlens.explain(model, x, "deeplift", target=top).raw,
            lambda: DeepLift(model).attribute(x, zero, target=top),
        ),
        "DeepLIFT-SHAP (4 references)": (
            lambda: cnnlens.explain(model, x, "deeplift_shap", target=top, baselines=dist[:4]).raw,
            lambda: DeepLiftShap(model).attribute(x, dist[:4], target=top),
        ),
        "GradientSHAP (16 samples)": (
            lambda: cnnlens.explain(
                model, x, "gradient_shap", target=top, baselines=dist, n_samples=16,
                internal_batch_size=16,
            ).raw,
            lambda: GradientShap(model).attribute(x, dist, n_samples=16, target=top),
        ),
    }  # fmt: skip
    for name, (ours, theirs) in cases.items():
        medians = interleaved_medians({"cnnlens": ours, "captum": theirs}, repeats=args.repeats)
        a, b = ours(), theirs()
        print(f"\n{name}, vgg16, {args.size}x{args.size}, batch 1, CPU")
        print(markdown_table(medians, "cnnlens"))
        if name.startswith("Gradient"):
            agree = f"pearson {pearson(a, b):.3f} (different random draws)"
        else:
            err = float((a - b).abs().max() / b.abs().max())
            agree = f"max |cnnlens - captum| / max |captum| = {err:.1e}"
        print(f"\ncaptum / cnnlens = {medians['captum'] / medians['cnnlens']:.2f}x; {agree}")


if __name__ == "__main__":
    main()
