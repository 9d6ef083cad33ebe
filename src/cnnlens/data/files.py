"""Standard datasets read from their usual on-disk formats: CIFAR-10 and MNIST.

CIFAR-10's python batches are pickles. They are read with :class:`RestrictedUnpickler`,
which only rebuilds builtin containers, bytes/str/numbers and numpy arrays, and refuses
every other global, so a malicious file cannot run code. MNIST is read from its idx files
(optionally gzip-compressed) with numpy, no pickle at all.

Nothing is downloaded unless ``download=True`` is passed (torchvision's downloader, with its
checksums); offline or without it, a missing file raises one :class:`DataError` naming the
files expected and the folder searched.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlens.data.base import ImageTensorDataset
from cnnlens.data.embedded import DIGIT_CLASSES
from cnnlens.errors import DataError

__all__ = [
    "CIFAR10_CLASSES",
    "RestrictedUnpickler",
    "default_root",
    "load_cifar10",
    "load_mnist",
    "read_idx",
    "safe_unpickle",
]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# (module, name) pairs a CIFAR-10 pickle may reference; nothing else is ever imported.
_ALLOWED_GLOBALS = {
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "bytes"),
    ("builtins", "str"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "bool"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds plain data: builtin containers, bytes, str, numbers
    and numpy arrays. Any other global (``os.system``, ``builtins.eval``, a class of some
    package) raises :class:`pickle.UnpicklingError` before anything is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module in ("numpy.core.multiarray", "numpy.core.numeric"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are forbidden")


def safe_unpickle(path: str | os.PathLike[str]) -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler` (``encoding="latin1"``, which
    reads Python 2 pickles such as the CIFAR-10 batches).

    Raises:
        DataError: the file is not a pickle of plain data (names the file and the reason).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"refused to read {str(p)!r}: {err} (only plain data is allowed)") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise DataError(f"file {str(p)!r} is not a valid pickle ({err})") from None


def default_root() -> Path:
    """Folder searched for on-disk datasets when no ``root`` is given: ``$CNNLENS_DATA``,
    else ``~/.cache/cnnlens/data``."""
    return Path(os.environ.get("CNNLENS_DATA", "~/.cache/cnnlens/data")).expanduser()


def _get(d: dict[Any, Any], key: str) -> Any:
    if key in d:
        return d[key]
    return d.get(key.encode())


def _cifar_dir(root: Path) -> Path | None:
    for cand in (root / _CIFAR_DIR, root):
        if (cand / "batches.meta").is_file() or (cand / "test_batch").is_file():
            return cand
    return None


def _download_cifar(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(_CIFAR_URL, str(root), md5=_CIFAR_MD5)
    except Exception as err:  # network errors come in many types (URLError, OSError, ...)
        raise DataError(
            f"could not download CIFAR-10 into {str(root)!r} ({err}); put the python "
            f"version's folder {_CIFAR_DIR}/ there by hand"
        ) from None


def load_cifar10(
    split: str = "train", *, root: str | os.PathLike[str] | None = None, download: bool = False
) -> ImageTensorDataset:
    """The ``cifar10`` dataset from the python-pickle batches.

    Looks for ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` in
    ``root`` (or those files directly in ``root``). Images are (3, 32, 32), normalized with
    the ``cifar10`` preset.

    Raises:
        DataError: files missing (and no download), refused or malformed.
    """
    base = Path(root).expanduser() if root is not None else default_root()
    names = _CIFAR_TRAIN if split == "train" else _CIFAR_TEST
    folder = _cifar_dir(base)
    if folder is None and download:
        _download_cifar(base)
        folder = _cifar_dir(base)
    expected = [*names, "batches.meta"]
    missing = [n for n in expected if folder is None or not (folder / n).is_file()]
    if missing:
        where = folder if folder is not None else base / _CIFAR_DIR
        files = "data_batch_1..5" if split == "train" else "test_batch"
        state = "" if base.is_dir() else f" (folder {str(base)!r} does not exist)"
        raise DataError(
            f"CIFAR-10 {split} files not found{state}: expected {files} and batches.meta in "
            f"{str(where)!r} (missing {', '.join(missing)}); pass download=True "
            f"(--download) when online, or extract cifar-10-python.tar.gz there"
        )
    assert folder is not None
    meta = safe_unpickle(folder / "batches.meta")
    classes = _get(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(classes, list) or not classes:
        raise DataError(f"file {str(folder / 'batches.meta')!r} has no 'label_names' list")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in classes]
    images, labels = [], []
    for n in names:
        path = folder / n
        batch = safe_unpickle(path)
        data = _get(batch, "data") if isinstance(batch, dict) else None
        lab = _get(batch, "labels") if isinstance(batch, dict) else None
        if not isinstance(data, np.ndarray) or lab is None:
            raise DataError(f"file {str(path)!r} lacks the 'data' array or the 'labels' list")
        data = np.asarray(data)
        lab = np.asarray(lab, dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
            raise DataError(
                f"file {str(path)!r}: 'data' must be uint8 of shape (N, 3072), "
                f"got {data.dtype} {data.shape}"
            )
        bad_range = len(lab) > 0 and (lab.min() < 0 or lab.max() >= len(classes))
        if lab.shape != (data.shape[0],) or bad_range:
            raise DataError(
                f"file {str(path)!r}: 'labels' must be {data.shape[0]} values in "
                f"0..{len(classes) - 1}"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return ImageTensorDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        classes,
        "cifar10",
        name="cifar10",
        split=split,
    )


_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed or not.

    Format: two zero bytes, a dtype code, the number of dimensions ``d``, ``d`` big-endian
    uint32 sizes, then the data in C order.

    Raises:
        DataError: bad magic number, unknown dtype code or a size that does not match.
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"file {str(p)!r} is a damaged gzip file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"file {str(p)!r} is not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"file {str(p)!r} is truncated (incomplete idx header)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(
            f"file {str(p)!r} holds {len(raw) - header} data bytes but its header "
            f"{shape} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def _find_idx(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for cand in (name, name + ".gz"):
            if (folder / cand).is_file():
                return folder / cand
    return None


def load_mnist(
    split: str = "train", *, root: str | os.PathLike[str] | None = None, download: bool = False
) -> ImageTensorDataset:
    """The ``mnist`` dataset from its idx files.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (train) or
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (test), each optionally ``.gz``,
    in ``root`` or ``root/MNIST/raw`` (torchvision's layout). Images are (1, 28, 28),
    normalized with the ``mnist`` preset.

    Raises:
        DataError: files missing (and no download) or malformed.
    """
    base = Path(root).expanduser() if root is not None else default_root()
    folders = [base, base / "MNIST" / "raw", base / "mnist"]
    names = _MNIST_FILES[split]
    found = [_find_idx(folders, n) for n in names]
    if None in found and download:
        try:
            from torchvision.datasets import MNIST

            MNIST(str(base), train=split == "train", download=True)
        except Exception as err:  # network errors come in many types
            raise DataError(
                f"could not download MNIST into {str(base)!r} ({err}); put the idx files "
                f"{', '.join(names)} there by hand"
            ) from None
        found = [_find_idx(folders, n) for n in names]
    if None in found:
        missing = [n for n, f in zip(names, found, strict=True) if f is None]
        state = "" if base.is_dir() else f" (folder {str(base)!r} does not exist)"
        raise DataError(
            f"MNIST {split} files not found{state}: expected {' and '.join(names)} (or .gz) in "
            f"{str(base)!r} (missing {', '.join(missing)}); pass download=True (--download) "
            f"when online, or copy the files there"
        )
    img_path, lab_path = found
    assert img_path is not None and lab_path is not None
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"file {str(img_path)!r} must hold uint8 images (N, H, W), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"file {str(lab_path)!r} holds {labels.size} labels for {images.shape[0]} images"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"file {str(lab_path)!r} has labels above 9")
    return ImageTensorDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        DIGIT_CLASSES,
        "mnist",
        name="mnist",
        split=split,
    )
