"""Results that show themselves: in Jupyter, in matplotlib, as PNG files.

:class:`Displayable` gives a result class ``figure()``, ``show()``, ``plot(ax=...)``,
``save(path)`` and Jupyter's ``_repr_png_`` / ``_repr_html_``. The drawing itself lives in
:mod:`cnnlens.viz` (numpy, PIL and matplotlib stay out of ``core``): viz keeps a table of
figure builders by result type (``viz.register_figure``), and this module reaches it through
:func:`_viz`, **the one place where ``core`` imports ``viz``**: lazily, by name, on the first
call that draws, never at import time, so the import direction ``core <- viz`` holds.

>>> exp = cnnlens.explain(model, x, method="gradcam")   # doctest: +SKIP
>>> exp                                                  # in Jupyter: the overlays, inline
>>> exp.save("cat_gradcam.png")                          # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import importlib
import os
from pathlib import Path
from typing import Any


def _viz() -> Any:
    """The :mod:`cnnlens.viz` module (imported on first use; see the module docstring)."""
    return importlib.import_module("cnnlens.viz")


class Displayable:
    """Mixin for result objects that :mod:`cnnlens.viz` knows how to draw.

    Subclasses may override :meth:`facts` (name/value pairs shown under the picture in
    Jupyter). Every method takes the figure builder's keyword options (e.g. ``preset=``,
    ``class_names=``, ``image=``, ``geometry=`` for an :class:`Explanation`).
    """

    def figure(self, **options: Any) -> Any:
        """A matplotlib ``Figure`` of this result (built without pyplot)."""
        return _viz().result_figure(self, **options)

    def save(self, path: str | os.PathLike[str], **options: Any) -> Path:
        """Write the figure as a PNG file (atomically) and return its path."""
        return _viz().save_png(self.figure(**options), path)

    def plot(self, ax: Any = None, **options: Any) -> Any:
        """Draw the picture into a matplotlib ``Axes`` (a new pyplot one when None)."""
        return _viz().plot_into(self.figure(**options), ax)

    def show(self, **options: Any) -> None:
        """Show the picture: inline in Jupyter, else in a matplotlib window."""
        _viz().show_figure(self.figure(**options))

    def facts(self) -> list[tuple[str, str]]:
        """Name/value pairs printed under the picture in Jupyter."""
        return []

    def _repr_png_(self) -> bytes:
        return _viz().to_png_bytes(self.figure())

    def _repr_html_(self) -> str:
        png = base64.b64encode(self._repr_png_()).decode("ascii")
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self.facts()
        )
        alt = html.escape(type(self).__name__)
        return (
            f"<div class='cnnlens-result'><img src='data:image/png;base64,{png}' alt='{alt}' "
            f"style='max-width:100%'/><table>{rows}</table></div>"
        )
