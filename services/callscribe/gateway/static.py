"""The live-captions page: ``/`` and ``/static/<file>`` from the package's ``gateway/static/``.

Only the files that are in that folder when the server starts are served, looked up by exact
name in a table (no path from a request ever reaches the file system, so ``..``, ``%2e%2e``,
absolute paths and symlinks lead nowhere).  Every response carries a strict
Content-Security-Policy (scripts, styles and connections to this origin only: no inline code,
no eval, no frames), ``nosniff`` and ``no-referrer``; files are revalidated by ETag
(``Cache-Control: no-cache`` + ``If-None-Match`` -> 304), so a new release is picked up at once
without a build step that would fingerprint file names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from websockets.http11 import Request, Response

from callscribe.gateway.http import header, response, text_response

STATIC_PREFIX = "/static/"
INDEX = "index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
#: 'self' covers ws:/wss: to the same host and port (CSP Level 3), which the page needs
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; media-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


class StaticFiles:
    """The page's files, read once at start."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        if files is None:
            files = {}
            root = resources.files("callscribe.gateway") / "static"
            if root.is_dir():
                for entry in root.iterdir():
                    if entry.is_file() and not entry.name.startswith("."):
                        files[entry.name] = entry.read_bytes()
        self._files: dict[str, _File] = {}
        for name, body in files.items():
            ext = name[name.rfind("."):] if "." in name else ""
            ctype = CONTENT_TYPES.get(ext)
            if ctype is None:
                continue
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._files[name] = _File(body, ctype, etag)

    def names(self) -> list[str]:
        return sorted(self._files)

    def lookup(self, path: str) -> _File | None:
        """The file for a request path (without the query), or None when it is no page path."""
        if path == "/" or path == "/index.html":
            return self._files.get(INDEX)
        if path.startswith(STATIC_PREFIX):
            return self._files.get(path[len(STATIC_PREFIX):])
        return None

    def serve(self, request: Request, path: str) -> Response | None:
        """A response for a page path, None for any other path (the caller's 404)."""
        if path != "/" and path != "/index.html" and not path.startswith(STATIC_PREFIX):
            return None
        f = self.lookup(path)
        if f is None:
            return text_response(404, f"Not Found: {path}\n", dict(SECURITY_HEADERS))
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "Method Not Allowed: use GET\n",
                                 {"Allow": "GET, HEAD", **SECURITY_HEADERS})
        headers = {"ETag": f.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
        inm = header(request, "If-None-Match")
        if inm and f.etag in [t.strip().removeprefix("W/") for t in inm.split(",")]:
            resp = response(304, b"", f.content_type, headers)
            del resp.headers["Content-Length"]
            return resp
        resp = response(200, f.body, f.content_type, headers)
        if request.method == "HEAD":
            # websockets writes the body it is given: send the headers only
            return Response(resp.status_code, resp.reason_phrase, resp.headers, b"")
        return resp
