"""Liveness, readiness and metrics: open to all (no API key), cheap, never on a worker thread."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from detmix_service.deps import RuntimeDep
from detmix_service.metrics import CONTENT_TYPE
from detmix_service.schemas import Status

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    summary="Datasets are loaded and the server is not shutting down",
    responses={503: {"model": Status, "description": "starting or draining"}},
)
async def readyz(runtime: RuntimeDep) -> Response:
    lifecycle = runtime.lifecycle
    if lifecycle.ready:
        empty = runtime.empty_datasets
        detail = f"datasets serving no image, not offered: {empty}" if empty else None
        return JSONResponse(Status(status="ready", detail=detail).model_dump())
    return JSONResponse(
        Status(status=lifecycle.state.value, detail="not taking traffic").model_dump(),
        status_code=503,
        headers={"Retry-After": str(runtime.settings.retry_after_s)},
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
