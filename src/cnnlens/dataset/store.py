"""A resumable Parquet store: one folder, one settings file, atomic part files.

This layer knows nothing about explanations. Any job that maps a batch function over a
dataset (explanation, assessment) writes through it:

- ``STORE/_cnnlens_store.json``: the job's kind, schema version and *settings* (the model
  hash, method, options, ...). Opening a store with other settings raises
  :class:`StoreError` unless ``overwrite=True``, which clears the old parts first.
- ``STORE/part-<time>-<uuid>.parquet``: one file per batch, written to a hidden temporary
  name and renamed (``os.replace``), so a reader or a resumed run never sees half a file and
  a killed run loses at most the batch in flight.
- A ``key`` column (string) names the unit of work a row belongs to (an image); every row of
  a key is written in the same part. :meth:`Store.done_keys` reads only that column, so a
  resumed run skips finished work without loading the rest.

Files whose names start with ``_`` or ``.`` are ignored by pyarrow's dataset reader, so the
folder reads as one table: ``pyarrow.dataset.dataset(STORE, format="parquet")``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from cnnlens.errors import InputError

__all__ = ["LOCK_FILE", "SETTINGS_FILE", "Store", "StoreError", "canonical_hash"]

logger = logging.getLogger(__name__)

SETTINGS_FILE = "_cnnlens_store.json"
LOCK_FILE = "_cnnlens_store.lock"
_PART_GLOB = "part-*.parquet"


class StoreError(InputError):
    """A store that cannot be used as asked (other settings, not a store, wrong kind)."""


def canonical_hash(value: Any) -> str:
    """sha256 (hex) of ``value`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        if json.dumps(old.get(k), sort_keys=True, default=str) != json.dumps(
            new.get(k), sort_keys=True, default=str
        ):
            a, b = str(old.get(k))[:60], str(new.get(k))[:60]
            out.append(f"{k}: store has {a}, this run {b}")
    return out


class Store:
    """A folder of Parquet part files sharing one schema and one set of settings.

    Use :meth:`open` to create or reopen a store for writing and :meth:`read` to open an
    existing one for reading.

    Example:
        >>> schema = pa.schema([("key", pa.string()), ("value", pa.float32())])
        >>> store = Store.open("runs/s", kind="demo", settings={"a": 1}, schema=schema)
        >>> store.write_part(pa.table({"key": ["x"], "value": [1.0]}, schema=schema))
        ... # doctest: +SKIP
    """

    def __init__(self, path: Path, meta: dict[str, Any], schema: pa.Schema | None) -> None:
        self.path = path
        self.meta = meta
        self.schema = schema

    @property
    def kind(self) -> str:
        """What the store holds (``"explanations"``, ``"assessment"``)."""
        return str(self.meta.get("kind"))

    @property
    def settings(self) -> dict[str, Any]:
        """The settings every row of the store was computed with."""
        return dict(self.meta.get("settings") or {})

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        kind: str,
        settings: Mapping[str, Any],
        schema: pa.Schema,
        version: int = 1,
        overwrite: bool = False,
        info: Mapping[str, Any] | None = None,
        overwrite_hint: str | None = None,
    ) -> Store:
        """Create the store, or reopen it to resume when its settings equal ``settings``.

        Args:
            path: the store folder (created when missing).
            kind: what the store holds; a store of another kind is refused.
            settings: everything the rows depend on (JSON-able); compared on reopen.
            schema: the rows' Arrow schema (also checked on reopen).
            version: the schema version of ``kind``.
            overwrite: clear a store written with other settings (or another kind)
                instead of refusing it.
            info: facts that do not decide the rows (model path, engine); stored, never
                compared.
            overwrite_hint: how the caller's user asks for ``overwrite`` (ends the refusal;
                default ``"pass overwrite=True (--overwrite) to replace it"``).

        Raises:
            StoreError: ``path`` holds another kind of store or other settings (and not
                ``overwrite``), or is a non-empty folder that is not a store.
            InputError: ``path`` exists and is a file.
        """
        root = Path(path).expanduser()
        if root.exists() and not root.is_dir():
            raise InputError(f"store {str(root)!r} exists and is not a folder")
        meta = {
            "kind": kind,
            "version": version,
            "settings": json.loads(json.dumps(dict(settings), default=str)),
            "settings_hash": canonical_hash(dict(settings)),
            "schema": [f"{f.name}: {f.type}" for f in schema],
            "info": json.loads(json.dumps(dict(info or {}), default=str)),
        }
        file = root / SETTINGS_FILE
        if file.is_file():
            old = cls._read_meta(root)
            same = (
                old.get("kind") == kind
                and old.get("version") == version
                and old.get("settings_hash") == meta["settings_hash"]
                and old.get("schema") == meta["schema"]
            )
            if not same and not overwrite:
                diff = _differences(
                    {"kind": old.get("kind"), "version": old.get("version"), **old["settings"]},
                    {"kind": kind, "version": version, **meta["settings"]},
                ) or ["schema differs"]
                raise StoreError(
                    f"store {str(root)!r} was written with other settings ({'; '.join(diff[:4])}"
                    f"{' ...' if len(diff) > 4 else ''}); "
                    f"{overwrite_hint or 'pass overwrite=True (--overwrite) to replace it'}, "
                    "or write to another folder"
                )
            if not same:
                logger.warning("overwriting store %s written with other settings", root)
                cls._clear(root)
            else:
                meta["created"] = old.get("created")
        elif root.is_dir() and any(root.iterdir()):
            if not overwrite:
                raise StoreError(
                    f"folder {str(root)!r} is not empty and is not a cnnlens store; "
                    "give an empty or new folder"
                )
            cls._clear(root)
        root.mkdir(parents=True, exist_ok=True)
        meta.setdefault("created", None)
        meta["created"] = meta["created"] or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        cls._write_bytes(file, json.dumps(meta, indent=1).encode())
        return cls(root, meta, schema)

    @classmethod
    def read(cls, path: str | os.PathLike[str], *, kind: str | None = None) -> Store:
        """An existing store, for reading.

        Raises:
            StoreError: ``path`` is not a store (or not of ``kind``).
        """
        root = Path(path).expanduser()
        if not (root / SETTINGS_FILE).is_file():
            what = "does not exist" if not root.exists() else f"has no {SETTINGS_FILE}"
            raise StoreError(f"{str(root)!r} is not a cnnlens store ({what})")
        meta = cls._read_meta(root)
        if kind is not None and meta.get("kind") != kind:
            raise StoreError(f"store {str(root)!r} holds {meta.get('kind')}, expected {kind}")
        return cls(root, meta, None)

    @staticmethod
    def _read_meta(root: Path) -> dict[str, Any]:
        try:
            meta = json.loads((root / SETTINGS_FILE).read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"store {str(root)!r}: unreadable {SETTINGS_FILE} ({err})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
            raise StoreError(f"store {str(root)!r}: {SETTINGS_FILE} has no settings")
        return meta

    @staticmethod
    def _clear(root: Path) -> None:
        for p in root.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()

    @staticmethod
    def _write_bytes(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def parts(self) -> list[Path]:
        """The finished part files, sorted by name (= by time written)."""
        return sorted(self.path.glob(_PART_GLOB))

    def write_part(self, table: pa.Table) -> Path:
        """Write one batch of rows atomically: a hidden temporary file, then a rename.

        Raises:
            StoreError: the table's schema is not the store's.
        """
        if self.schema is not None and not table.schema.equals(self.schema):
            raise StoreError(
                f"rows do not match the store's schema: got {table.schema.names}, "
                f"expected {self.schema.names}"
            )
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        final = self.path / name
        tmp = self.path / f".{name}.tmp"
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def dataset(self) -> pads.Dataset:
        """The store as one lazy :class:`pyarrow.dataset.Dataset` (nothing is read yet)."""
        parts = self.parts()
        if not parts:
            schema = self.schema
            if schema is None:
                raise StoreError(f"store {str(self.path)!r} holds no rows yet")
            return pads.dataset(pa.Table.from_batches([], schema=schema))
        return pads.dataset([str(p) for p in parts], format="parquet")

    def done_keys(self, column: str = "key") -> set[str]:
        """The keys of every row already written (reads that one column only)."""
        if not self.parts():
            return set()
        keys: set[str] = set()
        for batch in self.dataset().to_batches(columns=[column]):
            keys.update(batch.column(0).to_pylist())
        return keys

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's lock file while a run writes (one run per store at a time).

        A lock left by a process that no longer exists on this host is taken over.

        Raises:
            StoreError: another live run holds the store.
        """
        lock = self.path / LOCK_FILE
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                host, _, pid = lock.read_text().partition(" ")
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    logger.warning("taking over the lock of a finished run (pid %s)", pid)
                    lock.unlink(missing_ok=True)
                    continue
                raise StoreError(
                    f"store {str(self.path)!r} is being written by another run ({host} pid "
                    f"{pid}); wait for it, or delete {LOCK_FILE} if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            break
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by a killed writer; return how many."""
        n = 0
        for p in self.path.glob(".part-*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
        return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
