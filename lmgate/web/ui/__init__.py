"""The web dashboard at ``/ui``: three static files shipped in the package (no CDN,
no build step), read once and served from memory. Everything it shows comes from
the admin API, with the admin key the user signs in with (kept in the browser tab's
sessionStorage only)."""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_HEADERS = {
    # Only this origin's own files; no inline script or style, no framing.
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@functools.cache
def _file(name: str) -> bytes:
    return resources.files("lmgate.web.ui").joinpath(name).read_bytes()


async def _serve(request: Request) -> Response:
    name = request.path_params.get("name", "index.html")
    if name not in _TYPES:
        return Response(b"not found", status_code=404, media_type="text/plain")
    return Response(_file(name), media_type=_TYPES[name], headers=_HEADERS)


async def _to_index(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


def routes() -> list[BaseRoute]:
    return [
        Route("/ui", _to_index, methods=["GET"]),
        Route("/ui/", _serve, methods=["GET"]),
        Route("/ui/{name}", _serve, methods=["GET"]),
    ]
