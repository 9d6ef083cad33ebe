"""FullGrad and Shapley-CAM against pytorch-grad-cam, KernelSHAP and LIME against captum, in
one run.

resnet18 (random weights), one 224x224 image, top class, CPU. FullGrad: every conv and
BatchNorm bias. Shapley-CAM: layer4, the ReST score in both (pytorch-grad-cam's
``ClassifierOutputReST``). KernelSHAP / LIME: the same 7x7 grid of superpixels, baseline 0,
``--samples`` model evaluations and the same number of masked inputs per forward
(``--batch``) in both; LIME with ridge regression and the cosine kernel on coalitions in
both (captum given cnnlens' choices and coalitions, as in tests/test_superpixel.py; the
perturbation generator is not what is timed). Pearson correlations
of the maps say the contenders compute the same thing (FullGrad differs by design: see
docs/methods.md).

    python benchmarks/bench_cam_extra.py [--repeats 3] [--size 224] [--samples 200] [--quick]
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
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="112x112, 60 samples, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.size, args.samples, args.repeats = 112, 60, 1
    setup_threads()
    warnings.filterwarnings("ignore")

    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import KernelShap, Lime
    from pytorch_grad_cam import FullGrad, ShapleyCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = int(model(x).argmax())
    cell = args.size // 7
    grid = (torch.arange(args.size) // cell).clamp(max=6)
    seg = grid[:, None] * 7 + grid[None, :]
    n, bs = args.samples, args.batch
    print(f"Machine: {machine()}; measured while other jobs ran (a shared, loaded machine)\n")

    # -- FullGrad and Shapley-CAM -----------------------------------------------------------
    def fullgrad_ours() -> torch.Tensor:
        return cnnlens.explain(model, x, "fullgrad", target=top).maps[0]

    def fullgrad_pgc() -> torch.Tensor:
        with FullGrad(model=model, target_layers=[]) as cam:
            return torch.from_numpy(cam(x, [ClassifierOutputTarget(top)])[0])

    def shapley_ours() -> torch.Tensor:
        return cnnlens.explain(model, x, "shapleycam", target=top, layer="layer4").maps[0]

    def shapley_pgc() -> torch.Tensor:
        with ShapleyCAM(model=model, target_layers=[model.layer4]) as cam:
            return torch.from_numpy(cam(x, [ClassifierOutputReST(top)])[0])

    # -- KernelSHAP and LIME ----------------------------------------------------------------
    # captum is handed the coalitions cnnlens draws (the same seed gives the same ones each
    # call), so both fit the same data and their maps agree
    ours_lime = cnnlens.methods.LIME(model, segments=seg, n_samples=n, batch_size=bs)
    ours_shap = cnnlens.methods.KernelSHAP(model, segments=seg, n_samples=n, batch_size=bs)
    shap_rows = ours_shap(x, top).extras["coalitions"][0][1:]
    lime_rows = ours_lime(x, top).extras["coalitions"][0]
    ends = [torch.ones(1, 49).long(), torch.zeros(1, 49).long()]

    def shared(first: list[torch.Tensor], rows: torch.Tensor):
        def generate(_inputs, **_kwargs):
            yield from first
            for row in rows:
                yield row[None].long()

        return generate

    def kernelshap_ours() -> torch.Tensor:
        return ours_shap(x, top).raw[0, 0]

    def kernelshap_captum() -> torch.Tensor:
        ks = KernelShap(model)
        ks.perturb_func = shared(ends, shap_rows)
        return ks.attribute(
            x, baselines=0.0, target=top, feature_mask=seg[None, None], n_samples=n,
            perturbations_per_eval=bs,
        )[0, 0]  # fmt: skip

    def lime_ours() -> torch.Tensor:
        return ours_lime(x, top).raw[0, 0]

    def lime_captum() -> torch.Tensor:
        def similarity(_orig, _pert, interp, **_kw):
            return ours_lime.similarity(interp.float())

        lime = Lime(model, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity)
        lime.perturb_func = shared([], lime_rows)
        return lime.attribute(
            x, baselines=0.0, target=top, feature_mask=seg[None, None], n_samples=n - 1,
            perturbations_per_eval=bs,
        )[0, 0]  # fmt: skip

    groups = {
        "FullGrad": ({"cnnlens": fullgrad_ours, "pytorch-grad-cam": fullgrad_pgc}, 2.0),
        "Shapley-CAM": ({"cnnlens": shapley_ours, "pytorch-grad-cam": shapley_pgc}, 2.0),
        "KernelSHAP": ({"cnnlens": kernelshap_ours, "captum": kernelshap_captum}, 1.0),
        "LIME": ({"cnnlens": lime_ours, "captum": lime_captum}, 1.0),
    }
    summary = []
    for title, (contenders, goal) in groups.items():
        maps = {name: fn() for name, fn in contenders.items()}
        medians = interleaved_medians(contenders, args.repeats)
        peer = next(name for name in contenders if name != "cnnlens")
        ratio = medians[peer] / medians["cnnlens"]
        r = pearson(maps["cnnlens"], maps[peer])
        print(f"### {title}\n\n{markdown_table(medians, 'cnnlens')}\n")
        print(f"{peer} / cnnlens = **{ratio:.2f}x** (goal >= {goal:.1f}x); Pearson {r:.4f}\n")
        summary.append(f"| {title} | {peer} | {ratio:.2f}x | {goal:.1f}x | {r:.4f} |")
    print("| method | peer | peer / cnnlens | goal | Pearson |\n|---|---|---:|---:|---:|")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
