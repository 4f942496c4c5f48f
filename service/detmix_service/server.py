"""``python -m detmix_service`` / ``detmix serve``: run the service under uvicorn.

    python -m detmix_service [--host 127.0.0.1] [--port 8000] [--workers N] [--settings FILE]

Flags override the settings (``DETMIX_HOST``, ``DETMIX_PORT``, ``DETMIX_WORKERS``, the file).
Shutdown on SIGTERM or SIGINT: ``/readyz`` answers 503 at once, the server keeps serving for
``drain_s`` seconds (so a load balancer can notice), then stops accepting connections, lets the
requests in flight finish (``graceful_timeout_s`` at most: those still running a moment before it
ends are answered a JSON 503) and exits 0, without waiting for a worker thread still busy with an
abandoned job. A second signal stops at once. With ``--workers`` above 1 uvicorn's process manager
runs the workers: each still finishes its requests in flight, but readiness turns off only when a
worker's app shuts down, and requests past the grace period get uvicorn's own plain 500.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from PIL import Image

from detmix_service.protocol import HeaderTimeoutProtocol
from detmix_service.settings import load_settings

__all__ = ["DrainingServer", "build_parser", "main"]

logger = logging.getLogger("detmix_service")
APP_FACTORY = "detmix_service.app:create_app"
STARTUP_FAILURE = 3
#: Longest wait, after uvicorn stopped, for worker threads still running abandoned jobs.
LINGER_S = 0.5


class DrainingServer(uvicorn.Server):
    """A uvicorn server that, on the first signal, turns readiness off and keeps serving for
    ``drain_s`` before it starts uvicorn's graceful shutdown."""

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self.drain_s <= 0:
            self._mark_draining()
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._mark_draining()
        logger.info("signal %s: draining for %g s before shutting down", signal.Signals(sig).name, self.drain_s)
        timer = threading.Timer(self.drain_s, super().handle_exit, args=(sig, frame))
        timer.daemon = True
        timer.start()

    def _lifecycle(self) -> Any:
        lifespan = getattr(self, "lifespan", None)
        return getattr(lifespan, "state", {}).get("lifecycle")

    def _mark_draining(self) -> None:
        lifecycle = self._lifecycle()
        if lifecycle is not None:
            lifecycle.start_draining()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's graceful shutdown; the requests still running are told when it ends (uvicorn
        waits 0.1 s, then ``timeout_graceful_shutdown``), so that they answer a JSON 503 before
        uvicorn cancels them."""
        lifecycle = self._lifecycle()
        if lifecycle is not None:
            lifecycle.begin_stopping(0.1 + (self.config.timeout_graceful_shutdown or 0.0))
        await super().shutdown(sockets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detmix serve", description="Run the detmix REST service (uvicorn).")
    parser.add_argument("--host", help="interface to listen on (default: settings, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: settings, 8000; 0 picks a free one)")
    parser.add_argument("--workers", type=int, help="worker processes (default: settings, 1)")
    parser.add_argument("--settings", type=Path, help="YAML/JSON settings file; DETMIX_* variables override it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until a signal; returns the exit status (0 after a graceful shutdown)."""
    args = build_parser().parse_args(argv)
    if args.settings is not None:
        # Worker processes build their app from the environment: hand them the file.
        os.environ["DETMIX_SETTINGS_FILE"] = str(args.settings.resolve())
    try:
        settings = load_settings()
    except ValueError as error:
        print(f"detmix serve: error: {error}", file=sys.stderr)
        return 2
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
        workers=args.workers or settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        server_header=settings.server_header,
        http=HeaderTimeoutProtocol,
        lifespan="on",
    )
    config.header_timeout_s = settings.header_timeout_s  # read by HeaderTimeoutProtocol, in every worker
    if config.workers > 1:
        from uvicorn.supervisors import Multiprocess

        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
        # uvicorn's manager stops when a worker fails to start, but returns as from a clean stop.
        failed = any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
        return STARTUP_FAILURE if failed else 0
    server = DrainingServer(config, settings.drain_s)
    # uvicorn re-raises the signal it shut down for once it is done, under the handlers that were
    # there before it: let that be a normal exit.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_after_shutdown)
    try:
        server.run()
    except SystemExit as done:
        if done.code != 0:
            raise
    status = 0 if server.started else STARTUP_FAILURE
    _exit_if_threads_linger(status, LINGER_S)
    return status


def _exit_after_shutdown(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _exit_if_threads_linger(status: int, wait_s: float) -> None:
    """A worker thread still running a job abandoned at shutdown would keep the process alive
    until the job's next checkpoint (seconds for one large image): wait ``wait_s`` at most, then
    exit without it. Its request has been answered (503) already."""
    deadline = time.monotonic() + wait_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0))
    lingering = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon
                 and t.is_alive()]
    if lingering:
        logger.warning("exiting with %d worker thread(s) still running abandoned jobs: %s", len(lingering), lingering)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
