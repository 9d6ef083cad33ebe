"""Run every side-by-side benchmark, one after the other, and print their tables.

    python benchmarks/run_all.py [--quick] [NAME ...]

NAME: gradcam, methods, ig, scorecam, occlusion, metrics, lrp, deeplift, cam_extra (default:
all, in that order).

Each script runs in its own process (so one's memory and threads cannot affect the next);
the output is markdown, ready for docs/benchmarks.md. ``--quick`` passes ``--quick`` to the
scripts that have it (smaller images, one repeat) for a smoke run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = (
    "gradcam",
    "methods",
    "ig",
    "scorecam",
    "occlusion",
    "metrics",
    "lrp",
    "deeplift",
    "cam_extra",
)
QUICK = {"gradcam": ["--repeats", "1", "--size", "112"], "ig": ["--quick"],
         "methods": ["--repeats", "1", "--size", "112", "--batch", "2"],
         "scorecam": ["--quick"], "occlusion": ["--quick"], "metrics": ["--quick"],
         "lrp": ["--quick"], "deeplift": ["--quick"], "cam_extra": ["--quick"]}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[*NAMES, []], metavar="NAME")
    parser.add_argument("--quick", action="store_true", help="small smoke run of each script")
    args = parser.parse_args()
    failed = []
    for name in args.names or NAMES:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *(QUICK[name] if args.quick else [])]
        print(f"## {name}: {' '.join(cmd[1:])}\n", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=HERE, check=False)
        print(f"\n({name}: {time.perf_counter() - start:.0f} s wall, exit {done.returncode})\n",
              flush=True)  # fmt: skip
        if done.returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
