"""The gallery's local HTTP server: read-only, standard library only.

Routes (GET and HEAD; anything else is refused):

* ``/`` and ``/static/<file>``: the page and its vendored scripts (this package's ``static/`` folder);
* ``/api/trials``: the list of trials (JSON), ``/api/trial?id=<name>/<trial>``: one trial's details;
* ``/files/<path>``: a file of a trial, ``<path>`` relative to the served root; byte ranges are honoured (video
  seeking). A path that leaves the root (``..``, an absolute path, a symbolic link pointing outside) is refused.

Nothing is ever written: not into the served folder, not anywhere else.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Tuple

from threestudio.gallery import trials as T

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TYPES = {".glb": "model/gltf-binary", ".ply": "application/octet-stream", ".mp4": "video/mp4", ".webm": "video/webm",
         ".js": "text/javascript; charset=utf-8", ".json": "application/json", ".yaml": "text/plain; charset=utf-8",
         ".csv": "text/csv; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


def resolve_under(root: str, rel: str) -> Optional[str]:
    """The real path of the regular file ``rel`` inside ``root``, or None when ``rel`` is absolute, climbs out
    (``..``), holds odd characters, or resolves (through links) to anything outside ``root``."""
    if not rel or "\0" in rel or "\\" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, *parts))
    if not path.startswith(base + os.sep) or not os.path.isfile(path):
        return None
    return path


def _content_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


class GalleryHandler(BaseHTTPRequestHandler):
    root: str = "."
    server_version = "threestudio-gallery"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    # ---- dispatch
    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _refuse(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "the gallery is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # type: ignore[assignment]

    def _dispatch(self, head: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        if path in ("/", "/index.html"):
            return self._file(os.path.join(STATIC, "index.html"), head)
        if path.startswith("/static/"):
            found = resolve_under(STATIC, path[len("/static/"):])
            return self._file(found, head) if found else self.send_error(HTTPStatus.NOT_FOUND)
        if path == "/api/trials":
            return self._json([T.summary(self.root, t) for t in T.find_trials(self.root)], head)
        if path == "/api/trial":
            tid = (query.get("id") or [""])[0]
            trial = self._trial(tid)
            return self._json(T.details(self.root, trial), head) if trial else self.send_error(HTTPStatus.NOT_FOUND)
        if path.startswith("/files/"):
            found = resolve_under(self.root, path[len("/files/"):])
            return self._file(found, head) if found else self.send_error(HTTPStatus.NOT_FOUND)
        self.send_error(HTTPStatus.NOT_FOUND)

    def _trial(self, tid: str) -> Optional[str]:
        marker = resolve_under(self.root, f"{tid}/configs/parsed.yaml") if tid else None
        if marker is None or tid.count("/") != 1:
            return None
        return os.path.dirname(os.path.dirname(marker))

    # ---- responses
    def _json(self, obj: Any, head: bool) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(self, path: Optional[str], head: bool) -> None:
        if path is None or not os.path.isfile(path):
            return self.send_error(HTTPStatus.NOT_FOUND)
        size = os.path.getsize(path)
        rng = _byte_range(self.headers.get("Range"), size)
        if rng == "bad":
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return
        start, end = rng if isinstance(rng, tuple) else (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if isinstance(rng, tuple) else HTTPStatus.OK)
        self.send_header("Content-Type", _content_type(path))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(max(end - start + 1, 0)))
        if isinstance(rng, tuple):
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head or size == 0:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):  # the browser stopped reading (seeking a video)
                    return
                left -= len(chunk)


def _byte_range(header: Optional[str], size: int) -> Any:
    """None (no range), (start, end) inclusive, or "bad"."""
    if not header:
        return None
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return "bad"
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
    else:  # the last N bytes
        start, end = max(size - int(m.group(2)), 0), size - 1
    end = min(end, size - 1)
    if start > end or start >= size:
        return "bad"
    return start, end


def make_server(root: str, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False
                ) -> Tuple[ThreadingHTTPServer, str]:
    """A server for ``root`` (not started: call ``serve_forever``) and its URL; port 0 picks a free port."""
    handler = type("Handler", (GalleryHandler,), {"root": os.path.realpath(root)})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    httpd.verbose = verbose  # type: ignore[attr-defined]
    return httpd, f"http://{host}:{httpd.server_address[1]}/"
