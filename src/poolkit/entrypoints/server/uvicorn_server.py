"""uvicorn for hostile clients: what its h11 protocol and its ``Server`` do not do themselves.

:class:`PoolkitH11Protocol` (``uvicorn.Config(http=...)``), per connection:

- **header timeout**: a connection has ``header_timeout`` seconds to send a request's headers, from when it
  opens and from the first byte of each later request on a kept-alive connection; then it is closed (with a
  408 if part of a request came). uvicorn has no such timeout (slow-header clients hold connections forever);
- **max connections**: the connections beyond ``max_connections`` get their request answered 503 in the
  error shape and are closed (uvicorn's ``limit_concurrency`` answers plain text);
- **protocol errors** (malformed request line, headers or ``Content-Length``), which uvicorn answers itself,
  are a 400 in the error shape;
- **a body still arriving after an early answer** (413) is read and dropped for at most ``body_timeout``
  seconds, so that a client still sending reads the answer rather than a connection reset; then the
  connection is closed.

:class:`PoolkitServer` (``uvicorn.Server``): once ``shutdown_timeout`` has passed after SIGTERM/SIGINT, the
requests still running are answered 503 by the middleware (uvicorn would cancel them into tracebacks and
plain-text 500s), and SIGTERM ends the process with status 0 once it has stopped (uvicorn re-raises it: -15).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Generator
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..server_args import ServerArgs
from .errors import error_response
from .metrics import ServerMetrics
from .middleware import CLOSE, Shutdown

logger = logging.getLogger(__name__)

# uvicorn's own deadline for in-flight requests, after ours has answered them 503: a backstop only.
SHUTDOWN_BACKSTOP_S = 5.0
_REFUSAL_LOG_INTERVAL_S = 10.0


class PoolkitH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout, a connection limit, a bounded body drain after an early
    answer, and its own 400s in the error shape. Make one with :meth:`configured`."""

    settings: ClassVar[ServerArgs] = ServerArgs()
    metrics: ClassVar[ServerMetrics | None] = None
    _last_refusal_log: ClassVar[float] = 0.0

    @classmethod
    def configured(cls, settings: ServerArgs, metrics: ServerMetrics | None = None) -> type[PoolkitH11Protocol]:
        """This protocol for ``uvicorn.Config(http=...)``, with the limits of ``settings``."""
        return type(cls.__name__, (cls,), {"settings": settings, "metrics": metrics})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = self.settings.header_timeout
        self.body_drain_timeout = self.settings.body_timeout
        self.max_connections = self.settings.max_connections
        self._header_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    # -- connection life ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.metrics is not None:
            self.metrics.connection_opened()
        if len(self.connections) > self.max_connections:
            self.app = self._refuse  # its request (once its headers are in) gets 503, then the connection closes
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_timer = _cancel(self._header_timer)
        self._drain_timer = _cancel(self._drain_timer)
        if self.metrics is not None:
            self.metrics.connection_closed()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # the first bytes of a request (a new one on a kept-alive connection)
            self._arm_header_timer()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # its headers are complete (or it failed: answered 400)
            self._header_timer = _cancel(self._header_timer)
        if self._drain_timer is not None and not self._draining():
            self._drain_timer = _cancel(self._drain_timer)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if (self._draining() and self._drain_timer is None and self.body_drain_timeout > 0
                and not self.transport.is_closing()):
            self._drain_timer = self.loop.call_later(self.body_drain_timeout, self._drain_timeout)

    # -- header timeout ------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self.header_timeout > 0:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial = bool(self.conn.trailing_data[0])
        logger.debug("Closing a connection from %s: no complete request headers within %g s", self.client,
                     self.header_timeout)
        if self.metrics is not None:
            self.metrics.connection_rejected("header_timeout")
        if partial:  # part of a request came: say why it is cut off (h11 cannot: no request to answer yet)
            response = error_response(408, f"The request headers were not received within this server's limit "
                                           f"of {self.header_timeout:g} s", CLOSE)
            self.transport.write(_raw_response(408, b"Request Timeout", response.raw_headers, bytes(response.body)))
        self._close()

    # -- body drain after an early answer ----------------------------------------------------------

    def _draining(self) -> bool:
        """Our answer is sent while the request's body is still coming (uvicorn reads and drops it)."""
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY

    def _drain_timeout(self) -> None:
        self._drain_timer = None
        if self._draining() and not self.transport.is_closing():
            logger.debug("Closing a connection from %s: its request body was still arriving %g s after the answer",
                         self.client, self.body_drain_timeout)
            if self.metrics is not None:
                self.metrics.connection_rejected("body_drain")
            self._close()

    # -- refusals and protocol errors ------------------------------------------------------------------

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        """The app of a connection beyond ``max_connections``."""
        if self.metrics is not None:
            self.metrics.connection_rejected("max_connections")
        now = time.monotonic()
        if now - PoolkitH11Protocol._last_refusal_log > _REFUSAL_LOG_INTERVAL_S:
            PoolkitH11Protocol._last_refusal_log = now
            logger.warning("More than %d open connections: answering new ones 503", self.max_connections)
        response = error_response(503, f"The server has too many open connections (limit "
                                       f"{self.max_connections}); retry later", {**CLOSE, "Retry-After": "1"})
        await response(scope, receive, send)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, in the error shape."""
        if self.metrics is not None:
            self.metrics.connection_rejected("bad_request")
        response = error_response(400, "Invalid HTTP request: malformed request line, header or Content-Length",
                                  CLOSE)
        events = (h11.Response(status_code=400, headers=response.raw_headers, reason=b"Bad Request"),
                  h11.Data(data=bytes(response.body)), h11.EndOfMessage())
        try:
            self.transport.write(b"".join(self.conn.send(event) or b"" for event in events))
        except h11.LocalProtocolError:  # nothing can be answered in this state: just close
            pass
        self.transport.close()

    def _close(self) -> None:
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def _cancel(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
    """Cancel ``timer`` if set; ``None`` (to store in its place)."""
    if timer is not None:
        timer.cancel()
    return None


def _raw_response(status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, reason), *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class PoolkitServer(uvicorn.Server):
    """``uvicorn.Server`` that answers requests still running at the shutdown deadline 503 (through
    ``shutdown``, the app's :class:`~.middleware.Shutdown`) and exits 0 on SIGTERM."""

    def __init__(self, config: uvicorn.Config, shutdown: Shutdown, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.app_shutdown = shutdown
        self.shutdown_timeout = shutdown_timeout

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            try:
                yield
            finally:
                # uvicorn re-raises the signals it caught once it has stopped: after a clean drain SIGTERM would
                # then kill the process (status -15). Exit normally instead; SIGINT still raises KeyboardInterrupt.
                if signal.SIGTERM in self._captured_signals:
                    logger.info("Stopped on SIGTERM")
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = asyncio.get_running_loop().call_later(self.shutdown_timeout, self._deadline_passed)
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    def _deadline_passed(self) -> None:
        running = len(self.server_state.tasks)
        if running:
            logger.warning("Shutdown timeout of %g s passed with %d request(s) still running: answering them 503",
                           self.shutdown_timeout, running)
        self.app_shutdown.expire()
