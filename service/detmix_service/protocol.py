"""uvicorn's HTTP protocol (httptools) with a bound on the time a request's head may take.

uvicorn has ``timeout_keep_alive`` for idle connections but no header timeout: a client that
sends a header line every few seconds holds its connection (and a file descriptor) for as long
as it likes, and a few hundred such clients exhaust a server (slowloris). This protocol arms a
timer when a connection opens and when a request's first byte arrives, disarms it when the head
is complete, and when it fires first answers ``408`` (JSON, the service's error shape) and closes
the connection, as nginx's ``client_header_timeout`` does. The body's own bounds (deadline,
minimum pace) are the app's. The timeout is ``config.header_timeout_s``, set by
:func:`detmix_service.server.main` from the setting of the same name.
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["DEFAULT_HEADER_TIMEOUT_S", "HeaderTimeoutProtocol", "header_timeout_answer"]

DEFAULT_HEADER_TIMEOUT_S = 10.0


def header_timeout_answer(timeout_s: float) -> bytes:
    """The whole 408 answer: status line, headers, JSON body."""
    body = json.dumps({"detail": [{
        "loc": ["header"], "type": "header_timeout",
        "msg": f"the request's head (request line and headers) did not arrive within {timeout_s:g} s",
    }]}).encode()
    head = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"x-content-type-options: nosniff\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


class HeaderTimeoutProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s: float = getattr(config, "header_timeout_s", DEFAULT_HEADER_TIMEOUT_S)
        self._head_timer: TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.logger.debug("%s:%d - closed: the request's head took over %g s", *(self.client or ("?", 0)),
                             self.header_timeout_s)
            self.transport.write(header_timeout_answer(self.header_timeout_s))
            self.transport.close()
