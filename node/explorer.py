"""The block explorer: static files served from the package at ``/`` on the RPC port.

Everything the page needs ships in ``node/explorer_static`` (package data): plain ES
modules with no build step, and uPlot (vendored, MIT, its LICENSE beside it) for the
charts, so the explorer works offline and from a non-editable install. The page reads the
RPC's JSON endpoints and follows ``/ws`` for new blocks.

Every answer carries a strict Content-Security-Policy: scripts and styles only from this
origin, no inline script, no eval, connections only back to this node. Chain strings (a
moniker, a job event's note) are rendered as text by the page; the policy means that even
an escaping bug there could not run an injected script.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "explorer_static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
         ".LICENSE": "text/plain; charset=utf-8"}
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _files() -> dict[str, Path]:
    """The served files, by URL path: a fixed list read once, so no request can name a path
    outside the directory (no '..', no symlinks followed at request time)."""
    out = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file() and path.suffix in TYPES:
            out["/explorer/" + path.relative_to(STATIC).as_posix()] = path
    return out


def routes() -> list:
    files = _files()

    async def index(request: web.Request) -> web.Response:
        return _answer(STATIC / "index.html")

    async def asset(request: web.Request) -> web.Response:
        path = files.get(request.path)
        if path is None:
            raise web.HTTPNotFound(text="no such explorer file")
        return _answer(path)

    return [web.get("/", index), web.get("/explorer/{name:.+}", asset)]


def _answer(path: Path) -> web.Response:
    return web.Response(body=path.read_bytes(), headers={"Content-Type": TYPES[path.suffix], **HEADERS})
