"""One progress bar for every long loop in cnnlens: methods, metrics, the demo, assess,
prototypes.

A loop opens :func:`progress_bar`. Outside any bar it shows its own bar on stderr when asked
to (``enabled=True``), or, with ``enabled=None``, only once it has run for a few seconds; it
stays quiet when stderr is not a terminal. Inside a bar that is shown (the CLI's
``explaining`` bar), every inner loop adds its own line to that bar for as long as it runs,
so one photo explained with RISE shows the masks going by rather than ``0/1`` for minutes.
``enabled=False`` keeps a loop from opening a bar of its own, never from joining one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["AUTO_DELAY", "Progress", "progress_bar", "shows_progress"]

# seconds a loop with ``enabled=None`` runs before its bar appears
AUTO_DELAY = 2.0

_state = threading.local()  # .bar: the rich Progress this thread shows now, if any


class Progress:
    """A progress bar over ``total`` units; silent when disabled.

    Use :meth:`advance` after each unit of work and :meth:`describe` to change the text.
    """

    def __init__(self, bar: Any, task: Any, start_at: float | None = None) -> None:
        self._bar = bar
        self._task = task
        self._start_at = start_at  # a bar not yet shown appears at this time (perf_counter)

    def advance(self, n: float = 1) -> None:
        """Move the bar forward by ``n`` units."""
        if self._bar is None:
            return
        self._bar.advance(self._task, n)
        if self._start_at is not None and time.perf_counter() >= self._start_at:
            self._start_at = None
            self._bar.start()

    def describe(self, text: str) -> None:
        """Replace the text shown left of the bar."""
        if self._bar is not None:
            self._bar.update(self._task, description=text)


def _terminal() -> bool:
    from rich.console import Console

    return bool(Console(stderr=True).is_terminal)


def shows_progress() -> bool:
    """Whether a bar is open in this thread (inner loops then add their lines to it)."""
    return getattr(_state, "bar", None) is not None


@contextmanager
def progress_bar(
    enabled: bool | None, total: float | None, description: str = "", *, transient: bool = False
) -> Iterator[Progress]:
    """A rich progress bar (on stderr) for a ``with`` block.

    Args:
        enabled: True: a bar of its own at once; None: a bar of its own once the loop has run
            :data:`AUTO_DELAY` seconds (long library calls); False: none of its own. In every
            case the loop adds a line to a bar already open in this thread, removed when the
            loop ends, and no bar is drawn when stderr is not a terminal.
        total: units of work (None: unknown).
        description: the text left of the bar.
        transient: clear the bar when the block ends (the methods' inner loops).

    Example:
        >>> with progress_bar(True, total=10, description="explaining") as bar:  # doctest: +SKIP
        ...     for _ in range(10):
        ...         bar.advance()
    """
    outer = getattr(_state, "bar", None)
    if outer is not None:
        task = outer.add_task(description, total=total)
        try:
            yield Progress(outer, task)
        finally:
            outer.remove_task(task)
        return
    if enabled is False or not _terminal():
        yield Progress(None, None)
        return
    bar = _rich_bar(transient)
    delayed = enabled is None
    _state.bar = bar
    try:
        if not delayed:
            bar.start()
        yield Progress(
            bar,
            bar.add_task(description, total=total),
            time.perf_counter() + AUTO_DELAY if delayed else None,
        )
    finally:
        _state.bar = None
        bar.stop()


def _rich_bar(transient: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    return RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )
