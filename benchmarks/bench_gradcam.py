"""Grad-CAM speed: cnnlens vs pytorch-grad-cam vs captum vs the floor, in one run.

resnet50 (random weights), 224x224, batch 8, CPU, layer4, top class of each image.
The floor is one forward with autograd on plus ``torch.autograd.grad`` of the target scores
to the layer4 activation — the least any Grad-CAM must do. A second table gives the memory
each keeps for the backward pass (tensors saved by autograd, each storage once).

    python benchmarks/bench_gradcam.py [--repeats 7] [--batch 8] [--size 224]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import torchvision

import cnnlens
from common import interleaved_medians, machine, markdown_table, saved_for_backward, setup_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    setup_threads()

    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        top = model(x).argmax(1)
    size = (args.size, args.size)

    def run_cnnlens() -> torch.Tensor:
        return cnnlens.explain(model, x, "gradcam", target=top, layer="layer4").maps

    peer_targets = [ClassifierOutputTarget(int(t)) for t in top]

    def run_grad_cam() -> object:
        # made per call and released after it: its hooks stay on the model for the object's
        # lifetime and would slow every other contender down
        with GradCAM(model=model, target_layers=[model.layer4]) as peer:
            return peer(input_tensor=x, targets=peer_targets)

    captum_gc = LayerGradCam(model, model.layer4)

    def run_captum() -> torch.Tensor:
        attr = captum_gc.attribute(x, target=top.tolist(), relu_attributions=True)
        return LayerAttribution.interpolate(attr, size, interpolate_mode="bilinear")

    def run_floor() -> torch.Tensor:
        store = {}
        handle = model.layer4.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
        try:
            out = model(x)
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(out.gather(1, top[:, None]).sum(), store["a"])
        return F.relu((g.mean((2, 3), keepdim=True) * store["a"]).sum(1))

    contenders = {
        "cnnlens": run_cnnlens,
        "pytorch-grad-cam": run_grad_cam,
        "captum": run_captum,
        "floor": run_floor,
    }
    medians = interleaved_medians(contenders, repeats=args.repeats)
    saved = {name: saved_for_backward(fn) for name, fn in contenders.items()}
    for p in model.parameters():
        p.grad = None
    print(f"Grad-CAM, resnet50, {args.size}x{args.size}, batch {args.batch}, CPU")
    print(f"machine: {machine()}")
    print(markdown_table(medians, "cnnlens"))
    print(
        f"\npytorch-grad-cam / cnnlens = {medians['pytorch-grad-cam'] / medians['cnnlens']:.2f}x "
        f"(target >= 2.5x); cnnlens / floor = {medians['cnnlens'] / medians['floor']:.2f}x "
        "(target <= 1.15x)"
    )
    print("\n| contender | saved for backward (MiB) | / cnnlens |\n|---|---:|---:|")
    for name, mib in saved.items():
        print(f"| {name} | {mib:.1f} | {mib / saved['cnnlens']:.1f}x |")


if __name__ == "__main__":
    main()
