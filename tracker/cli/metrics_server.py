"""``tracker worker``'s own HTTP server: ``/metrics`` and ``/healthz`` (the web app's handlers) on
``TRACKER_METRICS_PORT``, in the worker's event loop, so a worker in a process of its own is scraped too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from tracker.cli.common import uvicorn_logging
from tracker.web.ops import worker_app

log = logging.getLogger("tracker")


class _InLoop(uvicorn.Server):
    """A uvicorn server that leaves the signals to the worker, whose event loop it shares."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class MetricsServer:
    def __init__(self, container: Any, host: str) -> None:
        self.container = container
        self.host = host
        self.port: int = container.settings.metrics_port
        self._server: _InLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen, unless the port is 0. A port that cannot be had is logged as an error and the worker runs on
        without the server: polling and alerting matter more than their metrics."""
        if not self.port:
            log.info("worker serves no /metrics: TRACKER_METRICS_PORT is 0")
            return
        try:
            sock = _listen(self.host, self.port)
        except OSError as exc:
            log.error("worker cannot serve /metrics and /healthz on %s:%s (%s); it runs on without them: set "
                      "TRACKER_METRICS_PORT to a free port, or 0", self.host, self.port, exc.strerror or exc)
            return
        config = uvicorn.Config(worker_app(self.container), lifespan="off", server_header=False,
                                timeout_graceful_shutdown=5, **uvicorn_logging(self.container.settings))
        self._server = _InLoop(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        log.info("worker serving /metrics and /healthz on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
