"""Cascading-randomization sanity verdicts of the LRP composites and the reference methods
(recorded in docs/methods.md), next to saliency and guided backprop as anchors.

    cnnlens train --model gap-cnn --dataset shapes --epochs 3 --threads 1 --out runs/shapes
    python benchmarks/sanity_lrp.py runs/shapes/model.safetensors [--images 16]

For each method: the similarity after every layer is random (``final``) and the mean over
the upper half of the cascade (``upper``, what ``cnnlens assess`` reads), Spearman of the
signed raw attributions; a method passes below 0.5.
"""

from __future__ import annotations

import argparse

import torch

import cnnlens
from cnnlens.assess import upper_similarity
from cnnlens.data import get_dataset
from cnnlens.metrics import cascading_randomization

CASES = [
    ("lrp", {"composite": "epsilon_plus_flat"}),
    ("lrp", {"composite": "epsilon_plus"}),
    ("lrp", {"composite": "epsilon_gamma_box"}),
    ("lrp", {"composite": "epsilon_alpha2_beta1"}),
    ("lrp", {"composite": "epsilon"}),
    ("deeplift", {}),
    ("deeplift_shap", {"n_baselines": 4}),
    ("gradient_shap", {"n_samples": 16}),
    ("saliency", {}),
    ("guided_backprop", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = cnnlens.models.load(args.checkpoint)
    data = get_dataset("shapes", split="test")
    x = torch.stack([data[i][0] for i in range(args.images)])
    print("| method | options | upper half | final | verdict |")
    print("|---|---|---:|---:|---|")
    for method, opts in CASES:
        res = cascading_randomization(model, x, method, criterion="spearman", **opts)
        upper = float(upper_similarity(res).mean())
        shown = ", ".join(f"{k}={v}" for k, v in opts.items()) or "—"
        verdict = "pass" if upper < 0.5 else "fail"
        print(f"| `{method}` | {shown} | {upper:.3f} | {res.final:.3f} | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
