"""Trust-metric speed: cnnlens vs Quantus on the same batch and the same draws, in one run.

gap-cnn (random weights, seed 0), a batch of 16 random 64x64 RGB images, top class,
saliency maps (the explanation both re-compute on each perturbed batch is cnnlens's
saliency, so the explainer costs the same for both). Robustness metrics: 10 draws each;
faithfulness correlation: 50 subsets of 224 values. Quantus is handed our draws (its
``perturb_func`` replays them; its ``np.random.choice`` is replaced by ours for the subsets),
so both compute the same numbers; the largest difference is printed.

    python benchmarks/bench_metrics.py [--repeats 3] [--batch 16] [--samples 10] [--quick]
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import numpy as np
import torch

import cnnlens
from bench_metrics_extra import extra_rows
from cnnlens.metrics import removal, robustness
from cnnlens.models.seeds import GapCNN
from common import interleaved_medians, machine, setup_threads


def _replay(noise: torch.Tensor) -> Callable:
    calls = {"i": 0}

    def perturb(arr, indices, **_):
        out = (arr + noise[calls["i"] % len(noise)].reshape(arr.shape[0], -1).numpy()).astype(
            arr.dtype
        )
        calls["i"] += 1
        return out

    return perturb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="batch 4, 3 draws, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.samples, args.runs, args.repeats = 4, 3, 10, 1
    setup_threads()
    warnings.filterwarnings("ignore")
    import quantus

    torch.manual_seed(0)
    model = GapCNN(5, 3).eval()
    x = torch.rand(args.batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)

    def explain(xx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cnnlens.explain(model, xx, "saliency", target=t).maps

    def q_explain(model, inputs, targets, **_):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).unsqueeze(1).numpy()

    maps = explain(x, y)
    a_batch = maps.unsqueeze(1).numpy()
    rows = []
    robust = [
        ("max-sensitivity", robustness.max_sensitivity, "MaxSensitivity", "uniform", -0.2),
        ("avg-sensitivity", robustness.avg_sensitivity, "AvgSensitivity", "uniform", -0.2),
        (
            "local Lipschitz",
            robustness.local_lipschitz_estimate,
            "LocalLipschitzEstimate",
            "gaussian",
            0.0,
        ),
        ("RIS", robustness.relative_input_stability, "RelativeInputStability", "uniform", 0.02),
        ("ROS", robustness.relative_output_stability, "RelativeOutputStability", "uniform", 0.02),
    ]
    for label, ours, qname, kind, low in robust:
        noise = robustness.draw_noise(x, args.samples, kind=kind, low=low, high=0.2, seed=2)
        qmetric = getattr(quantus, qname)(
            nr_samples=args.samples, perturb_func=_replay(noise), disable_warnings=True
        )
        out = {}

        def run_ours(ours=ours, noise=noise, out=out):
            out["cnnlens"] = ours(model, x, maps, explain, y, noise=noise)

        def run_quantus(qmetric=qmetric, out=out):
            out["quantus"] = qmetric(
                model=model,
                x_batch=x.numpy(),
                y_batch=y.numpy(),
                a_batch=a_batch,
                explain_func=q_explain,
                device="cpu",
            )

        med = interleaved_medians({"cnnlens": run_ours, "quantus": run_quantus}, args.repeats)
        diff = np.nanmax(np.abs(out["cnnlens"].numpy() - np.asarray(out["quantus"])))
        scale = np.nanmax(np.abs(np.asarray(out["quantus"])))
        rows.append((label, med, diff / scale))

    n_features, size = 3 * 64 * 64, 224
    subsets = removal.random_subsets(args.runs, args.batch, n_features, size, seed=3)
    qmetric = quantus.FaithfulnessCorrelation(
        nr_runs=args.runs, subset_size=size, disable_warnings=True, return_aggregate=False
    )
    out = {}

    def fc_ours():
        out["cnnlens"] = removal.faithfulness_correlation(model, x, maps, y, subsets=subsets)

    def fc_quantus():
        replay = iter(subsets.reshape(-1, size).numpy())
        original = np.random.choice
        np.random.choice = lambda *a, **k: next(replay)
        try:
            out["quantus"] = qmetric(
                model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a_batch, device="cpu"
            )
        finally:
            np.random.choice = original

    med = interleaved_medians({"cnnlens": fc_ours, "quantus": fc_quantus}, args.repeats)
    diff = np.nanmax(np.abs(out["cnnlens"].numpy() - np.asarray(out["quantus"])))
    rows.append(("faithfulness correlation", med, diff))
    rows += extra_rows(model, x, args.repeats)  # issue 15 part A: bench_metrics_extra.py

    print(f"machine: {machine()}\n")
    print(f"batch {args.batch} x 3x64x64, gap-cnn, saliency; {args.samples} draws (robustness),")
    print(f"{args.runs} subsets of {size} (faithfulness correlation); {args.repeats} repeats\n")
    print("| metric | cnnlens (s) | Quantus (s) | Quantus / cnnlens | max rel. difference |")
    print("|---|---:|---:|---:|---:|")
    for label, med, diff in rows:
        ratio = med["quantus"] / med["cnnlens"]
        print(
            f"| {label} | {med['cnnlens']:.3f} | {med['quantus']:.3f} | **{ratio:.1f}x** "
            f"| {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
