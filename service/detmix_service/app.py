"""The app factory: ``create_app(settings)`` builds a FastAPI app; nothing is created at import.

The lifespan loads the recipes and datasets (readiness turns on when they are loaded) and turns
readiness off on shutdown. Errors of every kind are answered in one shape (see
:mod:`detmix_service.errors`) by the handlers registered here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import detmix
from detmix.recipes import Recipe, builtin_recipes
from detmix_service.cocoio import UNION_TAGS
from detmix_service.datasets import load_datasets, served_datasets
from detmix_service.errors import ClientDisconnected, ErrorItem, ServiceError
from detmix_service.metrics import Metrics
from detmix_service.middleware import BodySizeLimit, RequestMetrics, SecurityHeaders, ShutdownCutoff
from detmix_service.routers import batches, catalog, docs, health, playground
from detmix_service.runtime import Admission, Lifecycle, Runtime, Uploads
from detmix_service.schemas import DatasetBatchRequest, MixRequest
from detmix_service.settings import Settings, load_settings

__all__ = ["create_app"]

logger = logging.getLogger("detmix_service")


def load_recipes(settings: Settings) -> dict[str, Recipe]:
    """The named recipes: detmix's own, with those of ``settings.recipes_dir`` added (and
    replacing any of the same name), as :func:`detmix.recipes.builtin_recipes` reads them."""
    return builtin_recipes(settings.recipes_dir)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    runtime: Runtime = app.state.runtime
    settings = runtime.settings
    runtime.limiter = anyio.CapacityLimiter(settings.worker_threads)
    runtime.lifecycle.arm()
    runtime.recipes = load_recipes(settings)
    if not runtime.recipes:
        logger.warning("no named recipes found (set DETMIX_RECIPES_DIR): only inline recipes will work")
    loaded = await anyio.to_thread.run_sync(load_datasets, settings, batches.limits_of(runtime))
    runtime.datasets, runtime.empty_datasets = served_datasets(loaded, settings)
    runtime.lifecycle.mark_ready()
    logger.info("ready: datasets %s, recipes %s", sorted(runtime.datasets), sorted(runtime.recipes))
    try:
        # The lifespan state reaches the server too: ``detmix_service.main`` drains through it.
        yield {"lifecycle": runtime.lifecycle}
    finally:
        runtime.lifecycle.start_draining()
        runtime.lifecycle.stopping = None  # bound to this event loop, which ends here


def _error_response(status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": errors}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> JSONResponse:
        metrics.rejections.labels(error.reason).inc()
        if error.status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, error)
        return _error_response(error.status, error.errors, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.rejections.labels("invalid_input").inc()
        items = [
            ErrorItem([part for part in e["loc"] if part not in UNION_TAGS], e["msg"], e["type"])
            for e in error.errors()
        ]
        return _error_response(422, items)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        metrics.rejections.labels(f"http_{error.status_code}").inc()
        return _error_response(error.status_code, [ErrorItem([], str(error.detail), "http")], error.headers)

    @app.exception_handler(ClientDisconnect)
    @app.exception_handler(ClientDisconnected)
    async def client_left(request: Request, error: Exception) -> Response:
        metrics.rejections.labels("client_disconnected").inc()
        logger.info("%s %s: the client disconnected; its batch was abandoned", request.method, request.url.path)
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies that the batch routes read themselves (after
    admission, under their deadline)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, definitions = models_json_schema([(MixRequest, "validation"), (DatasetBatchRequest, "validation")],
                                            ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in definitions["$defs"].items():
            components.setdefault(name, definition)
        components["MixUpload"] = batches.MIX_UPLOAD_SCHEMA
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for ``settings`` (default: :func:`~detmix_service.settings.load_settings`)."""
    settings = load_settings() if settings is None else settings
    metrics = Metrics()
    app = FastAPI(
        title="detmix",
        version=detmix.__version__,
        description="COCO batches mixed on demand: CutMix and MixUp with boxes, masks and per-box weights "
        "following the pixels.",
        lifespan=_lifespan,
        # /docs is the docs router's (its assets served here, no CDN; no /redoc); both only with api_docs.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )
    lifecycle = Lifecycle()
    app.state.runtime = Runtime(settings, metrics, lifecycle, Admission(settings.max_in_flight, metrics),
                                Uploads(settings.max_uploads, metrics))
    for router in (health.router, catalog.router, batches.router, playground.router):
        app.include_router(router)
    if settings.api_docs:
        app.include_router(docs.router)
    _install_error_handlers(app, metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    # Added inside out: the last one added sees the request first.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(ShutdownCutoff, lifecycle=lifecycle, metrics=metrics, retry_after_s=settings.retry_after_s)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
