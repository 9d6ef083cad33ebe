"""The small files of an assessment and its hashes: atomic JSON files, the sanity checks,
and the reader of the JSONL rows of earlier versions.

The rows themselves live in a Parquet store, ``OUT/rows/`` (:mod:`cnnlens.assess.job`, on
:class:`cnnlens.dataset.Store`): one atomic part file per batch, the settings every row
depends on in its ``_cnnlens_store.json``. ``OUT/run.json`` repeats the settings for a
reader, ``OUT/sanity/*.json`` holds the sanity checks. Before the Parquet store, rows were
appended to ``OUT/rows.jsonl``; :func:`read_jsonl` reads such a file so that a run can
import it (:meth:`cnnlens.assess.run.Run.resume`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "clear_sanity",
    "finite",
    "json_safe",
    "model_hash",
    "read_json",
    "read_jsonl",
    "sha",
    "write_json",
    "write_text",
]

#: The version of the saved rows (3: the Parquet store); a run of another format is refused.
FORMAT = 3


def sha(*parts: Any) -> str:
    """A short hash of tensors (shape, dtype and bytes) and JSON-able values."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def model_hash(model: nn.Module) -> str:
    """A hash of the model's state (floating tensors as float32)."""
    return sha(
        *[(k, v.float() if v.is_floating_point() else v) for k, v in model.state_dict().items()]
    )


def finite(v: float) -> float | None:
    """``v`` rounded to 6 decimals, or None when it is not finite (JSON has no NaN)."""
    return round(float(v), 6) if math.isfinite(float(v)) else None


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (recursively)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (a temporary file, then a rename)."""
    from cnnlens.viz import atomic_write

    return atomic_write(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The saved rows; a line cut short by a crash is skipped with a warning in the log."""
    if not path.is_file():
        return []
    out = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is incomplete (an interrupted write); recomputed", path, no)
            continue
        if isinstance(rec, dict) and "method" in rec and "row" in rec:
            out.append(rec)
    return out


def clear_sanity(out: Path) -> None:
    """Delete the saved sanity checks of ``out`` (a fresh run computes them again)."""
    for f in (out / "sanity").glob("*.json") if (out / "sanity").is_dir() else []:
        f.unlink()
