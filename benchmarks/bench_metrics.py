"""Trust-metric speed: cnnlens vs Quantus on the same batch and the same draws, in one run.

gap-cnn (random weights, seed 0), a batch of 16 random 64x64 RGB images, top class,
saliency maps (the explanation both re-compute on each perturbed batch is cnnlens's
saliency, so the explainer costs the same for both; cnnlens gets it by its registry name,
so its prediction check can read the explanation's own forward). Robustness metrics: 10
draws each; faithfulness correlation: 50 subsets of 224 values; randomization: eMPRT, sMPRT
(10 noisy copies, last layer only) and random logit. Quantus is handed our draws (its
``perturb_func`` replays them; its ``np.random.choice`` / ``np.random.randn`` replaced by
ours), so both compute the same numbers; the largest difference is printed. Times are CPU
seconds of this process (torch on one thread), which a machine loaded by other jobs
inflates far less than wall time; the floor is the explainer's own cost for the same
images, which neither library can go below.

    python benchmarks/bench_metrics.py [--repeats 3] [--batch 16] [--samples 10] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

import cnnlens
from bench_metrics_extra import extra_rows, print_rows
from cnnlens.metrics import randomization, removal, robustness
from cnnlens.models.seeds import GapCNN
from common import machine, setup_threads


def _replay(noise: torch.Tensor) -> Callable:
    calls = {"i": 0}

    def perturb(arr, indices, **_):
        out = (arr + noise[calls["i"] % len(noise)].reshape(arr.shape[0], -1).numpy()).astype(
            arr.dtype
        )
        calls["i"] += 1
        return out

    return perturb


def cpu_medians(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU time (this process) of each contender, runs interleaved, one warm-up."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


class Bench:
    """The model, batch, explainers and the rows of the table."""

    def __init__(self, batch: int, samples: int, repeats: int):
        torch.manual_seed(0)
        self.model = GapCNN(5, 3).eval()
        self.x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            self.y = self.model(self.x).argmax(1)
        self.maps = self.explain(self.x, self.y)
        self.a_batch = self.maps.unsqueeze(1).numpy()
        self.samples, self.repeats = samples, repeats
        self.rows: list[tuple[str, dict[str, float], float]] = []

    def explain(self, xx: torch.Tensor, t: torch.Tensor, model=None) -> torch.Tensor:
        return cnnlens.explain(model or self.model, xx, "saliency", target=t).maps

    def q_explain(self, model, inputs, targets, **_):
        maps = self.explain(torch.as_tensor(inputs), torch.as_tensor(targets), model)
        return maps.unsqueeze(1).numpy()

    def floor(self, n_images: int, model=None) -> Callable[[], object]:
        """The explainer alone on ``n_images`` images, in batches of 64."""
        xs = self.x.repeat((n_images + len(self.x) - 1) // len(self.x), 1, 1, 1)[:n_images]
        ys = self.y.repeat((n_images + len(self.y) - 1) // len(self.y))[:n_images]
        return lambda: [
            self.explain(xs[i : i + 64], ys[i : i + 64], model) for i in range(0, n_images, 64)
        ]

    def record(self, label: str, ours: Callable, theirs: Callable, floor: Callable) -> None:
        out: dict[str, object] = {}
        med = cpu_medians(
            {
                "cnnlens": lambda: out.__setitem__("cnnlens", ours()),
                "quantus": lambda: out.__setitem__("quantus", theirs()),
                "floor": floor,
            },
            self.repeats,
        )
        q = np.asarray(out["quantus"], dtype=np.float64)
        ref = np.nanmax(np.abs(q)) or 1.0
        diff = np.nanmax(np.abs(out["cnnlens"].numpy() - q)) / ref  # type: ignore[union-attr]
        self.rows.append((label, med, float(diff)))

    def quantus_call(self, metric, **kw) -> Callable[[], object]:
        return lambda: metric(
            model=self.model,
            x_batch=self.x.numpy(),
            y_batch=self.y.numpy(),
            a_batch=kw.get("a_batch", self.a_batch),
            explain_func=self.q_explain,
            device="cpu",
        )


def robustness_rows(b: Bench, quantus) -> None:
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
        noise = robustness.draw_noise(b.x, b.samples, kind=kind, low=low, high=0.2, seed=2)
        qmetric = getattr(quantus, qname)(
            nr_samples=b.samples, perturb_func=_replay(noise), disable_warnings=True
        )
        b.record(
            label,
            lambda ours=ours, noise=noise: ours(b.model, b.x, b.maps, "saliency", b.y, noise=noise),
            b.quantus_call(qmetric),
            b.floor(b.samples * len(b.x)),
        )


def faithfulness_row(b: Bench, quantus, runs: int) -> None:
    n_features, size = 3 * 64 * 64, 224
    subsets = removal.random_subsets(runs, len(b.x), n_features, size, seed=3)
    qmetric = quantus.FaithfulnessCorrelation(
        nr_runs=runs, subset_size=size, disable_warnings=True, return_aggregate=False
    )

    def theirs():
        replay = iter(subsets.reshape(-1, size).numpy())
        original = np.random.choice
        np.random.choice = lambda *a, **k: next(replay)
        try:
            return b.quantus_call(qmetric)()
        finally:
            np.random.choice = original

    def forwards():  # the floor: the model on every removed copy, no explanation
        xs = b.x.repeat(runs + 1, 1, 1, 1)
        with torch.no_grad():
            for i in range(0, len(xs), 64):
                b.model(xs[i : i + 64])

    b.record(
        "faithfulness correlation",
        lambda: removal.faithfulness_correlation(b.model, b.x, b.maps, b.y, subsets=subsets),
        theirs,
        forwards,
    )


def randomization_rows(b: Bench, quantus, n_smooth: int) -> None:
    def fn(model, xx, t):
        return b.explain(xx, t, model)

    rand = randomization.randomized_copy(b.model, seed=42)

    def two_models(n: int) -> Callable[[], object]:
        return lambda: (b.floor(n)(), b.floor(n, rand)())

    b.record(
        "efficient MPRT",
        lambda: randomization.efficient_mprt(b.model, b.x, fn, target=b.y, maps=b.maps),
        b.quantus_call(quantus.EfficientMPRT(disable_warnings=True)),
        lambda: b.floor(len(b.x), rand)(),
    )
    noise = torch.randn(n_smooth - 1, *b.x.shape, generator=torch.Generator().manual_seed(5))
    qmetric = quantus.SmoothMPRT(
        nr_samples=n_smooth, skip_layers=True, return_last_correlation=True,
        disable_warnings=True,
    )  # fmt: skip

    def theirs():
        calls = iter(range(10**9))
        original, explain = np.random.randn, quantus.explain
        np.random.randn = lambda *s: noise[next(calls) % (n_smooth - 1)].numpy()
        quantus.explain = lambda model, inputs, targets, **k: b.q_explain(model, inputs, targets)
        try:
            return b.quantus_call(qmetric, a_batch=None)()
        finally:
            np.random.randn, quantus.explain = original, explain

    b.record(
        "smooth MPRT",
        lambda: randomization.smooth_mprt(
            b.model, b.x, fn, target=b.y, n_samples=n_smooth, noise=noise
        ),
        theirs,
        two_models(n_smooth * len(b.x)),
    )
    b.record(
        "random logit",
        lambda: randomization.random_logit(b.model, b.x, fn, target=b.y, maps=b.maps),
        b.quantus_call(quantus.RandomLogit(num_classes=5, disable_warnings=True)),
        b.floor(len(b.x)),
    )


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

    b = Bench(args.batch, args.samples, args.repeats)
    robustness_rows(b, quantus)
    faithfulness_row(b, quantus, args.runs)
    randomization_rows(b, quantus, args.samples)
    extra = extra_rows(b.model, b.x, args.repeats)  # issue 15 part A: bench_metrics_extra.py

    print(f"machine: {machine()}\n")
    print(f"batch {args.batch} x 3x64x64, gap-cnn, saliency; {args.samples} draws (robustness,")
    print(f"sMPRT), {args.runs} subsets of 224 (faithfulness correlation); {args.repeats} repeats")
    print("CPU seconds of this process (median)\n")
    print(
        "| metric | cnnlens (s) | Quantus (s) | Quantus / cnnlens | floor (s) | cnnlens / floor "
        "| max rel. difference |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, med, diff in b.rows:
        ratio = med["quantus"] / med["cnnlens"]
        print(
            f"| {label} | {med['cnnlens']:.3f} | {med['quantus']:.3f} | **{ratio:.1f}x** "
            f"| {med['floor']:.3f} | {med['cnnlens'] / med['floor']:.2f} | {diff:.1e} |"
        )
    print("\nWall seconds (median) of the metrics of bench_metrics_extra.py\n")
    print_rows(extra)


if __name__ == "__main__":
    main()
