"""Safe weight loading: state dicts from files, and torchvision's named weights.

Nothing here unpickles arbitrary objects. ``.safetensors`` files are read with safetensors;
``.pt``/``.pth``/``.bin`` files with ``torch.load(..., weights_only=True)``, which refuses a
pickle that would build anything other than tensors and plain containers *before* any of it
runs. torchvision's own loader passes ``weights_only=False``; cnnlens forces it back to
``True`` for the duration of the call (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``).

>>> state = read_state_dict("run/model.safetensors")        # doctest: +SKIP
>>> load_weights(model, "resnet18_finetuned.pth")           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from cnnlens.errors import WeightsError

__all__ = [
    "WEIGHT_SUFFIXES",
    "check_fit",
    "load_weights",
    "read_state_dict",
    "torchvision_cache_file",
]

logger = logging.getLogger(__name__)

#: File suffixes read as weights files (anything else is sniffed by its first bytes).
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
#: Keys under which training scripts commonly nest the state dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
#: Key prefixes added by wrappers: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 8  # how many keys an error message lists before "... and N more"


def looks_like_path(value: object) -> bool:
    """Whether ``value`` is meant as a file path rather than a name (``"DEFAULT"``)."""
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str):
        return False
    return (
        Path(value).suffix.lower() in WEIGHT_SUFFIXES
        or os.sep in value
        or "/" in value
        or Path(value).is_file()
    )


def _is_safetensors(path: Path) -> bool:
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    return len(head) == 9 and head[8:9] == b"{"


@contextlib.contextmanager
def forced_weights_only() -> Iterator[None]:
    """Make every ``torch.load`` in the block use ``weights_only=True``, even if asked not to.

    Used around torchvision's weight loader, which passes ``weights_only=False``.
    """
    force, no_force = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    saved = {key: os.environ.pop(key, None) for key in (force, no_force)}
    os.environ[force] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _refused(path: object, err: BaseException) -> WeightsError:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    detail = f" (it calls {found.group(1)})" if found else ""
    return WeightsError(
        f"weights file {str(path)!r} holds pickled objects other than tensors{detail} and was "
        "refused without running any of it; save a state dict (model.state_dict()) or a "
        ".safetensors file instead"
    )


def _read_file(path: Path) -> Any:
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types; translate them
            raise WeightsError(
                f"weights file {str(path)!r} is not a readable .safetensors file ({err})"
            ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refused(path, err) from err
    except Exception as err:  # truncated zip, not a torch file, ...; translate
        raise WeightsError(
            f"weights file {str(path)!r} cannot be read as a .safetensors file or a PyTorch "
            f"state dict ({type(err).__name__}: {err})"
        ) from err


def _unwrap(obj: Any, source: str) -> dict[str, Tensor]:
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"weights {source} hold a {type(obj).__name__}, expected a state dict (a mapping "
            "of parameter names to tensors, e.g. model.state_dict())"
        )
    if not obj:
        raise WeightsError(f"weights {source} hold an empty state dict")
    bad = next(((k, v) for k, v in obj.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise WeightsError(
            f"weights {source} are not a state dict of tensors: key {bad[0]!r} holds a "
            f"{type(bad[1]).__name__} (wrapper keys looked into: {', '.join(WRAPPER_KEYS)}); "
            f"keys present: {_short(list(obj))}"
        )
    state = {str(k): v for k, v in obj.items()}
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _short(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    more = len(keys) - _SHOWN
    return shown + (f" ... and {more} more" if more > 0 else "")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a weights file without running any pickled code.

    ``.safetensors`` files (or any file that starts like one) are read with safetensors;
    other files with ``torch.load(..., weights_only=True)``. A state dict nested under
    ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` is unwrapped, and a ``"module."``
    (DataParallel) or ``"_orig_mod."`` (torch.compile) prefix on every key is removed.

    Args:
        path: The weights file.

    Returns:
        Parameter and buffer names mapped to CPU tensors.

    Raises:
        WeightsError: The file is missing, unreadable, holds pickled code, or holds no state
            dict of tensors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        where = p.parent if str(p.parent) not in ("", ".") else Path.cwd()
        raise WeightsError(f"weights file {str(path)!r} not found (looked in {str(where)!r})")
    return _unwrap(_read_file(p), repr(str(path)))


def check_fit(model: nn.Module, state: Mapping[str, Tensor], *, source: str = "weights") -> None:
    """Raise a WeightsError if ``state`` does not fit ``model`` key for key and shape for shape.

    The message lists the missing keys, the unexpected keys and the first shape mismatch.
    A missing BatchNorm ``num_batches_tracked`` counter (old checkpoints) is tolerated.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatch = next(
        (
            (k, tuple(state[k].shape), tuple(v.shape))
            for k, v in expected.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ),
        None,
    )
    if not (missing or unexpected or mismatch):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_short(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_short(unexpected)}")
    if mismatch:
        key, got, want = mismatch
        parts.append(
            f"first shape mismatch: {key} is {list(got)} in the weights but {list(want)} in "
            "the model"
        )
    raise WeightsError(f"{source} do not fit the model {type(model).__name__}: " + "; ".join(parts))


