"""The recorded localization run of docs/evaluation.md on ``shapes-scenes`` (not a speed test).

Loads a gap-cnn checkpoint trained on ``shapes-scenes``, explains ``--n`` test images (test
split, seed 1) with each method for the true class and prints, per method and for the random
and centre baselines, the pointing game (percentile-bootstrap 95% interval: the scores are
0/1), the energy pointing game (t interval) and the grid pointing game on 2x2 mosaics of the
first ``--n-grid`` images (t interval), as a markdown table.

    python benchmarks/localization_scenes.py runs/gap-scenes/model.safetensors [--n 500]
"""

from __future__ import annotations

import argparse

import torch

import cnnlens
from cnnlens.data import get_dataset
from cnnlens.metrics import (
    aggregate,
    centre_maps,
    energy_pointing_game,
    grid_pointing_game,
    make_mosaics,
    pointing_game,
    random_maps,
)
from cnnlens.models import load

METHODS = (
    "gradcam",
    "gradcam++",
    "layercam",
    "guided_backprop",
    "saliency",
    "inputxgradient",
    "deconvnet",
)


def _explain(model, x, method, target, batch=100):
    return torch.cat(
        [
            cnnlens.explain(model, x[i : i + batch], method, target=target[i : i + batch]).maps
            for i in range(0, len(x), batch)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--n-grid", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.checkpoint)[0].eval()
    ds = get_dataset("shapes-scenes", split="test", n=args.n, seed=1)
    x, y = ds.tensors()
    masks = torch.stack([ds.masks(i) for i in range(len(ds))])
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    gx, gy = x[: args.n_grid], y[: args.n_grid]
    mosaics, cells, labels, _ = make_mosaics(gx, gy, first=torch.arange(len(gx)), seed=0)
    rows = {}
    for method in METHODS:
        maps = _explain(model, x, method, y)
        grid = grid_pointing_game(_explain(model, mosaics, method, labels), cells)
        rows[method] = (maps, grid)
    like = masks.float()
    rows["*random*"] = (random_maps(like), grid_pointing_game(random_maps(mosaics[:, 0]), cells))
    rows["*centre*"] = (centre_maps(like), grid_pointing_game(centre_maps(mosaics[:, 0]), cells))
    print(f"test accuracy {acc:.3f} on {len(ds)} images; grid PG on {len(gx)} 2x2 mosaics\n")
    print("| method | pointing game ↑ | energy PG ↑ | grid PG ↑ |")
    print("|---|---|---|---|")
    for name, (maps, grid) in rows.items():
        pg = aggregate(pointing_game(maps, masks), method="bootstrap")
        epg = aggregate(energy_pointing_game(maps, masks))
        gpg = aggregate(grid)
        cells_ = [f"{s.mean:.3f} [{s.low:.3f}, {s.high:.3f}]" for s in (pg, epg, gpg)]
        print(f"| {name} | " + " | ".join(cells_) + " |")


if __name__ == "__main__":
    main()
