"""``/docs`` (Swagger UI), with its JavaScript, CSS and icon served by the service itself: FastAPI's
default page loads them from a CDN, which leaves it blank on an offline or air-gapped machine. The
assets are those the ``fastapi-offline`` package ships (Swagger UI 5, Apache-2.0; the package is
MIT); only its files are used. There is no ``/redoc``: ReDoc's bundle fetches its logo from a CDN.
``api_docs: false`` leaves this router out (and ``/openapi.json`` with it)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from detmix_service.errors import NotFound

__all__ = ["ASSETS", "router"]

router = APIRouter(include_in_schema=False)

#: The files served under ``/docs/assets/``, with their media types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
_PREFIX = "/docs/assets"


@cache
def _asset(name: str) -> bytes:
    return files("fastapi_offline").joinpath("static", name).read_bytes()


def _title(request: Request) -> str:
    return f"{request.app.title} {request.app.version}"


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title=f"{_title(request)}: API",
        swagger_js_url=f"{_PREFIX}/swagger-ui-bundle.js", swagger_css_url=f"{_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{_PREFIX}/favicon.png",
    )


@router.get(_PREFIX + "/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no documentation asset is named {name!r}; there are {sorted(ASSETS)}", ["path", "name"])
    return Response(_asset(name), media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
