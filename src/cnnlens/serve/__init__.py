"""``cnnlens serve``: a local web explorer for one model and a few images.

Built on the standard library's ``http.server`` (one HTML page with inline CSS and JS, JSON
endpoints), bound to 127.0.0.1; see docs/explorer.md for why no web framework.

>>> from cnnlens.serve import Explorer, make_server          # doctest: +SKIP
>>> make_server(Explorer("resnet18", images="photos/"), port=8765).serve_forever()
"""

from __future__ import annotations

from cnnlens.serve.app import MAX_PIXELS, MAX_UPLOAD_BYTES, Explorer, decode_upload
from cnnlens.serve.http import make_server, serve_in_thread

__all__ = [
    "MAX_PIXELS",
    "MAX_UPLOAD_BYTES",
    "Explorer",
    "decode_upload",
    "make_server",
    "serve_in_thread",
]
