"""The explorer's state and operations, independent of HTTP: one model, a few images.

Every operation takes plain values (an image id, a method name, a layer name, a class) and
returns JSON-able dicts with pictures as ``data:`` URLs, so :mod:`cnnlens.serve.http` stays a
thin router and the logic is testable without a server.

Bounds: an upload is refused above :data:`MAX_UPLOAD_BYTES` or :data:`MAX_PIXELS`; at most
:data:`MAX_IMAGES` images are kept in memory (the oldest upload is dropped); at most
``max_workers`` explanations run at once (others wait up to :data:`WAIT_S` seconds, then get
a "busy" answer). Files are written only under ``out_dir`` (reports), atomically.
"""

from __future__ import annotations

import base64
import io
import threading
import uuid
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

import cnnlens
from cnnlens.core.layers import layer_names
from cnnlens.data import IMAGE_EXTENSIONS, Geometry, convert_mode, load_image
from cnnlens.errors import CnnlensError, ImageError, InputError, TargetError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 25_000_000
MAX_IMAGES = 32
WAIT_S = 30.0
TOPK = 5


class Busy(CnnlensError):
    """Too many explanations are running; try again in a moment."""


def png_data_url(img: Any) -> str:
    """A PIL image or matplotlib figure as a ``data:image/png;base64,...`` URL."""
    from cnnlens.viz import to_png_bytes

    return "data:image/png;base64," + base64.b64encode(to_png_bytes(img)).decode("ascii")


