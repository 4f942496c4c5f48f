"""What a running app holds: readiness, admission of batches, the worker threads.

* :class:`Lifecycle`: ``starting`` -> ``ready`` -> ``draining``; ``/readyz`` answers 200 only
  when ready.
* :class:`Uploads`, :class:`UploadPace`: at most ``max_uploads`` bodies received at once, each
  at ``min_upload_bytes_per_s`` at least after ``upload_grace_s``, under the request's deadline.
* :class:`Admission`: at most ``max_in_flight`` batches at once. A batch is counted from its
  admission (once its body is in) until its work has really ended: a batch abandoned at its
  deadline or by its client keeps its place until its thread stops, so the bound holds for the
  CPU too. Beyond the bound a request is refused at once (429 with ``Retry-After``), never queued.
* :func:`run_job`: the batch's work in a worker thread (an ``anyio.CapacityLimiter`` of
  ``worker_threads``), under the request's deadline, cancelled when the client disconnects. A
  thread cannot be killed: the job calls ``checkpoint()`` between images, which raises once the
  request was abandoned, so the thread stops soon after.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.types import Message, Receive

from detmix.recipes import Recipe
from detmix_service.errors import ClientDisconnected, DeadlineExceeded, Overloaded, UploadTooSlow
from detmix_service.metrics import Metrics
from detmix_service.settings import Settings

__all__ = ["Admission", "Cancelled", "Lifecycle", "Runtime", "Ticket", "UploadPace", "Uploads", "run_job"]

T = TypeVar("T")


class Cancelled(Exception):
    """Raised by a checkpoint in a job whose request was abandoned."""


class Lifecycle:
    """Readiness, and the moment requests still running at shutdown are cut off: uvicorn waits
    ``graceful_timeout_s`` for them, then cancels them with a plain-text 500; the server calls
    :meth:`begin_stopping` when that wait begins and every request not answered by
    :attr:`cutoff` gets a JSON 503 instead (:class:`~detmix_service.middleware.ShutdownCutoff`)."""

    class State(enum.Enum):
        STARTING = "starting"
        READY = "ready"
        DRAINING = "draining"

    def __init__(self) -> None:
        self.state = Lifecycle.State.STARTING
        self.stopping: anyio.Event | None = None  # made in the event loop, by :meth:`arm`
        self.cutoff: float | None = None  # anyio.current_time() units

    def arm(self) -> None:
        """Make the shutdown event (in the server's event loop, at startup)."""
        self.stopping = anyio.Event()

    def begin_stopping(self, grace_s: float) -> None:
        """uvicorn's graceful wait of ``grace_s`` begins now: requests still running are cut off a
        margin before it ends (a quarter of it, at most 1 s), so that their answer goes out."""
        self.start_draining()
        self.cutoff = anyio.current_time() + grace_s - min(1.0, grace_s / 4)
        if self.stopping is not None:
            self.stopping.set()

    @property
    def ready(self) -> bool:
        return self.state is Lifecycle.State.READY

    def mark_ready(self) -> None:
        self.state = Lifecycle.State.READY

    def start_draining(self) -> None:
        self.state = Lifecycle.State.DRAINING


class Ticket:
    """One admitted batch. The worker calls :meth:`start` then :meth:`finish`; the request calls
    :meth:`abandon` when it ends, which frees the place only if the work never started."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._state = "waiting"

    def start(self) -> bool:
        with self._admission.lock:
            if self._state != "waiting":
                return False
            self._state = "running"
            return True

    def finish(self) -> None:
        self._release(("running",))

    def abandon(self) -> None:
        self._release(("waiting",))

    def _release(self, states: tuple[str, ...]) -> None:
        with self._admission.lock:
            if self._state in states:
                self._state = "done"
                self._admission.leave()


class Admission:
    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self._in_flight = 0
        self._metrics = metrics

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self, retry_after_s: int) -> Ticket:
        """A ticket, or :class:`Overloaded` (429) when ``limit`` batches are in flight."""
        with self.lock:
            if self._in_flight >= self.limit:
                raise Overloaded(
                    f"{self._in_flight} batches are in flight, the most this server takes; retry in {retry_after_s} s",
                    headers={"Retry-After": str(retry_after_s)},
                )
            self._in_flight += 1
            self._metrics.in_flight.set(self._in_flight)
        return Ticket(self)

    def leave(self) -> None:  # called with self.lock held
        self._in_flight -= 1
        self._metrics.in_flight.set(self._in_flight)

    @contextmanager
    def admitted(self, retry_after_s: int) -> Iterator[Ticket]:
        """A ticket for the block (429 at once when there is none); its place is freed when the
        block ends, or when the work started in it has ended."""
        ticket = self.enter(retry_after_s)
        try:
            yield ticket
        finally:
            ticket.abandon()


class Uploads:
    """Bodies being received at once: at most ``limit`` (beyond it 429 at once), each bounded in
    time by the request's deadline and by a minimum pace (:class:`UploadPace`). A batch is
    admitted among the batches in flight only once its body is in, so slow senders hold an upload
    place, never a batch's."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self._count = 0
        self._metrics = metrics

    @contextmanager
    def receiving(self, retry_after_s: int) -> Iterator[None]:
        if self._count >= self.limit:  # one event loop: no lock needed
            raise Overloaded(
                f"{self._count} uploads are in progress, the most this server takes; retry in {retry_after_s} s",
                headers={"Retry-After": str(retry_after_s)},
            )
        self._count += 1
        self._metrics.uploads.set(self._count)
        try:
            yield
        finally:
            self._count -= 1
            self._metrics.uploads.set(self._count)


class UploadPace:
    """A ``receive`` that keeps a body coming at ``min_rate`` bytes/s at least, once the first
    ``grace_s`` seconds are over (as nginx's ``client_body_timeout`` does between reads, but for
    the whole body): the read that would fall behind raises :class:`UploadTooSlow` (408)."""

    def __init__(self, receive: Receive, min_rate: int, grace_s: float) -> None:
        self._receive = receive
        self.min_rate = min_rate
        self.grace_s = grace_s
        self.start = anyio.current_time()
        self.received = 0
        self.done = min_rate <= 0

    async def receive(self) -> Message:
        if self.done:
            return await self._receive()
        due = self.start + self.grace_s + self.received / self.min_rate
        message = None
        with anyio.move_on_after(max(due - anyio.current_time(), 0)):
            message = await self._receive()
        if message is None:
            elapsed = anyio.current_time() - self.start
            raise UploadTooSlow(
                f"the body came at {self.received / elapsed:.0f} bytes/s ({self.received} bytes in {elapsed:.1f} s), "
                f"slower than the {self.min_rate} bytes/s this server waits for after the first {self.grace_s:g} s",
                ["body"], headers={"Connection": "close"},
            )
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        return message


@dataclass
class Runtime:
    """Everything the routes need, built by the lifespan."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle
    admission: Admission
    uploads: Uploads
    limiter: anyio.CapacityLimiter | None = None
    datasets: dict[str, Any] | None = None
    empty_datasets: list[str] = field(default_factory=list)  # configured, serving no image, not offered
    recipes: dict[str, Recipe] | None = None


async def _cancel_on_disconnect(request: Request, scope: anyio.CancelScope, gone: threading.Event) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            scope.cancel()
            return


async def run_job(
    runtime: Runtime, ticket: Ticket, job: Callable[[Callable[[], None]], T], request: Request, deadline: float
) -> T:
    """Run ``job(checkpoint)`` in a worker thread, by ``deadline`` (``anyio.current_time()``
    units); the body of ``request`` must have been read already."""
    abandoned, gone = threading.Event(), threading.Event()

    def checkpoint() -> None:
        if abandoned.is_set():
            raise Cancelled

    def work() -> T:
        if not ticket.start():
            raise Cancelled
        try:
            return job(checkpoint)
        finally:
            ticket.finish()

    outcome: dict[str, Any] = {}
    try:
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0)):
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, request, group.cancel_scope, gone)
                try:
                    outcome["value"] = await anyio.to_thread.run_sync(
                        work, limiter=runtime.limiter, abandon_on_cancel=True
                    )
                except Exception as error:  # raised by the job: re-raised below, outside the task group
                    outcome["error"] = error
                group.cancel_scope.cancel()
    finally:
        if not outcome:
            abandoned.set()
        ticket.abandon()
    if "error" in outcome:
        raise outcome["error"]
    if "value" in outcome:
        return outcome["value"]
    if gone.is_set():
        raise ClientDisconnected
    raise DeadlineExceeded(
        f"the batch was not done within the deadline of {runtime.settings.request_timeout_s:g} s; send fewer or "
        "smaller images"
    )
