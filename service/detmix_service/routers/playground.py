"""``GET /``: the playground page (a static file; it calls the API from the browser)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

_PAGE = files("detmix_service").joinpath("static", "index.html")


@router.get("/", response_class=HTMLResponse)
async def playground() -> HTMLResponse:
    return HTMLResponse(_PAGE.read_text(encoding="utf-8"))
