"""Score-CAM speed: cnnlens vs pytorch-grad-cam vs torchcam vs the floor, in one run.

resnet18 (random weights), layer4 (512 channels), 224x224, batch 1, CPU, top class; each
library with its default batch of masked inputs (cnnlens 8 on the CPU, pytorch-grad-cam 16,
torchcam 32) unless ``--batch-size`` sets one for all. Every Score-CAM makes one masked forward
per channel; the floor is the same 512 masked inputs (made beforehand) run as plain batched
forwards of the model, in the default memory layout (what the peers run) and in channels-last.
The time per masked forward over the time per plain forward says how close each contender
is to the floor; the maps of the peers are compared with cnnlens' (Pearson correlation).

    python benchmarks/bench_scorecam.py [--repeats 3] [--size 224] [--batch-size N] [--quick]
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
import torchvision

import cnnlens
from common import interleaved_medians, machine, markdown_table, pearson, setup_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="112x112, one repeat (< 1 min)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 112, 1
    setup_threads()
    warnings.filterwarnings("ignore")

    from pytorch_grad_cam import ScoreCAM as PgcScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import ScoreCAM as TcScoreCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    store = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    with torch.no_grad():
        top = int(model(x).argmax())
    handle.remove()
    acts = store["a"][0]
    channels = acts.shape[0]
    bs = args.batch_size
    ours_bs = bs or 8

    def run_cnnlens() -> torch.Tensor:
        return cnnlens.explain(
            model, x, "scorecam", target=top, layer="layer4", batch_size=bs
        ).maps[0]

    def run_pgc() -> torch.Tensor:
        with PgcScoreCAM(model=model, target_layers=[model.layer4]) as cam:
            if bs is not None:
                cam.batch_size = bs  # read by pytorch-grad-cam's Score-CAM (default 16)
            out = cam(input_tensor=x, targets=[ClassifierOutputTarget(top)])
        return torch.from_numpy(out[0])

    def run_torchcam() -> torch.Tensor:
        kw = {} if bs is None else {"batch_size": bs}
        with TcScoreCAM(model, "layer4", input_shape=x.shape[1:], **kw) as cam:
            with torch.no_grad():
                scores = model(x)
            out = cam(class_idx=top, scores=scores)[0][0]
        return F.interpolate(out[None, None], size=x.shape[-2:], mode="bilinear")[0, 0]

    up = F.interpolate(acts[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    lo = up.amin(dim=(2, 3), keepdim=True)
    hi = up.amax(dim=(2, 3), keepdim=True)
    masked = x * (up - lo) / (hi - lo).clamp(min=1e-12)  # (512, 3, H, W), made beforehand

    def floor(fmt: torch.memory_format) -> None:
        with torch.inference_mode():
            for start in range(0, channels, ours_bs):
                model(masked[start : start + ours_bs].contiguous(memory_format=fmt))

    ours = run_cnnlens()
    agree = {
        "pytorch-grad-cam": pearson(ours, run_pgc()),
        "torchcam": pearson(ours, run_torchcam()),
    }
    medians = interleaved_medians(
        {
            "cnnlens": run_cnnlens,
            "pytorch-grad-cam": run_pgc,
            "torchcam": run_torchcam,
            "floor (default layout)": lambda: floor(torch.contiguous_format),
            "floor (channels-last)": lambda: floor(torch.channels_last),
        },
        repeats=args.repeats,
    )

    batches = "defaults: cnnlens 8, pytorch-grad-cam 16, torchcam 32" if bs is None else bs
    print(
        f"Score-CAM, resnet18 layer4 ({channels} channels), {args.size}x{args.size}, batch 1, "
        f"masked inputs per forward: {batches}, CPU"
    )
    print(f"machine: {machine()}")
    print(markdown_table(medians, "cnnlens"))
    plain = medians["floor (default layout)"] / channels
    plain_cl = medians["floor (channels-last)"] / channels
    print(
        f"\nplain batched forward of the masked inputs: {1e3 * plain:.2f} ms per input "
        f"(default layout), {1e3 * plain_cl:.2f} ms (channels-last)\n"
    )
    print("| contender | per masked forward (ms) | / plain forward | Pearson vs cnnlens |")
    print("|---|---:|---:|---:|")
    for name in ("cnnlens", "pytorch-grad-cam", "torchcam"):
        per = medians[name] / channels
        r = f"{agree[name]:.4f}" if name in agree else "-"
        print(f"| {name} | {1e3 * per:.2f} | {per / plain:.2f}x | {r} |")
    fastest_peer = min(medians["pytorch-grad-cam"], medians["torchcam"])
    print(f"\nspeed-up over the faster peer: {fastest_peer / medians['cnnlens']:.2f}x")


if __name__ == "__main__":
    main()
