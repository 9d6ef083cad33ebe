"""One progress bar for every long loop in cnnlens: methods, the demo, assess, prototypes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Progress", "progress_bar"]


class Progress:
    """A progress bar over ``total`` units; silent when disabled.

    Use :meth:`advance` after each unit of work and :meth:`describe` to change the text.
    """

    def __init__(self, bar: Any, task: Any) -> None:
        self._bar = bar
        self._task = task

    def advance(self, n: float = 1) -> None:
        """Move the bar forward by ``n`` units."""
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def describe(self, text: str) -> None:
        """Replace the text shown left of the bar."""
        if self._bar is not None:
            self._bar.update(self._task, description=text)


@contextmanager
def progress_bar(
    enabled: bool, total: float | None, description: str = "", *, transient: bool = False
) -> Iterator[Progress]:
    """A rich progress bar (on stderr) for a ``with`` block; a no-op when ``enabled`` is False.

    ``transient=True`` clears the bar when the block ends (the methods' inner loops).

    Example:
        >>> with progress_bar(True, total=10, description="explaining") as bar:  # doctest: +SKIP
        ...     for _ in range(10):
        ...         bar.advance()
    """
    if not enabled:
        yield Progress(None, None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )
    with bar:
        yield Progress(bar, bar.add_task(description, total=total))
