"""Raw ASGI middlewares (no ``BaseHTTPMiddleware``: they must see every ``receive()``).

* :class:`BodySizeLimit`: a declared ``Content-Length`` over the limit is answered 413 before the
  app runs; a body without one (chunked) is counted as it streams, and the read that would pass
  the limit raises :class:`~detmix_service.errors.PayloadTooLarge` instead of returning, so no
  byte past the limit is ever handed to the app.
* :class:`ShutdownCutoff`: a request not answered when the graceful shutdown is about to end
  (:attr:`Lifecycle.cutoff <detmix_service.runtime.Lifecycle.cutoff>`) is cancelled and answered
  a JSON 503, before uvicorn would cancel it with a plain-text 500.
* :class:`SecurityHeaders`: ``X-Content-Type-Options: nosniff`` on every answer; more on pages.
* :class:`RequestMetrics`: count and time every request by route template and status.
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detmix_service.errors import PayloadTooLarge, ServiceError, ShuttingDown
from detmix_service.metrics import Metrics
from detmix_service.runtime import Lifecycle

__all__ = ["PLAYGROUND_CSP", "BodySizeLimit", "RequestMetrics", "SecurityHeaders", "ShutdownCutoff", "security_headers"]


def _error_body(error: ServiceError) -> bytes:
    return json.dumps({"detail": error.errors}).encode()


async def _send_error(send: Send, error: ServiceError, extra: list[tuple[bytes, bytes]] = ()) -> None:
    body = _error_body(error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
        await _send_error(send, error)


class ShutdownCutoff:
    def __init__(self, app: ASGIApp, lifecycle: Lifecycle, metrics: Metrics, retry_after_s: int) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stopping = self.lifecycle.stopping
        if scope["type"] != "http" or stopping is None:
            await self.app(scope, receive, send)
            return
        started = False
        cut = False
        raised: Exception | None = None

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        async with anyio.create_task_group() as group:

            async def watch() -> None:
                nonlocal cut
                await stopping.wait()
                await anyio.sleep_until(self.lifecycle.cutoff)
                if not started:
                    cut = True
                    group.cancel_scope.cancel()

            group.start_soon(watch)
            try:
                await self.app(scope, receive, tracked_send)
            except Exception as error:  # re-raised as it is, outside the task group (no ExceptionGroup)
                raised = error
            finally:
                group.cancel_scope.cancel()
        if raised is not None:
            raise raised
        if cut:
            self.metrics.rejections.labels(ShuttingDown.reason).inc()
            await _send_error(send, ShuttingDown(
                "the server is shutting down and the request was not done within its graceful shutdown; retry "
                "on another replica or later", headers={"Retry-After": str(self.retry_after_s)}))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


#: The playground's policy: its own script, style and API, images from data: URLs (the answer's
#: images), nothing else; never framed.
PLAYGROUND_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The headers added to an answer to ``path``: ``nosniff`` everywhere; on the playground its
    Content-Security-Policy, ``X-Frame-Options: DENY`` and no referrer; the API pages are not
    framed either."""
    headers = [(b"x-content-type-options", b"nosniff")]
    if path == "/":
        headers += [(b"content-security-policy", PLAYGROUND_CSP.encode()), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]
    elif path == "/docs":
        headers += [(b"content-security-policy", b"frame-ancestors 'none'"), (b"x-frame-options", b"DENY")]
    return headers


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope.get("path", ""))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


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
