"""Shared timing helpers for the side-by-side benchmarks (one process, one run)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def setup_threads() -> int:
    """Use every core of the machine (2 on the reference box) for every contender alike."""
    n = int(os.environ.get("CNNLENS_BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    clock = "CPU time" if os.environ.get("CNNLENS_BENCH_CLOCK") == "cpu" else "wall time"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, {clock}"
    )


def interleaved_medians(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    settle: float = 0.2,
) -> dict[str, float]:
    """Median wall time of each contender; runs are interleaved so drift hits all alike.

    Each timed run starts ``settle`` seconds after the previous one ended: numpy's BLAS and
    OpenCV, which the peers call, leave worker threads spinning for a while after a call,
    and on a 2-core machine they would slow down whichever contender runs next.

    ``CNNLENS_BENCH_CLOCK=cpu`` times the CPU time of the process (all its threads) instead
    of the wall: on a machine shared with other jobs the wall time mostly measures the wait
    for a core, the CPU time the work done (with one thread per contender).
    """
    clock = time.process_time if os.environ.get("CNNLENS_BENCH_CLOCK") == "cpu" else None
    clock = clock or time.perf_counter
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            time.sleep(settle)
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def saved_for_backward(fn: Callable[[], object]) -> float:
    """MiB of tensors the autograd graph keeps for the backward pass during one call of ``fn``
    (each storage counted once): the activation memory a gradient method pays for, the same
    on every device and independent of the allocator."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / 2**20


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two tensors (flattened, float64)."""
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def markdown_table(medians: dict[str, float], reference: str) -> str:
    """A table of medians and the ratio of each contender to ``reference``."""
    ref = medians[reference]
    lines = [
        f"| contender | median (s) | time / {reference} |",
        "|---|---:|---:|",
    ]
    for name, t in medians.items():
        lines.append(f"| {name} | {t:.4f} | {t / ref:.2f}x |")
    return "\n".join(lines)
