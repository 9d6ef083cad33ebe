"""Reading a store back: a pyarrow table (or pandas), the maps of one image as tensors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
from torch import Tensor

from cnnlens.dataset.store import Store
from cnnlens.errors import InputError

__all__ = ["StoredMap", "decode_map", "info", "load", "maps_of", "open_store", "scan", "stack_maps"]

KIND = "explanations"


def open_store(path: str | os.PathLike[str]) -> Store:
    """An explanation store for reading (its settings in ``.settings``, facts in
    ``.meta["info"]``).

    Raises:
        StoreError: ``path`` is not an explanation store.
    """
    return Store.read(path, kind=KIND)


def scan(path: str | os.PathLike[str]) -> pads.Dataset:
    """The store as a lazy :class:`pyarrow.dataset.Dataset`: filter and project before
    reading (``scan(s).to_table(columns=[...], filter=pc.field("method") == "gradcam")``)."""
    return open_store(path).dataset()


def load(
    path: str | os.PathLike[str],
    *,
    columns: Sequence[str] | None = None,
    maps: bool = False,
    filter: pc.Expression | None = None,
) -> pa.Table:
    """The store's rows as one :class:`pyarrow.Table` (``.to_pandas()`` for pandas).

    Args:
        path: the store folder.
        columns: the columns to read (default: all but ``map`` unless ``maps``).
        maps: include the ``map`` column (float16 bytes; see :func:`decode_map`).
        filter: a pyarrow expression, e.g. ``pc.field("method") == "gradcam"``.

    Raises:
        StoreError: ``path`` is not an explanation store.
        InputError: an unknown column.
    """
    ds = scan(path)
    names = ds.schema.names
    if columns is None:
        columns = [c for c in names if maps or c != "map"]
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise InputError(f"columns {unknown} are not in the store; it has: {', '.join(names)}")
    return ds.to_table(columns=list(columns), filter=filter)


def decode_map(data: bytes | None, height: int, width: int) -> Tensor | None:
    """A stored map (float16 bytes) as a float32 tensor (height, width); None for none."""
    if data is None:
        return None
    arr = np.frombuffer(data, dtype="<f2")
    if arr.size != height * width:
        raise InputError(f"map holds {arr.size} values, expected {height} x {width}")
    return torch.from_numpy(arr.astype(np.float32).reshape(height, width))


@dataclass
class StoredMap:
    """One stored map with what it explains.

    Attributes:
        method, layer, rank, target, target_name, target_prob: as in the store.
        map: float32 tensor (map_height, map_width) in [0, 1].
    """

    method: str
    layer: str | None
    rank: int
    target: int
    target_name: str
    target_prob: float
    map: Tensor


def maps_of(
    path: str | os.PathLike[str], image_id: str, *, method: str | None = None
) -> list[StoredMap]:
    """The maps of one image (by its ``id``), sorted by method, layer and rank.

    Reads only the rows of that image. An image whose row holds an error has no maps.

    Raises:
        InputError: ``image_id`` is not in the store.
    """
    flt = pc.field("id") == image_id
    if method is not None:
        flt = flt & (pc.field("method") == method)
    rows = load(path, maps=True, filter=flt).to_pylist()
    if not rows:
        raise InputError(f"image id {image_id!r} is not in store {os.fspath(path)!r}")
    out = [
        StoredMap(
            r["method"],
            r["layer"],
            int(r["rank"]),
            int(r["target"]),
            r["target_name"],
            float(r["target_prob"]),
            decode_map(r["map"], r["map_height"], r["map_width"]),
        )
        for r in rows
        if r["map"] is not None
    ]
    return sorted(out, key=lambda m: (m.method, m.layer or "", m.rank))


def stack_maps(maps: Sequence[StoredMap]) -> Tensor:
    """Maps of one method and layer as one tensor (K, H, W), in rank order."""
    if not maps:
        raise InputError("no maps to stack")
    return torch.stack([m.map for m in sorted(maps, key=lambda m: m.rank)])


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The store's settings and facts (model hash, methods, class names, ...)."""
    store = open_store(path)
    return {"settings": store.settings, **store.meta.get("info", {})}
