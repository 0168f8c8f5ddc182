"""``mapo view RUN [RUN ...]``: a read-only local server on 127.0.0.1 for the viewer page.

Why a server and not one HTML file: a self-contained page must carry every text of every item
(a 100,000-item evaluate run is hundreds of MB of JSON inside a page, parsed before the first
row shows), while the server sends the page only the table rows (a few short fields per item)
and reads an item's texts from the run folder when it is opened (see
:mod:`mapo.view.data`). It binds 127.0.0.1 only and answers only requests whose Host is
127.0.0.1 or localhost (a page of another site cannot read it through DNS rebinding); on a
compute node, forward the port (``ssh -L PORT:127.0.0.1:PORT node``). It never writes: the run
folders are opened for reading only.

Routes: ``/`` the page (``/r/<n>/view.html`` the same page, opening run ``n``; ``#item=<id>``
opens an item), ``/static/<file>`` its script, styles and the vendored Tabulator,
``/api/views``, ``/api/rows?view=V``, ``/api/item?view=V&id=ID`` (JSON), and
``/r/<n>/report/<file>`` the run's ``mapo report`` output, so that the report's links to the
viewer (``../view.html#item=<id>``) resolve.
"""

from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import os
import sys
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from mapo.view.data import RunRef, View, load_views

__all__ = ["ViewServer", "main", "serve"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The viewer's policy: scripts only from this server's files, never inline (model text cannot run)."""
REPORT_CSP = "default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; img-src data: 'self'; base-uri 'none'"
"""A served report has no script at all; its styles are inline and its figures data: URLs."""
STATIC = resources.files("mapo.view") / "static"


class ViewServer(ThreadingHTTPServer):
    """The HTTP server holding the views; ``url`` is where the page is."""

    daemon_threads = True

    def __init__(self, views: list[View], refs: list[RunRef], port: int = 0) -> None:
        self.views = {v.id: v for v in views}
        self.refs = refs
        self._rows: dict[str, bytes] = {}
        self._lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def rows_json(self, view: View) -> bytes:
        with self._lock:
            if view.id not in self._rows:
                self._rows[view.id] = json.dumps({"rows": view.rows()}, separators=(",", ":")).encode()
            return self._rows[view.id]

    def start(self) -> ViewServer:
        """Serve in a background thread (tests, notebooks); :meth:`close` stops it."""
        threading.Thread(target=self.serve_forever, name="mapo-view", daemon=True).start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer
    server_version = "mapo-view"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host not in (HOST, "localhost"):
            self._send(HTTPStatus.FORBIDDEN, b"only 127.0.0.1 / localhost\n", "text/plain")
            return
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            self._route(parts, q)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug in one view: the page shows it, the server goes on
            log.exception("mapo view: %s", self.path)
            self._json({"error": f"{type(e).__name__}: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _route(self, parts: list[str], q: dict[str, str]) -> None:
        if not parts or parts == ["index.html"] or (len(parts) == 3 and parts[0] == "r" and parts[2] == "view.html"):
            self._static("index.html")
        elif parts[0] == "static" and len(parts) == 2:
            self._static(parts[1])
        elif parts == ["api", "views"]:
            self._json({"views": [v.meta() for v in self.server.views.values()], "runs": self._runs()})
        elif parts == ["api", "rows"] and q.get("view") in self.server.views:
            self._send(HTTPStatus.OK, self.server.rows_json(self.server.views[q["view"]]), "application/json")
        elif parts == ["api", "item"] and q.get("view") in self.server.views:
            item = self.server.views[q["view"]].item(q.get("id", ""))
            if item is None:
                self._json({"error": f"no item {q.get('id')!r} in this view"}, HTTPStatus.NOT_FOUND)
            else:
                self._json(item)
        elif len(parts) >= 4 and parts[0] == "r" and parts[2] == "report":
            self._report(parts[1], parts[3:])
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _runs(self) -> list[dict[str, Any]]:
        views = {r.index: v.id for v in self.server.views.values() for r in v.runs}
        return [{**r.to_dict(), "view": views.get(r.index)} for r in self.server.refs]

    def _static(self, name: str) -> None:
        f = STATIC / name
        if "/" in name or name.startswith(".") or not f.is_file():
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        self._send(HTTPStatus.OK, f.read_bytes(), mimetypes.guess_type(name)[0] or "application/octet-stream")

    def _report(self, index: str, rest: list[str]) -> None:
        refs = {str(r.index): r for r in self.server.refs}
        ref = refs.get(index)
        if ref is None or ref.report is None or any(p in ("", ".", "..") for p in rest):
            self._send(HTTPStatus.NOT_FOUND, b"no report for this run (mapo report RUN writes one)\n", "text/plain")
            return
        root = Path(ref.report).resolve()
        f = root.joinpath(*rest).resolve()
        if not f.is_file() or root not in f.parents:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            return
        kind = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        self._send(HTTPStatus.OK, f.read_bytes(), kind, csp=REPORT_CSP)

    def _json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data, separators=(",", ":"), default=str).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str, csp: str = PAGE_CSP) -> None:
        self.send_response(status)
        charset = "; charset=utf-8" if kind.startswith("text/") or kind.endswith(("json", "javascript")) else ""
        self.send_header("Content-Type", kind + charset)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def serve(paths: list[str | Path], port: int = 0) -> ViewServer:
    """A viewer server over the run folders at ``paths`` (not yet serving: call ``start()`` or
    ``serve_forever()``); raises FileNotFoundError for a path that holds no run."""
    views, refs = load_views(paths)
    return ViewServer(views, [ref for ref, _ in refs], port)


def _can_open_browser() -> bool:
    # on Linux without a display, webbrowser would start a text browser inside this terminal
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mapo view",
        description="Every item of run folders in the browser: a read-only server on 127.0.0.1. RUN is a run "
        "folder (build, evaluate, winrate, train), a sweep folder holding runs, or a `mapo agreement` output.",
    )
    ap.add_argument("runs", nargs="+", metavar="RUN")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--no-open", action="store_true", help="print the address only; do not open a browser")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        server = serve(args.runs, args.port)
    except FileNotFoundError as e:
        print(f"mapo view: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"mapo view: cannot listen on {HOST}:{args.port}: {e}", file=sys.stderr)
        return 2
    n = sum(len(v.rows()) for v in server.views.values())
    print(f"mapo view: {len(server.refs)} run(s), {n:,} rows at {server.url}  (Ctrl-C stops)", flush=True)
    if not args.no_open and _can_open_browser():
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
