"""LRP speed: cnnlens vs zennit (same composite, same model) vs the floor, in one run.

VGG16-bn and ResNet50 (random weights, seeded), 224x224, batch 1, CPU, top class;
composites EpsilonPlusFlat and EpsilonGammaBox (bounds -3, 3); zennit with its
VGG/ResNet canonizer (BatchNorm merged), the explained logit as the output relevance for
both. The floor is one forward and one plain backward to the input.

    python benchmarks/bench_lrp.py [--repeats 3] [--size 224] [--quick] [--arch vgg16_bn ...]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision

import cnnlens
from cnnlens.core.capture import frozen
from common import interleaved_medians, machine, markdown_table, setup_threads

COMPOSITES = {
    "epsilon_plus_flat": ("EpsilonPlusFlat", {}),
    "epsilon_gamma_box": ("EpsilonGammaBox", {"low": -3.0, "high": 3.0}),
}


def bench(arch: str, size: int, repeats: int) -> None:
    import zennit.composites as zc
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)().eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = int(model(x).argmax())
    canon = ResNetCanonizer if arch.startswith("resnet") else VGGCanonizer

    def floor() -> torch.Tensor:
        with frozen(model):
            leaf = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(model(leaf)[:, top].sum(), leaf)
        return g

    for name, (cls, kw) in COMPOSITES.items():

        def run_cnnlens(name: str = name, kw: dict = kw) -> torch.Tensor:
            return cnnlens.explain(model, x, "lrp", target=top, composite=name, **kw).raw

        def run_zennit(cls: str = cls, kw: dict = kw) -> torch.Tensor:
            comp = getattr(zc, cls)(canonizers=[canon()], **kw)
            with Gradient(model=model, composite=comp) as attributor:
                _, rel = attributor(x, lambda o: o * F.one_hot(torch.tensor([top]), o.shape[1]))
            return rel

        medians = interleaved_medians(
            {"cnnlens": run_cnnlens, "zennit": run_zennit, "floor (forward + backward)": floor},
            repeats=repeats,
        )
        ours, ref = run_cnnlens(), run_zennit()
        err = float((ours - ref).abs().max() / ref.abs().max())
        print(f"\nLRP {name}, {arch}, {size}x{size}, batch 1, CPU")
        print(markdown_table(medians, "cnnlens"))
        print(f"\nzennit / cnnlens = {medians['zennit'] / medians['cnnlens']:.2f}x; ", end="")
        print(f"max |cnnlens - zennit| / max |zennit| = {err:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="112x112, one repeat")
    parser.add_argument("--arch", nargs="*", default=["vgg16_bn", "resnet50"])
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 112, 1
    setup_threads()
    print(f"machine: {machine()}")
    for arch in args.arch:
        bench(arch, args.size, args.repeats)


if __name__ == "__main__":
    main()
