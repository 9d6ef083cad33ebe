"""The resumable store of an assessment: rows appended as they finish, settings that
refuse to mix runs, atomic JSON files.

``OUT/rows.jsonl`` holds one line per finished (method, row), appended in one flushed write
per batch; ``OUT/run.json`` the settings every saved row depends on; ``OUT/sanity/*.json``
the sanity checks. A crash leaves at most one partial last line, which is skipped and
recomputed on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlens.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "append_jsonl",
    "check_settings",
    "finite",
    "json_safe",
    "model_hash",
    "read_json",
    "read_jsonl",
    "sha",
    "write_json",
    "write_text",
]

#: The version of the saved rows; a run of another format is not read back.
FORMAT = 2


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


def append_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append whole lines in one write, flushed to disk: a crash leaves at most one partial
    last line, which :func:`read_jsonl` skips."""
    text = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a line cut short by a crash: end it first
                text = "\n" + text
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def check_settings(out: Path, settings: Mapping[str, Any], fresh: bool) -> None:
    """Refuse to mix rows of runs with other global settings (model, metrics, ...);
    ``fresh`` discards the saved rows and sanity checks instead.

    Raises:
        InputError: ``out`` holds rows of a run with other settings, or rows without
            ``run.json``.
    """
    if fresh:
        for name in ("rows.jsonl", "run.json"):
            (out / name).unlink(missing_ok=True)
        for f in (out / "sanity").glob("*.json") if (out / "sanity").is_dir() else []:
            f.unlink()
        return
    run_file = out / "run.json"
    if not run_file.is_file():
        if (out / "rows.jsonl").is_file():
            raise InputError(
                f"--out {str(out)!r} holds rows.jsonl but no run.json; use another --out or "
                "--fresh to start over"
            )
        return
    try:
        old = json.loads(run_file.read_text(encoding="utf-8")).get("settings", {})
    except (json.JSONDecodeError, AttributeError):
        old = {}
    new = json.loads(json.dumps(json_safe(dict(settings))))
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise InputError(
            f"--out {str(out)!r} holds an assess run with other settings (differs in: "
            f"{', '.join(diff)}); use another --out, or --fresh to start over"
        )
