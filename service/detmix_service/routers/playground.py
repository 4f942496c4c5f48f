"""``GET /``: the playground page, and its script and style under ``/static/`` (static files; the
page calls the API from the browser). Everything it loads comes from the service: its
Content-Security-Policy (:data:`detmix_service.middleware.PLAYGROUND_CSP`) allows nothing else."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from detmix_service.errors import NotFound

router = APIRouter(include_in_schema=False)

_STATIC = files("detmix_service").joinpath("static")
#: The page's files under ``/static/``, with their media types.
ASSETS = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}


@router.get("/", response_class=HTMLResponse)
async def playground() -> HTMLResponse:
    return HTMLResponse(_STATIC.joinpath("index.html").read_text(encoding="utf-8"))


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no playground file is named {name!r}; there are {sorted(ASSETS)}", ["path", "name"])
    return Response(_STATIC.joinpath(name).read_bytes(), media_type=ASSETS[name])
