"""Rows of ``bench_metrics.py`` for IROF, Sensitivity-n, Infidelity, Sufficiency and the
axiomatic family: cnnlens vs Quantus 0.6 on the same batch, settings and segments.

Quantus is handed what makes the two compute the same numbers (the tests' settings): the
grid segments and each image's mean as IROF's fill, a stable sort and cumulative masses
for Sensitivity-n, one perturbation sample for Infidelity, unnormalized maps. Non-
sensitivity perturbs every value alone (Quantus' only working step), so it runs on a 16x16
batch.

    python benchmarks/bench_metrics_extra.py [--repeats 3] [--batch 16]
"""

from __future__ import annotations

import argparse
import importlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import cnnlens
from cnnlens.methods.superpixel import segment_images
from cnnlens.metrics import axiomatic, faithfulness_extra
from common import interleaved_medians, machine, setup_threads

Row = tuple[str, dict[str, float], float]


class _StableSort:
    """numpy with a stable argsort, for Quantus' Sensitivity-n module (ties as cnnlens)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def argsort(a: Any, axis: int = -1, **_: Any) -> Any:
        return np.argsort(a, axis, kind="stable")


def _row(label: str, ours: Callable, theirs: Callable, repeats: int) -> Row:
    out: dict[str, Any] = {}
    med = interleaved_medians(
        {
            "cnnlens": lambda: out.__setitem__("cnnlens", ours()),
            "quantus": lambda: out.__setitem__("quantus", theirs()),
        },
        repeats,
    )
    a = np.asarray(out["cnnlens"], dtype=np.float64)
    b = np.asarray(out["quantus"], dtype=np.float64)
    diff = np.nanmax(np.abs(a - b)) / max(np.nanmax(np.abs(b)), 1e-12)
    return label, med, float(diff)


def extra_rows(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> list[Row]:
    """The rows of issue 15 part A, on ``model`` and the batch ``x`` (B, C, H, W)."""
    import quantus
    from quantus.helpers import utils as qutils

    with torch.no_grad():
        y = model(x).argmax(1)

    maps = cnnlens.explain(model, x, "saliency", target=y).maps
    h, w = x.shape[-2:]

    def q(metric: Any, **kw: Any) -> Any:
        a = kw.pop("a_batch", maps.unsqueeze(1).numpy())
        return metric(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, device="cpu", **kw
        )

    rows = []
    seg = segment_images(x, "grid", n_segments=64)
    fill = x.flatten(1).mean(1).view(-1, 1, 1, 1).expand_as(x).numpy()

    def irof_quantus() -> Any:
        found = iter(seg.numpy())
        original = qutils.get_superpixel_segments
        qutils.get_superpixel_segments = lambda **_: next(found)
        np.trapz = np.trapezoid  # Quantus' calculate_auc calls np.trapz (gone in numpy 2)
        try:
            metric = quantus.IROF(
                perturb_baseline=fill,
                perturb_func=_broadcast_mask,
                return_aggregate=False,
                disable_warnings=True,
            )
            return q(metric)
        finally:
            qutils.get_superpixel_segments = original

    rows.append(
        _row(
            "IROF (64 grid cells)",
            lambda: faithfulness_extra.irof(model, x, maps, y, segments=seg),
            irof_quantus,
            repeats,
        )
    )

    step = h * w // 16
    module = importlib.import_module("quantus.metrics.faithfulness.sensitivity_n")

    class Cumulative(quantus.SensitivityN):
        def evaluate_batch(self, *args: Any, **kwargs: Any) -> Any:
            out = super().evaluate_batch(*args, **kwargs)
            out[0]["att_sums"] = np.cumsum(out[0]["att_sums"], axis=1)
            return out

    def sens_quantus() -> Any:
        module.np = _StableSort()
        try:
            metric = Cumulative(
                features_in_step=step,
                n_max_percentage=0.75,
                return_aggregate=False,
                disable_warnings=True,
            )
            return q(metric)
        finally:
            module.np = np

    rows.append(
        _row(
            "sensitivity-n (12 of 48 steps)",
            lambda: (
                faithfulness_extra.sensitivity_n(
                    model, x, maps, y, features_in_step=step, max_fraction=0.25
                ).per_n
            ),
            sens_quantus,
            repeats,
        )
    )
    patch = max(1, h // 8)
    rows.append(
        _row(
            "infidelity (64 patches)",
            lambda: faithfulness_extra.infidelity(model, x, maps, y, patch_size=patch),
            lambda: q(
                quantus.Infidelity(
                    perturb_patch_sizes=[patch], n_perturb_samples=1, disable_warnings=True
                )
            ),
            repeats,
        )
    )
    rows.append(
        _row(
            "sufficiency",
            lambda: faithfulness_extra.sufficiency(model, x, maps),
            lambda: q(quantus.Sufficiency(normalise=False, disable_warnings=True)),
            repeats,
        )
    )
    half = x.clone()  # Quantus' black baseline covers the first channel only (see tests)
    half[:, 0] = x.flatten(1).min(1).values.view(-1, 1, 1)
    rows.append(
        _row(
            "completeness",
            lambda: axiomatic.completeness(model, x, maps, y, baseline=half).complete,
            lambda: q(quantus.Completeness(normalise=False, disable_warnings=True)),
            repeats,
        )
    )
    # Quantus shifts the bias of the model's first module: gap-cnn's is a Sequential (it
    # fails), so this row runs on simplecnn (a first conv with a bias, no padding), 32x32
    from cnnlens.models.seeds import SimpleCNN

    torch.manual_seed(0)
    net = SimpleCNN().eval()
    x32 = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear")
    with torch.no_grad():
        y32 = net(x32).argmax(1)

    def explain32(xx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cnnlens.explain(net, xx, "saliency", target=t).raw

    raw = explain32(x32, y32)
    rows.append(
        _row(
            "input invariance (simplecnn, 32x32)",
            lambda: axiomatic.input_invariance(net, x32, explain32, y32, maps=raw),
            lambda: quantus.InputInvariance(disable_warnings=True)(
                model=net,
                x_batch=x32.numpy(),
                y_batch=y32.numpy(),
                a_batch=raw.numpy(),
                explain_func=lambda model, inputs, targets, **_: cnnlens.explain(
                    model, torch.as_tensor(inputs), "saliency", target=torch.as_tensor(targets)
                ).raw.numpy(),
                device="cpu",
            ),
            repeats,
        )
    )
    small = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear")
    small_maps = torch.nn.functional.interpolate(maps.unsqueeze(1), size=(16, 16))[:, 0]
    with torch.no_grad():
        y_small = model(small).argmax(1)
    rows.append(
        _row(
            "non-sensitivity (16x16, 768 values)",
            lambda: axiomatic.non_sensitivity(model, small, small_maps, y_small),
            lambda: quantus.NonSensitivity(normalise=False, disable_warnings=True)(
                model=model,
                x_batch=small.numpy(),
                y_batch=y_small.numpy(),
                a_batch=small_maps.unsqueeze(1).numpy(),
                device="cpu",
            ),
            repeats,
        )
    )
    return rows


def _broadcast_mask(arr: Any, mask: Any, **kwargs: Any) -> Any:
    """Quantus' IROF mask is (B, 1, H, W) and its perturb function asserts the images'
    shape (it fails on RGB); spread it over the channels."""
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    setup_threads()
    warnings.filterwarnings("ignore")
    from cnnlens.models.seeds import GapCNN

    torch.manual_seed(0)
    model = GapCNN(5, 3).eval()
    x = torch.rand(args.batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    rows = extra_rows(model, x, args.repeats)
    print(f"machine: {machine()}\n")
    print(f"batch {args.batch} x 3x64x64, gap-cnn, saliency; {args.repeats} repeats\n")
    print_rows(rows)


def print_rows(rows: list[Row]) -> None:
    """The markdown table of ``rows`` (also printed by bench_metrics.py)."""
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