def decode_upload(data: bytes, name: str = "upload") -> Image.Image:
    """Decode uploaded bytes into an RGB image, refusing non-images and huge images.

    Raises:
        ImageError: empty, too large (bytes or pixels), not an image, or corrupt.
    """
    if not data:
        raise ImageError(f"{name}: the upload is empty; choose an image file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(
            f"{name}: {len(data):,} bytes is more than the limit of {MAX_UPLOAD_BYTES:,}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: {w}x{h} = {w * h:,} pixels is more than the limit of "
                        f"{MAX_PIXELS:,}"
                    )
                im.load()
                return convert_mode(im, "RGB").copy()
        except ImageError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError):
            raise ImageError(
                f"{name}: not an image the explorer can read (expected JPEG, PNG, BMP, TIFF, "
                "WebP or GIF)"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{name}: the image is truncated or corrupt ({e})") from None


class Explorer:
    """One loaded model and the images a user explores with it.

    Args:
        model: a model name (``cnnlens.models.list_models()``) or a checkpoint path.
        weights: weights for a model name (a file or a torchvision weights name).
        images: a folder of images to offer (read once, at most :data:`MAX_IMAGES`).
        out_dir: where reports are written (created on first use; nothing else is written).
        max_workers: explanations that may run at once.
    """

    def __init__(
        self,
        model: str,
        *,
        weights: str | None = None,
        images: str | Path | None = None,
        out_dir: str | Path = "cnnlens-explorer",
        max_workers: int = 1,
    ) -> None:
        self.out_dir = Path(out_dir).resolve()
        self._slots = threading.BoundedSemaphore(max(1, int(max_workers)))
        self._lock = threading.Lock()
        self.images: OrderedDict[str, tuple[str, Image.Image]] = OrderedDict()
        self.load_model(model, weights)
        if images is not None:
            self._read_folder(Path(images))

    # ------------------------------------------------------------------ model and images
    def load_model(self, model: str, weights: str | None = None) -> dict[str, Any]:
        """Load a model by name or checkpoint path; it replaces the current one."""
        net, info = cnnlens.models.load(model, weights=weights)
        with self._lock:
            self.model_name, self.net, self.info = str(model), net, info
            self.layers = [
                n
                for n, m in net.named_modules()
                if (n and isinstance(m, (nn.Conv2d, nn.Sequential))) or _is_block(n, m)
            ] or layer_names(net)
        return self.describe()

    def load_model_by_name(self, name: str) -> dict[str, Any]:
        """Switch to a registry model (random weights unless given on the command line)."""
        if name not in cnnlens.models.list_models() and name != self.model_name:
            raise InputError(
                f"model {name!r} is not a registry name; a checkpoint is given with --model"
            )
        if name == self.model_name:
            return self.describe()
        return self.load_model(name)

    def describe(self) -> dict[str, Any]:
        """What the page needs: model, weights, methods, layers, classes, images."""
        return {
            "model": self.model_name,
            "weights": self.info.weights_label,
            "random_weights": self.info.pretrained is False,
            "methods": cnnlens.list_methods(by_family=True),
            "layers": self.layers,
            "class_names": list(self.info.class_names or []),
            "images": [{"id": k, "name": v[0]} for k, v in self.images.items()],
            "models": cnnlens.models.list_models(),
        }

    def _read_folder(self, folder: Path) -> None:
        if not folder.is_dir():
            raise InputError(f"--images {str(folder)!r} is not a folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for p in files[:MAX_IMAGES]:
            try:
                self._add(p.name, load_image(p, mode="RGB", max_pixels=MAX_PIXELS))
            except ImageError as err:
                warnings.warn(f"skipping {p.name}: {err}", stacklevel=2)

    def _add(self, name: str, img: Image.Image) -> str:
        key = uuid.uuid4().hex[:12]
        with self._lock:
            self.images[key] = (name, img)
            while len(self.images) > MAX_IMAGES:
                self.images.popitem(last=False)
        return key

    def upload(self, data: bytes, name: str = "upload") -> dict[str, Any]:
        """Add an uploaded image; returns ``{"id", "name", "width", "height"}``."""
        img = decode_upload(data, name)
        key = self._add(name, img)
        return {"id": key, "name": name, "width": img.width, "height": img.height}

    def _image(self, key: str) -> tuple[str, Image.Image]:
        with self._lock:
            if key not in self.images:
                raise InputError(f"image {key!r} is not loaded; upload it or pick one")
            return self.images[key]

    def _input(self, key: str) -> tuple[Image.Image, Tensor, Geometry]:
        _, img = self._image(key)
        prep = self.info.preprocessing()  # as the weights declare (resize, crop, interpolation)
        return img, prep(img)[None], prep.geometry(img)

    # ------------------------------------------------------------------ operations
    def _run(self, fn: Any) -> Any:
        if not self._slots.acquire(timeout=WAIT_S):
            raise Busy("the explorer is busy with other explanations; try again in a moment")
        try:
            return fn()
        finally:
            self._slots.release()

    def _predictions(self, x: Tensor) -> list[dict[str, Any]]:
        with torch.no_grad():
            probs = torch.softmax(self.net(x).float(), dim=1)[0]
        top = probs.topk(min(TOPK, probs.numel()))
        return [
            {"index": int(i), "name": self._name(int(i)), "prob": float(p)}
            for p, i in zip(top.values, top.indices)
        ]

    def _name(self, index: int) -> str:
        names = self.info.class_names or []
        return names[index] if 0 <= index < len(names) else f"class {index}"

    def resolve_target(self, target: Any = None, class_name: str | None = None) -> int | None:
        """A class index from an index, or a class name (exact, then unique substring)."""
        if class_name:
            names = [n.lower() for n in self.info.class_names or []]
            q = class_name.strip().lower()
            hits = [i for i, n in enumerate(names) if n == q] or [
                i for i, n in enumerate(names) if q in n
            ]
            if not hits:
                raise TargetError(f"class name {class_name!r} is not one of the model's classes")
            return hits[0]
        if target in (None, ""):
            return None
        try:
            return int(target)
        except (TypeError, ValueError):
            raise TargetError(f"target must be a class index, got {target!r}") from None

    def _explain(self, x: Tensor, method: str, layer: str | None, target: int | None) -> Any:
        cls = cnnlens.get_method(method)
        layer = layer if (layer and cls.uses_layer) else None
        return cnnlens.explain(self.net, x, method=method, target=target, layer=layer)

    def explain(
        self,
        image: str,
        method: str = "gradcam",
        layer: str | None = None,
        target: Any = None,
        class_name: str | None = None,
    ) -> dict[str, Any]:
        """Overlay of one method on the photo, with the top predictions."""
        from cnnlens.viz import overlay

        img, x, geo = self._input(image)
        t = self.resolve_target(target, class_name)

        def work() -> dict[str, Any]:
            exp = self._explain(x, method, layer, t)
            c = int(exp.targets.reshape(-1)[0])
            return {
                "method": method,
                "layer": exp.layer,
                "target": c,
                "target_name": self._name(c),
                "predictions": self._predictions(x),
                "overlay": png_data_url(overlay(img, exp.maps[0], geometry=geo)),
                "weights": self.info.weights_label,
            }

        return self._run(work)

    def compare(
        self, image: str, methods: list[str], target: Any = None, class_name: str | None = None
    ) -> dict[str, Any]:
        """Overlays of several methods side by side for the same class."""
        from cnnlens.viz import overlay

        if not methods or len(methods) > 8:
            raise InputError(f"compare takes 1 to 8 methods, got {len(methods)}")
        img, x, geo = self._input(image)
        t = self.resolve_target(target, class_name)

        def work() -> dict[str, Any]:
            panels = []
            for m in methods:
                exp = self._explain(x, m, None, t)
                panels.append(
                    {"method": m, "overlay": png_data_url(overlay(img, exp.maps[0], geometry=geo))}
                )
            return {"panels": panels}

        return self._run(work)

    def trust(
        self,
        image: str,
        method: str = "gradcam",
        target: Any = None,
        class_name: str | None = None,
    ) -> dict[str, Any]:
        """Deletion curve (against a random map) and a one-step sanity check (output layer
        randomized: a faithful map changes)."""
        from cnnlens import metrics

        _, x, _ = self._input(image)
        t = self.resolve_target(target, class_name)

        def work() -> dict[str, Any]:
            exp = self._explain(x, method, None, t)
            tt = exp.targets.reshape(-1)
            step = max(1, x.shape[-1] * x.shape[-2] // 32)
            cur = metrics.deletion(self.net, x, exp.maps, target=tt, step=step)
            rnd = metrics.deletion(self.net, x, metrics.random_maps(exp.maps), target=tt, step=step)
            last = [n for n, m in self.net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            sanity = metrics.cascading_randomization(
                self.net, x, method, target=tt, layers=last[-1:]
            )
            return {
                "method": method,
                "deletion_auc": float(cur.auc[0]),
                "random_auc": float(rnd.auc[0]),
                "fractions": [float(v) for v in cur.fractions],
                "curve": [float(v) for v in cur.scores[0]],
                "random_curve": [float(v) for v in rnd.scores[0]],
                "sanity_layer": last[-1] if last else None,
                "sanity_similarity": float(sanity.final),
                "sanity_passed": sanity.passed,
            }

        return self._run(work)

    def report(self, image: str, methods: list[str]) -> Path:
        """Write a report for one image and several methods under ``out_dir``; its path."""
        from cnnlens.report import MapEntry, ModelCard, Prediction, ReportImage, write_report
        from cnnlens.viz import overlay

        name, _ = self._image(image)
        if not methods or len(methods) > 8:
            raise InputError(f"a report takes 1 to 8 methods, got {len(methods)}")
        img, x, geo = self._input(image)

        def work() -> Path:
            preds = self._predictions(x)
            maps = []
            for m in methods:
                exp = self._explain(x, m, None, None)
                c = int(exp.targets.reshape(-1)[0])
                pic = overlay(img, exp.maps[0], geometry=geo)
                maps.append(
                    MapEntry(pic, caption=f"{m} · {self._name(c)}", method=m, target=c,
                             class_name=self._name(c), layer=exp.layer)
                )  # fmt: skip
            card = ModelCard(
                arch=self.info.arch,
                input_size=tuple(self.info.input_size),
                class_names=self.info.class_names,
                preset=self.info.preset,
                checkpoint=self.info.source,
                extra={"Weights": self.info.weights_label},
            )
            entry = ReportImage(
                name=name,
                image=img,
                predictions=[Prediction(p["name"], p["index"], p["prob"]) for p in preds],
                maps=maps,
            )
            folder = self.out_dir / image
            return write_report(folder / "report.html", model_card=card, images=[entry])

        return self._run(work)


def _is_block(name: str, module: nn.Module) -> bool:
    """Residual blocks and other named stages (``layer4.1``) are layers a user picks too."""
    return bool(name) and any(isinstance(c, nn.Conv2d) for c in module.children())
