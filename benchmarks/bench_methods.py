"""Every gradient-based method against its peers, side by side, in one run.

resnet18 (random weights), batch 4, 224x224, CPU, layer4 for the CAMs, each image's top
class. For each method: the median time of cnnlens and of each peer that implements it
(pytorch-grad-cam, captum, torchcam), and the lowest Pearson correlation over the images of
the peer's result with cnnlens' (pytorch-grad-cam's upsampled maps against cnnlens' ``maps``;
torchcam's and captum's layer-resolution CAMs against cnnlens' ``raw`` after ReLU; the signed
attribution for pixel methods; not for Eigen-CAM, whose sign is arbitrary and which
tests/test_cam_oracles.py compares up to sign), so that a speed-up never hides a different
answer. The perturbation methods (Score-CAM, occlusion) and integrated gradients have their
own scripts.

    python benchmarks/bench_methods.py [--repeats 5] [--batch 4] [--size 224]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
import torchvision

import cnnlens
from common import interleaved_medians, machine, pearson, setup_threads

Runner = Callable[[], torch.Tensor]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    setup_threads()
    warnings.filterwarnings("ignore")

    import captum.attr as ca
    import pytorch_grad_cam as pgc
    import torchcam.methods as tc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = model(x).argmax(1)
    targets = top.tolist()

    def ours(method: str, cam: bool = False) -> Callable[[], cnnlens.Explanation]:
        layer = "layer4" if cam else None
        return lambda: cnnlens.explain(model, x, method, target=top, layer=layer)

    def comparable(exp: cnnlens.Explanation, peer: str) -> torch.Tensor:
        if exp.raw.dim() == 4:  # pixel methods (guided Grad-CAM too): the signed attribution
            return exp.raw
        if peer == "pytorch-grad-cam":  # upsampled and normalized, like cnnlens' maps
            return exp.maps
        return exp.raw.clamp(min=0)  # layer resolution, after ReLU

    def grad_cam_lib(cls: type) -> Runner:
        outs = [ClassifierOutputTarget(t) for t in targets]

        def run() -> torch.Tensor:
            # made per call and released after it: pytorch-grad-cam's hooks stay on the
            # model for the object's lifetime and would slow every other contender down
            with cls(model=model, target_layers=[model.layer4]) as cam:
                return torch.from_numpy(cam(input_tensor=x, targets=outs))

        return run

    def torchcam(cls: type, **kw: object) -> Runner:
        def run() -> torch.Tensor:
            with cls(model, "layer4", input_shape=x.shape[1:], **kw) as cam:
                scores = model(x)
                return cam(class_idx=targets, scores=scores)[0].detach()

        return run

    def captum_pixel(cls: type, **kw: object) -> Runner:
        algo = cls(model)
        return lambda: algo.attribute(x, target=top, **kw).detach()

    gc_captum = ca.LayerGradCam(model, model.layer4)
    ggc_captum = ca.GuidedGradCam(model, model.layer4)
    sg_captum = ca.NoiseTunnel(ca.Saliency(model))
    sigma = 0.15 * float(x.max() - x.min())  # cnnlens' default noise: 15% of the input range
    per_pass = max(1, 16 // args.batch)  # samples per image in one pass: 16 inputs, as cnnlens

    rows: list[tuple[str, Callable[[], cnnlens.Explanation], dict[str, Runner]]] = [
        ("cam", ours("cam", cam=True), {"torchcam": torchcam(tc.CAM, fc_layer="fc")}),
        ("gradcam", ours("gradcam", cam=True), {
            "pytorch-grad-cam": grad_cam_lib(pgc.GradCAM),
            "captum": lambda: gc_captum.attribute(x, target=top, relu_attributions=True).detach(),
            "torchcam": torchcam(tc.GradCAM)}),
        ("gradcam++", ours("gradcam++", cam=True), {
            "pytorch-grad-cam": grad_cam_lib(pgc.GradCAMPlusPlus),
            "torchcam": torchcam(tc.GradCAMpp)}),
        ("xgradcam", ours("xgradcam", cam=True), {
            "pytorch-grad-cam": grad_cam_lib(pgc.XGradCAM), "torchcam": torchcam(tc.XGradCAM)}),
        ("hirescam", ours("hirescam", cam=True), {
            "pytorch-grad-cam": grad_cam_lib(pgc.HiResCAM)}),
        ("layercam", ours("layercam", cam=True), {
            "pytorch-grad-cam": grad_cam_lib(pgc.LayerCAM), "torchcam": torchcam(tc.LayerCAM)}),
        ("eigencam", ours("eigencam", cam=True), {
            "pytorch-grad-cam": grad_cam_lib(pgc.EigenCAM)}),
        ("saliency", ours("saliency"), {"captum": captum_pixel(ca.Saliency, abs=False)}),
        ("inputxgradient", ours("inputxgradient"), {"captum": captum_pixel(ca.InputXGradient)}),
        ("guided_backprop", ours("guided_backprop"), {
            "captum": captum_pixel(ca.GuidedBackprop)}),
        ("deconvnet", ours("deconvnet"), {"captum": captum_pixel(ca.Deconvolution)}),
        ("guided_gradcam", ours("guided_gradcam"), {
            "captum": lambda: ggc_captum.attribute(x, target=top).detach()}),
        ("smoothgrad (25 samples)", ours("smoothgrad"), {
            "captum": lambda: sg_captum.attribute(
                x, target=top, nt_type="smoothgrad", nt_samples=25, stdevs=sigma,
                nt_samples_batch_size=per_pass, abs=False).detach()}),
    ]  # fmt: skip

    print(f"Every gradient method, resnet18, {args.size}x{args.size}, batch {args.batch}, CPU")
    print(f"machine: {machine()}\n")
    print("| method | cnnlens (s) | peer | peer (s) | peer / cnnlens | Pearson with cnnlens |")
    print("|---|---:|---|---:|---:|---:|")
    for name, run_ours, peers in rows:
        medians = interleaved_medians({"cnnlens": run_ours, **peers}, repeats=args.repeats)
        exp = run_ours()
        for i, (peer, run_peer) in enumerate(peers.items()):
            theirs = run_peer()
            if name.startswith("smoothgrad"):
                r = "- (random noise)"
            elif name == "eigencam":
                r = "- (sign is arbitrary)"
            else:
                mine = comparable(exp, peer).reshape(theirs.shape)
                r = f"{min(pearson(a, b) for a, b in zip(mine, theirs, strict=True)):.4f}"
            first = (name, f"{medians['cnnlens']:.4f}") if i == 0 else ("", "")
            ratio = medians[peer] / medians["cnnlens"]
            cells = [*first, peer, f"{medians[peer]:.4f}", f"{ratio:.2f}x", r]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
