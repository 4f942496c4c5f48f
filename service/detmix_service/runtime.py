"""What a running app holds: readiness, admission of batches, the worker threads.

* :class:`Lifecycle`: ``starting`` -> ``ready`` -> ``draining``; ``/readyz`` answers 200 only
  when ready.
* :class:`Admission`: at most ``max_in_flight`` batches at once. A batch is counted from its
  admission (before its body is read) until its work has really ended: a batch abandoned at its
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from starlette.requests import Request

from detmix.recipes import Recipe
from detmix_service.errors import ClientDisconnected, DeadlineExceeded, Overloaded
from detmix_service.metrics import Metrics
from detmix_service.settings import Settings

__all__ = ["Admission", "Cancelled", "Lifecycle", "Runtime", "Ticket", "run_job"]

T = TypeVar("T")


class Cancelled(Exception):
    """Raised by a checkpoint in a job whose request was abandoned."""


class Lifecycle:
    class State(enum.Enum):
        STARTING = "starting"
        READY = "ready"
        DRAINING = "draining"

    def __init__(self) -> None:
        self.state = Lifecycle.State.STARTING

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


@dataclass
class Runtime:
    """Everything the routes need, built by the lifespan."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle
    admission: Admission
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