def load_weights(
    model: nn.Module,
    weights: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    source: str | None = None,
) -> nn.Module:
    """Load a weights file or a state dict into ``model`` after checking that it fits.

    Args:
        model: The module to fill (changed in place).
        weights: A weights file (see :func:`read_state_dict`) or a state dict.
        source: How to name the weights in error messages (default: the file name).

    Returns:
        ``model``, with the weights loaded.

    Raises:
        WeightsError: The weights cannot be read safely or do not fit (missing keys,
            unexpected keys, shape mismatch).
    """
    if isinstance(weights, Mapping):
        state = _unwrap(weights, source or "state dict")
        label = source or "the given state dict"
    else:
        state = read_state_dict(weights)
        label = source or f"weights from {str(weights)!r}"
    check_fit(model, state, source=label)
    model.load_state_dict(state, strict=False)  # missing num_batches_tracked keep their value
    return model


def torchvision_cache_file(weights: Any) -> Path:
    """Where torch.hub keeps (and looks for) the file of a torchvision weights entry.

    ``torch.hub.get_dir()/checkpoints/<file name from the weights URL>``.
    """
    name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def torchvision_weights(arch: str, weights: Any) -> Any:
    """The torchvision weights entry named by ``weights`` for architecture ``arch``.

    Accepts an entry of the architecture's weights enum, ``"DEFAULT"``, a member name
    (``"IMAGENET1K_V2"``) or the full name (``"ResNet50_Weights.IMAGENET1K_V2"``).

    Raises:
        WeightsError: The name is not one of the architecture's weights.
    """
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    if isinstance(weights, enum):
        return weights
    names = ["DEFAULT", *(n for n in enum.__members__ if n != "DEFAULT")]
    if isinstance(weights, str):
        key = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
        key = key.upper()
        if key in enum.__members__:
            return enum[key]
    raise WeightsError(
        f"weights {weights!r} for {arch} is neither a weights file nor a torchvision weights "
        f"name; names: {', '.join(names)}"
    )


def build_torchvision_pretrained(arch: str, entry: Any, kwargs: dict[str, Any]) -> nn.Module:
    """Build a torchvision model with its named weights, safely and with helpful errors.

    The file comes from the torch.hub cache when it is there (no network), otherwise it is
    downloaded; every ``torch.load`` inside is forced to ``weights_only=True``.

    Raises:
        WeightsError: Offline and not cached (names the file to place), a failed hash check,
            or a cached file that is unreadable or holds pickled code.
    """
    from torchvision.models import get_model

    cache = torchvision_cache_file(entry)
    try:
        # torch.hub announces downloads on stdout; keep stdout clean for results (--json)
        with forced_weights_only(), contextlib.redirect_stdout(sys.stderr):
            return get_model(arch, weights=entry, **kwargs)
    except OSError as err:  # URLError, HTTPError, socket errors, ... are all OSErrors
        raise WeightsError(
            f"could not download the torchvision weights {entry} for {arch} "
            f"({type(err).__name__}: {err}); offline, place the file {cache.name} "
            f"(from {entry.url}) at {cache} and retry"
        ) from err
    except pickle.UnpicklingError as err:
        raise _refused(cache, err) from err
    except RuntimeError as err:
        if "hash" in str(err).lower():
            raise WeightsError(
                f"the downloaded weights {entry} failed their hash check ({err}); delete "
                f"{cache} if it exists and retry"
            ) from err
        if cache.is_file() and ("zip" in str(err).lower() or "load" in str(err).lower()):
            raise WeightsError(
                f"the cached weights file {cache} cannot be read ({err}); delete it to "
                "download it again"
            ) from err
        raise
