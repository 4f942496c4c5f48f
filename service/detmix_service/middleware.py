"""Raw ASGI middlewares (no ``BaseHTTPMiddleware``: they must see every ``receive()``).

* :class:`BodySizeLimit`: a declared ``Content-Length`` over the limit is answered 413 before the
  app runs; a body without one (chunked) is counted as it streams, and the read that would pass
  the limit raises :class:`~detmix_service.errors.PayloadTooLarge` instead of returning, so no
  byte past the limit is ever handed to the app.
* :class:`RequestMetrics`: count and time every request by route template and status.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detmix_service.errors import PayloadTooLarge
from detmix_service.metrics import Metrics

__all__ = ["BodySizeLimit", "RequestMetrics"]


def _error_body(error: PayloadTooLarge) -> bytes:
    return json.dumps({"detail": error.errors}).encode()


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def _too_large(self, declared: int | None = None) -> PayloadTooLarge:
        if declared is None:
            return PayloadTooLarge(f"the body is longer than the limit of {self.max_bytes} bytes", ["body"])
        return PayloadTooLarge(
            f"the body is {declared} bytes (Content-Length), more than the limit of {self.max_bytes} bytes", ["body"]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._answer(send, self._too_large(declared))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except PayloadTooLarge as error:  # raised where the app had no handler for it
            if started:
                raise
            await self._answer(send, error)

    async def _answer(self, send: Send, error: PayloadTooLarge) -> None:
        self.metrics.rejections.labels(error.reason).inc()
        body = _error_body(error)
        await send({
            "type": "http.response.start",
            "status": error.status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
