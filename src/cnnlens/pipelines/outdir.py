"""Output folders a pipeline writes into: checked before any work starts, owned by one run,
and left clean.

- :func:`check_writable_dir` makes sure the folder can be created and written (a probe file
  is written and removed) before a model is loaded, so ``--out`` under ``/proc``, under a
  file, in a read-only folder or with ``OUT/maps`` a file fails in one line, at once.
- :class:`RunFolder` records which run a folder holds (``.cnnlens-run.json``: the command
  and the model) and refuses another model's folder unless ``overwrite`` is given; after a
  run it removes the PNGs that ``results.json`` no longer lists and the temp files of a killed
  run; after a failed run it removes what this run wrote, so no half-finished folder is left.

Every file is written atomically (a temp name in the same folder, then ``os.replace``), so a
killed run leaves complete files or ``.NAME.*.tmp`` leftovers, which the next run removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cnnlens.errors import InputError

__all__ = ["MARKER", "RunFolder", "check_writable_dir", "check_writable_file", "probe_writable"]

#: The file that says which run an output folder belongs to.
MARKER = ".cnnlens-run.json"


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe_writable(out: str | Path, option: str = "--out") -> Path:
    """Check that the folder ``out`` exists or could be created, and could be written,
    without creating anything: a probe file is written in its nearest existing ancestor
    and removed.

    Raises:
        InputError: ``out`` or an ancestor is a file, or the location cannot be written.
    """
    path = Path(out).expanduser()
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        where = (
            "exists and is not a folder" if base == path.absolute() else f"{str(base)!r} is a file"
        )
        raise InputError(f"{option} {str(path)!r} cannot be used: {where}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cnnlens-probe.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(f"{option} {str(path)!r} cannot be written ({reason})") from None
    return path


def check_writable_dir(
    out: str | Path, option: str = "--out", subdirs: Iterable[str] = ()
) -> tuple[Path, list[Path]]:
    """Create ``out`` (and ``subdirs`` in it) and prove it writable with a probe file.

    Returns:
        ``(path, created)``: the folder and the folders this call created (outermost first),
        for :meth:`RunFolder.abandon` to remove if the run fails.

    Raises:
        InputError: ``out`` (or a sub-folder) exists and is not a folder, a parent is a file,
            or the folder cannot be created or written.
    """
    path = Path(out).expanduser()
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise InputError(f"{option} {str(path)!r} cannot be created: {str(base)!r} is a file")
    for name in subdirs:
        sub = path / name
        if sub.exists() and not sub.is_dir():
            raise InputError(f"{option} {str(path)!r} holds {name!r}, which is not a folder")
    created: list[Path] = []
    try:
        for p in [*reversed(path.absolute().parents), path.absolute()]:
            if not p.exists():
                p.mkdir()
                created.append(p)
        fd, probe = tempfile.mkstemp(prefix=".cnnlens-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        _remove_dirs(created)
        reason = err.strerror or type(err).__name__
        raise InputError(f"{option} {str(path)!r} cannot be written ({reason})") from None
    return path, created


def check_writable_file(out: str | Path, option: str = "--out") -> Path:
    """``out`` as a file path that can be written: not a folder, its folder writable."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise InputError(f"{option} {str(path)!r} is a folder; give a file name (report.html)")
    probe_writable(path.absolute().parent, option)
    return path


def _remove_dirs(created: list[Path]) -> None:
    for p in reversed(created):
        with contextlib.suppress(OSError):
            p.rmdir()


class RunFolder:
    """An output folder owned by one run (see the module docstring).

    Example:
        >>> folder = RunFolder("runs/x", {"command": "explain", "model": "resnet18"},
        ...                    subdirs=("inputs", "maps"))            # doctest: +SKIP
        >>> folder.finish(keep={"inputs/a.png", "maps/a_gradcam.png"})  # doctest: +SKIP
    """

    def __init__(
        self,
        out: str | Path,
        identity: Mapping[str, Any],
        *,
        subdirs: Iterable[str] = (),
        overwrite: bool = False,
        option: str = "--out",
    ) -> None:
        self.subdirs = tuple(subdirs)
        self.identity = dict(identity)
        self.option = option
        self.path = Path(out).expanduser()
        self._check_owner(overwrite)
        self.path, self.created = check_writable_dir(self.path, option, self.subdirs)
        self._before = set(self._files())
        self._had_marker = (self.path / MARKER).exists()

    def _check_owner(self, overwrite: bool) -> None:
        marker = self.path / MARKER
        held: Any = None
        if marker.is_file():
            try:
                held = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                held = {"unreadable": str(marker)}
        elif (self.path / "results.json").exists():
            held = {}
        if held is None or held == self.identity or overwrite:
            return
        keys = sorted(
            k for k in set(held) | set(self.identity) if held.get(k) != self.identity.get(k)
        )
        what = "; ".join(f"{k} {held.get(k)!r}, asked {self.identity.get(k)!r}" for k in keys)
        if not held:
            what = "a results.json of a run that names no model"
        raise InputError(
            f"{self.option} {str(self.path)!r} holds another run ({what}); "
            f"use another folder or pass --overwrite to replace it"
        )

    def _files(self) -> list[str]:
        out: list[str] = []
        for name in self.subdirs:
            sub = self.path / name
            if sub.is_dir():
                out += [f"{name}/{p.name}" for p in sub.iterdir() if p.is_file()]
        return out

    def begin(self) -> None:
        """Write the marker (the folder now belongs to this run)."""
        from cnnlens.viz import atomic_write

        text = json.dumps(self.identity, indent=2, sort_keys=True) + "\n"
        atomic_write(self.path / MARKER, text.encode("utf-8"))

    def finish(self, keep: Iterable[str]) -> list[str]:
        """Remove the PNGs in the sub-folders that ``keep`` (paths relative to the folder)
        does not list, and leftover temp files; return what was removed."""
        wanted = set(keep)
        removed = []
        for rel in self._files():
            name = rel.rsplit("/", 1)[-1]
            stale_tmp = name.startswith(".") and name.endswith(".tmp")
            if stale_tmp or (rel.endswith(".png") and rel not in wanted):
                (self.path / rel).unlink(missing_ok=True)
                removed.append(rel)
        return removed

    def abandon(self) -> None:
        """After a failed run: remove the files this run added (files that existed before
        stay) and the folders it created, when empty."""
        for rel in set(self._files()) - self._before:
            (self.path / rel).unlink(missing_ok=True)
        if not self._had_marker:
            (self.path / MARKER).unlink(missing_ok=True)
        if not self._before:
            for name in self.subdirs:
                with contextlib.suppress(OSError):
                    (self.path / name).rmdir()
        _remove_dirs(self.created)
