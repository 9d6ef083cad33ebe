"""The explanation job: the store's row schema and the batch function that fills it.

One row per image x method x layer x explained class (``rank`` 0 is the first target:
the top class by default, the k-th most probable with ``topk``). An image that cannot be
read or decoded gives one row per method with its ``error`` and no map.

The map is stored as **float16 bytes** (``map``, row-major, ``map_height`` x ``map_width``)
at a stated resolution (``map_size``: the longer side, 64 by default; smaller inputs keep
their size), downsampled from the input's size with area averaging. Why not PNG: a PNG is
8-bit (1/255 steps) and needs a decoder; float16 keeps three significant digits, decodes
with one ``numpy.frombuffer`` call, and Parquet's zstd compresses it to about the same size.
Statistics are computed on the full-resolution float32 map before downsampling.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlens.core.capture import frozen
from cnnlens.dataset.sources import Source

__all__ = [
    "KIND",
    "SCHEMA",
    "SCHEMA_VERSION",
    "ExplainJob",
    "channels_last_copy",
    "map_statistics",
    "model_hash",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: The kind of an explanation store.
KIND = "explanations"
TOP_PREDICTIONS = 5

#: The row schema of an explanation store (documented in docs/scale.md).
SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # sha256(id, content_hash): the unit of resume
        ("id", pa.string()),  # path relative to the dataset, or NAME:SPLIT:INDEX
        ("path", pa.string()),  # absolute file path (null for a dataset name)
        ("label", pa.string()),  # class folder or true class when known
        ("content_hash", pa.string()),  # sha256 of the file's bytes
        ("model_hash", pa.string()),  # sha256 of the architecture name and state dict
        ("method", pa.string()),
        ("layer", pa.string()),  # dotted layer name (null for pixel methods)
        ("options_hash", pa.string()),  # sha256 of method, options, targets, map size
        ("rank", pa.int16()),  # 0 = first explained class of the image
        ("target", pa.int32()),  # explained class index
        ("target_name", pa.string()),
        ("target_prob", pa.float32()),  # the model's probability of that class
        ("pred_index", pa.list_(pa.int32())),  # top-5 predicted classes
        ("pred_prob", pa.list_(pa.float32())),  # their probabilities
        ("map", pa.binary()),  # float16 little-endian, map_height x map_width, in [0, 1]
        ("map_height", pa.int16()),
        ("map_width", pa.int16()),
        ("peak_y", pa.float32()),  # where the maximum is, as a share of height / width
        ("peak_x", pa.float32()),
        ("map_mean", pa.float32()),  # mean of the [0, 1] map
        ("coverage", pa.float32()),  # share of pixels at 0.5 or above
        ("top10_mass", pa.float32()),  # share of the map's total in its top 10 % pixels
        ("error", pa.string()),  # why the image could not be explained (else null)
    ]
)


def model_hash(model: nn.Module, arch: str) -> str:
    """sha256 (hex) of the architecture name and every state-dict entry (name, dtype,
    shape, bytes), in the state dict's order."""
    h = hashlib.sha256(arch.encode())
    for name, value in model.state_dict().items():
        h.update(name.encode())
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def map_statistics(maps: Tensor) -> dict[str, Tensor]:
    """Per-map numbers for maps (N, H, W) in [0, 1], computed on their device.

    - ``peak_y``, ``peak_x``: centre of the maximum's pixel as a share of height / width;
    - ``map_mean``: mean value; ``coverage``: share of pixels at 0.5 or above;
    - ``top10_mass``: $\\sum_{\\text{top }10\\%} m / \\sum m$ (1 for a single hot pixel,
      about 0.1 for a flat map; NaN for an all-zero map, stored as null).
    """
    n, h, w = maps.shape
    flat = maps.reshape(n, h * w).float()
    idx = flat.argmax(dim=1)
    k = max(1, -(-h * w // 10))
    total = flat.sum(dim=1)
    top = flat.topk(k, dim=1).values.sum(dim=1)
    return {
        "peak_y": ((idx // w).float() + 0.5) / h,
        "peak_x": ((idx % w).float() + 0.5) / w,
        "map_mean": flat.mean(dim=1),
        "coverage": (flat >= 0.5).float().mean(dim=1),
        "top10_mass": torch.where(total > 0, top / total.clamp_min(1e-30), float("nan")),
    }


def channels_last_copy(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of ``model`` in channels-last memory format, or ``model`` itself.

    Convolutions usually run faster on channels-last tensors (oneDNN on CPU, cuDNN on GPU;
    measured in docs/benchmarks.md); the maps are the same up to float rounding. The
    caller's model keeps its own layout (a copy is converted). A model that cannot run in
    that layout (a ``.view`` of a channels-last activation, say) or whose input is not an
    image batch is returned as it is; a probe forward of one zero image decides.
    """
    if len(input_shape) != 3 or not any(p.dim() == 4 for p in model.parameters()):
        return model
    param = next(iter(model.parameters()))
    try:
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
        probe = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
        with frozen(fast), torch.no_grad():
            fast(probe.contiguous(memory_format=torch.channels_last))
    except (RuntimeError, TypeError, ValueError, copy.Error) as err:
        logger.info("model kept in its own memory format (%s)", str(err).splitlines()[0])
        return model
    return fast


def _store_size(h: int, w: int, side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


@dataclass
class ExplainJob:
    """Explain batches of images with one model and a fixed set of methods.

    Built by :func:`cnnlens.dataset.explain`; picklable (a Ray actor receives it once and
    holds the model). A :class:`cnnlens.dataset.jobs.Job` of kind ``"explanations"``.
    """

    model: nn.Module
    source: Source
    methods: dict[str, dict[str, Any]]  # name -> options
    options_hash: dict[str, str]
    model_hash: str
    class_names: list[str]
    input_size: tuple[int, int]
    in_channels: int
    preset: str
    crop: bool
    layer: str | list[str] | None = None
    target: list[int] = field(default_factory=list)
    topk: int | None = None
    map_size: int = 64
    multilabel: bool = False
    device: str = "cpu"
    channels_last: bool = True
    schema: pa.Schema = SCHEMA
    kind: str = KIND
    version: int = SCHEMA_VERSION
    _net: nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # the working copy is made again per actor
        return self.__dict__ | {"_net": None}

    def setup(self) -> None:
        """Put the model on the job's device (once per process or actor), as a
        channels-last copy when it runs in that layout (see :func:`channels_last_copy`)."""
        self.model.to(torch.device(self.device))
        shape = (self.in_channels, *self.input_size)
        self._net = channels_last_copy(self.model, shape) if self.channels_last else self.model

    @staticmethod
    def key_of(item_id: str, digest: str) -> str:
        """The resume key of an image: sha256 of its id and content hash."""
        return hashlib.sha256(f"{item_id}\0{digest}".encode()).hexdigest()

    def load(self, item: Mapping[str, Any], done: Container[str]) -> dict[str, Any] | None:
        """Read, hash and preprocess one image (loader threads); None when already done."""
        from cnnlens.data import to_tensor
        from cnnlens.errors import ImageError, InputError

        mode = {1: "L", 3: "RGB"}.get(self.in_channels)
        img, digest, error = self.source.read(dict(item), mode)
        key = self.key_of(str(item["id"]), digest or str(error))
        if key in done:
            return None
        x = None
        if img is not None:
            try:
                x = to_tensor(
                    img,
                    size=self.input_size,
                    preset=self.preset,
                    channels=self.in_channels if self.in_channels in (1, 3) else None,
                    crop=self.crop,
                )
            except (ImageError, InputError) as err:
                error = f"image {item['id']!r} cannot be preprocessed ({err})"
        return {"key": key, "item": dict(item), "digest": digest, "x": x, "error": error}

    def _target(self, n: int, dev: torch.device) -> int | Tensor | None:
        if not self.target:
            return None
        if len(self.target) == 1:
            return self.target[0]
        return torch.tensor([self.target] * n, dtype=torch.long, device=dev)

    def _explain(self, x: Tensor) -> tuple[Tensor, dict[str, Any]]:
        from cnnlens.api import explain
        from cnnlens.core.registry import get_method
        from cnnlens.metrics.describe import probabilities

        exps: dict[str, Any] = {}
        net = self._net if self._net is not None else self.model
        for name, options in self.methods.items():
            exps[name] = explain(
                net,
                x,
                method=name,
                target=self._target(len(x), x.device),
                layer=self.layer if get_method(name).uses_layer else None,
                topk=self.topk,
                **options,
            )
        scores = next(iter(exps.values())).scores
        return probabilities(scores, "sigmoid" if self.multilabel else "softmax"), exps

    def run(self, batch: Sequence[dict[str, Any]]) -> pa.Table:
        """The rows of a batch of loaded images (one device batch)."""
        rows: list[dict[str, Any]] = []
        ok = [b for b in batch if b["x"] is not None]
        if ok:
            param = next(iter(self.model.parameters()), None)
            floating = param is not None and param.is_floating_point()
            dtype = param.dtype if floating else torch.float32
            dev = param.device if param is not None else torch.device(self.device)
            x = torch.stack([b["x"] for b in ok]).to(device=dev, dtype=dtype)
            if self._net is not None and self._net is not self.model:
                x = x.contiguous(memory_format=torch.channels_last)
            probs, exps = self._explain(x)
            top_p, top_i = probs.topk(min(TOP_PREDICTIONS, probs.shape[1]), dim=1)
            for name, exp in exps.items():
                rows.extend(self._method_rows(name, exp, ok, probs, top_i, top_p))
        for b in batch:
            if b["x"] is None:
                for name in self.methods:
                    rows.append(self._base(b, name) | {"rank": 0, "error": b["error"]})
        return pa.Table.from_pylist(rows, schema=self.schema)

    def _base(self, b: dict[str, Any], method: str) -> dict[str, Any]:
        item = b["item"]
        return {
            "key": b["key"],
            "id": str(item["id"]),
            "path": item.get("path") or None,
            "label": item.get("label") or None,
            "content_hash": b["digest"],
            "model_hash": self.model_hash,
            "method": method,
            "options_hash": self.options_hash[method],
        }

    def _method_rows(
        self,
        name: str,
        exp: Any,
        ok: Sequence[dict[str, Any]],
        probs: Tensor,
        top_i: Tensor,
        top_p: Tensor,
    ) -> list[dict[str, Any]]:
        targets = exp.targets.reshape(len(ok), -1).cpu()
        layered = exp.per_layer or {exp.layer: exp.maps}
        rows = []
        for layer, maps in layered.items():
            b, k = len(ok), targets.shape[1]
            h, w = maps.shape[-2:]
            flat = maps.detach().float().reshape(b * k, h, w)
            stats = {
                s: [None if math.isnan(v) else v for v in t.cpu().tolist()]
                for s, t in map_statistics(flat).items()
            }
            mh, mw = _store_size(h, w, self.map_size)
            small = (
                flat
                if (mh, mw) == (h, w)
                else F.interpolate(flat[:, None], (mh, mw), mode="area")[:, 0]
            )
            blobs = small.clamp(0, 1).to(torch.float16).cpu().numpy()
            for j in range(b):
                for r in range(k):
                    t, n = int(targets[j, r]), j * k + r
                    rows.append(
                        self._base(ok[j], name)
                        | {
                            "layer": layer,
                            "rank": r,
                            "target": t,
                            "target_name": self.class_names[t]
                            if t < len(self.class_names)
                            else str(t),
                            "target_prob": float(probs[j, t]),
                            "pred_index": top_i[j].tolist(),
                            "pred_prob": top_p[j].tolist(),
                            "map": blobs[n].astype("<f2").tobytes(),
                            "map_height": mh,
                            "map_width": mw,
                            **{s: stats[s][n] for s in stats},
                        }
                    )
        return rows
