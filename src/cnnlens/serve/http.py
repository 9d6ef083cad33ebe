"""The explorer's HTTP side: the standard library's threading HTTP server, JSON endpoints.

Routes (all answers JSON unless noted; errors are ``{"error": "one sentence"}`` with status
400, 404, 413 or 503, and the server keeps serving):

- ``GET /``: the page (one HTML file with its CSS and JS inline; no external asset).
- ``GET /api/info``: model, weights, methods, layers, class names, images.
- ``POST /api/upload``: the raw image bytes as the body (``X-Filename`` header for its name).
- ``POST /api/explain``, ``/api/compare``, ``/api/trust``, ``/api/report``, ``/api/model``:
  a JSON body with the operation's arguments (see :class:`cnnlens.serve.app.Explorer`).
- ``GET /out/<image>/report.html``: a written report (only files under the output folder).
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cnnlens.errors import CnnlensError
from cnnlens.serve.app import MAX_UPLOAD_BYTES, Busy, Explorer

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024
#: An over-large body up to this size is read and dropped before the 413 answer (a client
#: still sending gets the message, not a broken pipe); anything larger is cut off.
DRAIN_BYTES = 256 * 1024 * 1024


def page() -> bytes:
    """The explorer page (packaged with cnnlens)."""
    return resources.files("cnnlens.serve").joinpath("static/index.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    explorer: Explorer
    server_version = "cnnlens-explorer"

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    # -------------------------------------------------------------- answers
    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _body(self, limit: int) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            if length <= DRAIN_BYTES:  # read and drop it, so the client sees the answer
                for start in range(0, length, 1 << 20):
                    self.rfile.read(min(1 << 20, length - start))
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the upload is {length:,} bytes, more than the limit of {limit:,}",
            )
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    # -------------------------------------------------------------- routes
    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, page(), "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif path == "/api/info":
            self._json(self.explorer.describe())
        elif path.startswith("/out/"):
            self._file(unquote(path[len("/out/") :]))
        else:
            self._error(404, f"no such page: {path}")

    def _file(self, rel: str) -> None:
        base = self.explorer.out_dir
        target = (base / rel).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            self._error(404, f"no such file: {rel}")
            return
        ctype = "text/html; charset=utf-8" if target.suffix == ".html" else "image/png"
        self._send(200, target.read_bytes(), ctype)

    def _foreign(self) -> str | None:
        """Why a request is refused as not coming from the explorer's own page, or None.

        The Host must be the loopback address (DNS rebinding), and the body's Content-Type
        one a cross-site form cannot send without a CORS preflight, which this server never
        grants (a page on another site cannot make the explorer work or load a model).
        """
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            return f"requests must be addressed to 127.0.0.1, not {host or 'no host'}"
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        path = urlparse(self.path).path
        wanted = "application/octet-stream" if path == "/api/upload" else "application/json"
        if ctype != wanted:
            return f"{path} takes Content-Type {wanted}, got {ctype or 'none'}"
        return None

    def do_POST(self) -> None:
        path = urlparse(self.path).path
        refused = self._foreign()
        if refused:
            self._error(HTTPStatus.FORBIDDEN, refused)
            self.close_connection = True
            return
        try:
            if path == "/api/upload":
                data = self._body(MAX_UPLOAD_BYTES)
                if data is None:
                    return
                name = Path(unquote(self.headers.get("X-Filename") or "upload")).name[:100]
                self._json(self.explorer.upload(data, name or "upload"))
                return
            raw = self._body(MAX_JSON_BYTES)
            if raw is None:
                return
            args = json.loads(raw or b"{}")
            if not isinstance(args, dict):
                raise ValueError("the request body must be a JSON object")
            self._json(self._call(path, args))
        except Busy as err:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
        except (CnnlensError, ValueError, KeyError, TypeError) as err:
            self._error(400, str(err).strip("'\"") or type(err).__name__)
        except Exception as err:  # the server keeps serving; the message says what failed
            logger.exception("request %s failed", path)
            self._error(500, f"{type(err).__name__}: {err}")

    def _call(self, path: str, a: dict[str, Any]) -> Any:
        ex = self.explorer
        if path == "/api/explain":
            return ex.explain(
                str(a["image"]),
                str(a.get("method") or "gradcam"),
                a.get("layer") or None,
                a.get("target"),
                a.get("class_name") or None,
            )
        if path == "/api/compare":
            methods = [str(m) for m in a["methods"]]
            return ex.compare(str(a["image"]), methods, a.get("target"), a.get("class_name"))
        if path == "/api/trust":
            method = str(a.get("method") or "gradcam")
            return ex.trust(str(a["image"]), method, a.get("target"), a.get("class_name"))
        if path == "/api/report":
            written = ex.report(str(a["image"]), [str(m) for m in a["methods"]])
            return {"url": "/out/" + written.relative_to(ex.out_dir).as_posix()}
        if path == "/api/model":  # registry names only: the page never names a file to read
            return ex.load_model_by_name(str(a["model"]))
        raise KeyError(f"no such endpoint: {path}")


def make_server(explorer: Explorer, port: int = 8765) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1 (``port=0``: any free port; see ``server.server_port``)."""
    handler = type("Handler", (_Handler,), {"explorer": explorer})
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(explorer: Explorer, port: int = 0) -> ThreadingHTTPServer:
    """Start a server in a daemon thread (for tests and notebooks); ``shutdown()`` stops it."""
    server = make_server(explorer, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
