"""What to stream through a job: a folder, a glob, a list file, or a dataset name.

:func:`resolve_source` turns the user's ``DATASET`` text into a :class:`Source`: a list of
small item dicts (``id``, ``path``, ``index``, ``label``) that engines pass to workers, plus
how to read an item's pixels (:meth:`Source.read`).

- a folder: its image files (by extension), recursively, sorted; ``id`` is the path
  relative to the folder, ``label`` the first sub-folder (the class in an ImageFolder
  layout), else none;
- a glob (``"photos/**/*.jpg"``): the matching image files, sorted; ``id`` relative to the
  part of the pattern before the first wildcard;
- a list file (``.txt``/``.lst``): one image path per line, relative to the list file's
  folder; blank lines and ``#`` comments are ignored;
- a dataset name from :func:`cnnlens.data.list_datasets` (``"shapes"``, ``"shapes:test"``):
  its images by index; ``id`` is ``NAME:SPLIT:INDEX``, ``label`` the true class.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cnnlens.data import IMAGE_EXTENSIONS, get_dataset, list_datasets, load_image, to_image
from cnnlens.errors import DataError, ImageError

__all__ = ["LIST_SUFFIXES", "Source", "resolve_source"]

logger = logging.getLogger(__name__)

#: file endings read as list files (one image path per line)
LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass
class Source:
    """A resolved dataset: items and how to read them.

    Attributes:
        spec: the text the user gave.
        kind: ``"folder"``, ``"glob"``, ``"list"``, ``"file"`` or ``"dataset"``.
        items: ``{"id", "path", "index", "label"}`` per image, in a stable order.
        dataset: for a dataset name: ``(name, split, options)``.
    """

    spec: str
    kind: str
    items: list[dict[str, Any]]
    dataset: tuple[str, str, dict[str, Any]] | None = None
    _cache: Any = field(default=None, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # picklable for Ray: no lock, no loaded data
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        with self._lock:
            if self._cache is None:
                assert self.dataset is not None
                name, split, options = self.dataset
                self._cache = get_dataset(name, split=split, **options)
            return self._cache

    def read(
        self, item: dict[str, Any], mode: str | None
    ) -> tuple[Image.Image | None, str, str | None]:
        """``(image, content hash, error)`` of one item; ``image`` is None with an error.

        The hash is the sha256 of the file's bytes (of the raw pixel bytes for a dataset
        name; empty when the file cannot be read), so a changed file makes a new row. A
        file that does not decode is returned with its error (one sentence), never raised.
        """
        if item.get("path"):
            path = Path(item["path"])
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as err:
                return None, "", f"image file {str(path)!r} cannot be read ({err})"
            try:
                return load_image(path, mode=mode), digest, None
            except ImageError as err:
                return None, digest, str(err)
        ds = self._loaded()
        raw = ds.images[int(item["index"])]
        digest = hashlib.sha256(raw.contiguous().numpy().tobytes()).hexdigest()
        unit = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
        img = to_image(unit)
        if mode is not None and img.mode != mode:
            img = img.convert(mode)
        return img, digest, None


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _file_items(files: list[Path], root: Path | None, labels: bool) -> list[dict[str, Any]]:
    out = []
    for f in files:
        rel = f.relative_to(root) if root is not None else f
        label = rel.parts[0] if labels and len(rel.parts) > 1 else None
        out.append({"id": rel.as_posix(), "path": str(f.resolve()), "index": -1, "label": label})
    return out


def _folder(root: Path) -> list[dict[str, Any]]:
    files = sorted(
        f
        for f in root.rglob("*")
        if _is_image(f) and not any(part.startswith(".") for part in f.relative_to(root).parts)
    )
    return _file_items(files, root, labels=True)


def _glob(pattern: str) -> list[dict[str, Any]]:
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [f for f in files if _is_image(f)]
    head = []
    for part in Path(os.path.expanduser(pattern)).parts:
        if glob.has_magic(part):
            break
        head.append(part)
    root = Path(*head) if head else Path(".")
    return _file_items(files, root, labels=False)


def _list_file(path: Path) -> list[dict[str, Any]]:
    items = []
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        f = Path(text).expanduser()
        f = f if f.is_absolute() else path.parent / f
        items.append({"id": text, "path": str(f.resolve()), "index": -1, "label": None})
    return items


def _dataset(spec: str, split: str, options: dict[str, Any]) -> Source:
    name, _, given = spec.partition(":")
    split = given or split
    ds = get_dataset(name, split=split, **options)
    classes = list(ds.classes)
    items = []
    for i in range(len(ds)):
        y = ds.targets[i]
        label = classes[int(y)] if y.dim() == 0 and 0 <= int(y) < len(classes) else None
        items.append({"id": f"{name}:{split}:{i}", "path": None, "index": i, "label": label})
    return Source(spec, "dataset", items, dataset=(name, split, dict(options)), _cache=ds)


def resolve_source(
    dataset: str | os.PathLike[str],
    *,
    split: str = "test",
    options: dict[str, Any] | None = None,
) -> Source:
    """The images of ``dataset``: a folder, a glob, a list file, an image, or a dataset name.

    Args:
        dataset: see the module docstring.
        split: the split of a dataset name without ``:SPLIT``.
        options: options of a dataset name (``n``, ``seed`` for ``shapes``).

    Raises:
        DataError: nothing matches, or an unknown name (the message lists the datasets).
    """
    text = os.fspath(dataset)
    path = Path(text).expanduser()
    if path.is_dir():
        src = Source(text, "folder", _folder(path))
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        src = Source(text, "list", _list_file(path))
    elif path.is_file():
        src = Source(text, "file", _file_items([path], path.parent, labels=False))
    elif glob.has_magic(text):
        src = Source(text, "glob", _glob(text))
    elif text.partition(":")[0] in list_datasets():
        return _dataset(text, split, dict(options or {}))
    else:
        raise DataError(
            f"dataset {text!r} is not a folder, an image or list file, a glob pattern or a "
            f"dataset name (datasets: {', '.join(list_datasets())})"
        )
    if not src.items:
        raise DataError(
            f"dataset {text!r} ({src.kind}) holds no image files "
            f"(extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return src
