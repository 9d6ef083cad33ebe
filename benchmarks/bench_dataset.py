"""Dataset-scale Grad-CAM: the local engine vs a plain loop over cnnlens.explain vs Ray.

    python benchmarks/bench_dataset.py [--n 2000] [--batch 16] [--plain-n N] [--ray-n N]
    python benchmarks/bench_dataset.py --n 64 --ratio-n 64     # interleaved ratio only
    python benchmarks/bench_dataset.py --n 32 --profile        # per-step cost per image

resnet18 (random weights, seed 0) at 224 px, Grad-CAM at layer4, top class, over N generated
JPEG photos of 256 x 320 px (each decoded, resized to 256 and centre-cropped to 224, the
ImageNet evaluation transform). Contenders, one after the other in one process:

- plain loop: for each file, ``load_image`` + ``to_tensor`` + ``cnnlens.explain`` on one
  image, the map kept as float16 at 64 px (what a user writes without the store);
- local engine: ``cnnlens.dataset.explain`` (batches of ``--batch``, 2 loader threads,
  2 batches prefetched), writing the full Parquet store;
- Ray: the same with ``engine="ray"``, 2 actors of 1 CPU each on a local Ray instance
  (``ray.init`` timed apart; actor start-up and the model's transfer are in its wall time).

RSS of the local engine's process is sampled after 500 images and at the end (memory must
stay flat as the dataset grows). Per-batch costs (loading one batch in one thread, computing
it, writing its part file) are measured apart for the paper estimate in docs/scale.md.
Output: markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cnnlens
import cnnlens.dataset as cd
from cnnlens.data import load_image, to_tensor
from cnnlens.models import create
from common import interleaved_medians, machine, setup_threads


def rss_mib() -> float:
    """Resident set size of this process now, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_images(folder: Path, n: int) -> None:
    """N JPEG photos (256 x 320): a smooth background and a few coloured discs."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :320]
    for i in range(n):
        base = (
            rng.uniform(0, 255, 3)[None, None, :] * (0.5 + 0.5 * np.sin(xx / 40.0 + i))[..., None]
        )
        img = base + rng.normal(0, 12, (256, 320, 3))
        for _ in range(3):
            cy, cx, r = rng.integers(30, 226), rng.integers(30, 290), rng.integers(10, 40)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        sub = folder / f"c{i % 10}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            sub / f"{i:05d}.jpg", quality=90
        )


def plain_loop(files: list[Path], net: torch.nn.Module) -> float:
    t0 = time.perf_counter()
    kept = []
    for f in files:
        x = to_tensor(load_image(f), size=(224, 224), preset="imagenet", crop=True)
        exp = cnnlens.explain(net, x[None], method="gradcam", layer="layer4")
        small = torch.nn.functional.interpolate(exp.maps[:, None], (64, 64), mode="area")
        kept.append(small.to(torch.float16).numpy())
    return time.perf_counter() - t0


def per_batch_costs(folder: Path, net: torch.nn.Module, batch: int, store: Path) -> dict:
    """Load one batch in one thread, compute it, write it: seconds each (median of 3)."""
    from cnnlens.dataset.job import SCHEMA, ExplainJob

    src = cd.resolve_source(folder)
    items = src.items[:batch]
    job = ExplainJob(
        model=net, source=src, methods={"gradcam": {}}, options_hash={"gradcam": "x"},
        model_hash="x", class_names=[str(i) for i in range(1000)], input_size=(224, 224),
        in_channels=3, preset="imagenet", crop=True, layer="layer4",
    )  # fmt: skip
    out = cd.Store.open(store, kind="bench", settings={}, schema=SCHEMA, overwrite=True)
    loads, runs, writes, sizes = [], [], [], []
    for _ in range(3):
        t0 = time.perf_counter()
        loaded = [job.load(it, set()) for it in items]
        t1 = time.perf_counter()
        table = job.run(loaded)
        t2 = time.perf_counter()
        part = out.write_part(table)
        t3 = time.perf_counter()
        loads.append(t1 - t0)
        runs.append(t2 - t1)
        writes.append(t3 - t2)
        sizes.append(part.stat().st_size)
    return {
        "load": float(np.median(loads)),
        "compute": float(np.median(runs)),
        "write": float(np.median(writes)),
        "bytes": float(np.median(sizes)),
    }


def profile(files: list[Path], net: torch.nn.Module, work: Path) -> int:
    """Where a local-engine image's time goes, per image (interleaved, median of 3): the
    loader's step (read, sha256, JPEG decode, resize, crop), Grad-CAM at batch 1, 8 and 32
    on the model as given and on its channels-last copy (what the job runs), and the rest of
    the batch step (statistics, float16 maps, Arrow rows) and the Parquet write."""
    from cnnlens.dataset.job import SCHEMA, ExplainJob, channels_last_copy

    src = cd.resolve_source(files[0].parent.parent)
    items = [it for it in src.items if Path(it["path"]) in set(files)][:32]
    job = ExplainJob(
        model=net, source=src, methods={"gradcam": {}}, options_hash={"gradcam": "x"},
        model_hash="x", class_names=[str(i) for i in range(1000)], input_size=(224, 224),
        in_channels=3, preset="imagenet", crop=True, layer="layer4",
    )  # fmt: skip
    loaded = [job.load(it, set()) for it in items]
    x = torch.stack([b["x"] for b in loaded])
    fast = channels_last_copy(net, (3, 224, 224))
    xc = x.contiguous(memory_format=torch.channels_last)
    store = cd.Store.open(work / "profile", kind="bench", settings={}, schema=SCHEMA)

    def gradcam(model: torch.nn.Module, xs: torch.Tensor, b: int) -> None:
        for i in range(0, len(xs), b):
            cnnlens.explain(model, xs[i : i + b], method="gradcam", layer="layer4")

    job.setup()
    table = job.run(loaded)
    n = len(loaded)
    med = interleaved_medians(
        {
            "load (read, sha256, decode, resize, crop; one thread)": lambda: [
                job.load(it, set()) for it in items
            ],
            "Grad-CAM, batch 1": lambda: gradcam(net, x, 1),
            "Grad-CAM, batch 8": lambda: gradcam(net, x, 8),
            "Grad-CAM, batch 32": lambda: gradcam(net, x, 32),
            "Grad-CAM, batch 8, channels-last copy": lambda: gradcam(fast, xc, 8),
            "Grad-CAM, batch 32, channels-last copy": lambda: gradcam(fast, xc, 32),
            "job.run, batch 32 (Grad-CAM channels-last + rows)": lambda: job.run(loaded),
            "Parquet part file (zstd), batch 32": lambda: store.write_part(table),
        },
        repeats=3,
    )
    print(f"{n} images, interleaved, median of 3; torch threads {torch.get_num_threads()}\n")
    print("| step | ms per image |")
    print("|---|---:|")
    for name, t in med.items():
        print(f"| {name} | {1000 * t / n:.1f} |")
    return 0


def interleaved_ratio(files: list[Path], net: torch.nn.Module, work: Path, common: dict) -> int:
    """Plain loop vs the local engine on the same few images, runs interleaved (medians)."""
    listing = work / "ratio.txt"
    listing.write_text("\n".join(str(f) for f in files))
    runs = iter(range(1000))

    def engine(batch: int, channels_last: bool = True) -> None:
        opts = common | {"batch_size": batch, "channels_last": channels_last}
        cd.explain(listing, net, out=work / f"ratio-{next(runs)}", **opts)

    med = interleaved_medians(
        {
            "plain loop over cnnlens.explain": lambda: plain_loop(files, net),
            "local engine, batch 8": lambda: engine(8),
            "local engine, batch 16": lambda: engine(16),
            "local engine, batch 16, model as given (no channels-last copy)": lambda: engine(
                16, channels_last=False
            ),
            "local engine, batch 32": lambda: engine(32),
        },
        repeats=3,
    )
    n, plain = len(files), med["plain loop over cnnlens.explain"]
    print(
        f"{n} images per run, interleaved, median of 3; torch threads {torch.get_num_threads()}\n"
    )
    print("| contender | median wall (s) | images/s | speed-up over the plain loop |")
    print("|---|---:|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {t:.1f} | {n / t:.2f} | {plain / t:.2f}x |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--plain-n", type=int, help="images for the plain loop (default: N)")
    parser.add_argument("--ray-n", type=int, help="images for Ray (default: N)")
    parser.add_argument(
        "--ratio-n",
        type=int,
        help="only time the plain loop and the local engine (batches of 8 and 32) on this "
        "many images, interleaved, median of 3 (for a loaded machine)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="only the per-image cost of each step"
    )
    args = parser.parse_args()
    threads = setup_threads()
    torch.manual_seed(0)
    net = create("resnet18").eval()
    work = Path(tempfile.mkdtemp(prefix="cnnlens-bench-dataset-"))
    try:
        images = work / "images"
        images.mkdir()
        t0 = time.perf_counter()
        make_images(images, args.n)
        print(f"generated {args.n} JPEGs in {time.perf_counter() - t0:.0f} s; {machine()}\n")
        files = [Path(it["path"]) for it in cd.resolve_source(images).items]
        common = dict(method="gradcam", layer="layer4", input_size=(3, 224, 224),
                      preset="imagenet", batch_size=args.batch, map_size=64)  # fmt: skip
        if args.profile:
            return profile(files[:32], net, work)
        if args.ratio_n:
            return interleaved_ratio(files[: args.ratio_n], net, work, common)
        costs = per_batch_costs(images, net, args.batch, work / "costs")

        rss: dict[str, float] = {"start": rss_mib()}

        def sample(info: cd.BatchDone) -> None:
            done = (info.index + 1) * args.batch
            if done >= 500 and "500" not in rss:
                rss["500"] = rss_mib()

        local = cd.explain(images, net, out=work / "local", on_batch=sample, **common)
        rss["end"] = rss_mib()
        rss["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        plain_n = min(args.plain_n or args.n, args.n)
        plain = plain_loop(files[:plain_n], net) * args.n / plain_n  # its rate is per image
        ray_n = min(args.ray_n or args.n, args.n)
        ray_line, ray_start = "", 0.0
        if not args.no_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            ray_start = time.perf_counter() - t0
            t0 = time.perf_counter()
            subset = work / "ray-images.txt"
            subset.write_text("\n".join(str(f) for f in files[:ray_n]))
            cd.explain(subset, net, out=work / "ray", engine="ray", actors=2,
                             cpus_per_actor=1, ray_num_cpus=2, **common)  # fmt: skip
            ray_wall = (time.perf_counter() - t0) * args.n / ray_n
            ray.shutdown()
            ray_line = (
                f"| Ray Data, 2 actors x 1 CPU | {ray_wall:.1f} | {args.n / ray_wall:.2f} | "
                f"{plain / ray_wall:.2f}x |\n"
            )
        wl = local.stats.seconds
        print(
            f"{args.n} images, batch {args.batch}, torch threads {threads}; plain loop timed on "
            f"{plain_n} and Ray on {ray_n} images (wall times scaled to {args.n})\n"
        )
        print("| contender | wall (s) | images/s | speed-up over the plain loop |")
        print("|---|---:|---:|---:|")
        print(f"| plain loop over cnnlens.explain | {plain:.1f} | {args.n / plain:.2f} | 1.00x |")
        print(
            f"| local engine (store written) | {wl:.1f} | {args.n / wl:.2f} | {plain / wl:.2f}x |"
        )
        print(ray_line, end="")
        if ray_line:
            print(f"\nRay start-up (ray.init, 2 CPUs): {ray_start:.1f} s, not in the Ray row.")
        print(
            f"\nRSS of the process (local engine): {rss['start']:.0f} MiB before, "
            f"{rss.get('500', float('nan')):.0f} MiB after 500 images, {rss['end']:.0f} MiB after "
            f"{args.n} (peak {rss['peak']:.0f} MiB)."
        )
        b = args.batch
        print(
            f"\nPer batch of {b} (median of 3): load {costs['load']:.2f} s in one thread "
            f"({1000 * costs['load'] / b:.1f} ms/image), compute {costs['compute']:.2f} s "
            f"({1000 * costs['compute'] / b:.1f} ms/image), write {costs['write'] * 1000:.0f} ms "
            f"({costs['bytes'] / b / 1024:.1f} KiB/image in the part file)."
        )
        store_bytes = sum(p.stat().st_size for p in (work / "local").glob("part-*"))
        print(f"Store: {store_bytes / 2**20:.1f} MiB for {args.n} rows.")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
