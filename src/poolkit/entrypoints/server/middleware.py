"""Checks that run before routing, on every request, and the request's life around the app.

Pure ASGI (not ``BaseHTTPMiddleware``), so a rejected request never reaches FastAPI:

- **before the body**: API key (constant-time compare), ``Host`` header against
  ``allowed_hosts``, ``Content-Length`` against ``max_request_bytes`` (413);
- **the body**: read here, chunked or not, counting bytes as they come: over
  ``max_request_bytes`` → 413 at once (memory stays bounded by the limit), not all
  there within ``body_timeout`` → 408; the app then gets the whole body in one message
  (FastAPI reads it whole anyway);
- **while the app runs**: ``receive()`` is watched for ``http.disconnect``; a client
  that goes away cancels the app's task (which cancels ``engine.process``: its queued
  work is dropped) and the request is counted with status 499. When the server stops
  (SIGTERM) and ``shutdown_timeout`` passes, requests still running are answered 503;
- **metrics**: every request is counted by endpoint, method and status, with its latency
  and the requests-in-progress gauge.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..server_args import ServerArgs
from .errors import error_response
from .metrics import ServerMetrics

logger = logging.getLogger(__name__)

# Routes open without the API key and to any Host header (load balancers and orchestrators probe it,
# often by IP address; it reveals nothing).
PUBLIC_PATHS = frozenset({"/health"})
# The status recorded for a request whose client went away before it was answered (nginx's convention).
CLIENT_CLOSED_REQUEST = 499
# Sent with answers after which the connection must not be reused (the client may still be sending).
CLOSE = {"Connection": "close"}


class Shutdown:
    """The server's stop, as the middleware sees it: :meth:`expire` once ``shutdown_timeout`` has passed
    since SIGTERM/SIGINT, and every request still running is answered 503 (see :mod:`.uvicorn_server`)."""

    def __init__(self) -> None:
        self.expired = False
        self._waiters: set[asyncio.Future[None]] = set()

    def waiter(self) -> asyncio.Future[None]:
        """A future of the running loop, done when the deadline passes (cancel it when no longer needed)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.expired:
            future.set_result(None)
        else:
            self._waiters.add(future)
            future.add_done_callback(self._waiters.discard)
        return future

    def expire(self) -> None:
        """Called on the event loop (``loop.call_later``) when the shutdown deadline passes."""
        self.expired = True
        for future in list(self._waiters):
            if not future.done():
                future.set_result(None)


def shutdown_of(scope: Scope) -> Shutdown | None:
    """The :class:`Shutdown` of the app serving ``scope`` (Starlette puts the app in the scope; apps built by
    ``build_app`` keep it in their :class:`~.context.ServerContext`)."""
    context = getattr(getattr(scope.get("app"), "state", None), "context", None)
    shutdown = getattr(context, "shutdown", None)
    return shutdown if isinstance(shutdown, Shutdown) else None


@dataclass
class _Cycle:
    """What the middleware knows about one request's response."""

    status: int = 500  # unless a response starts
    started: bool = False
    complete: bool = False
    client_gone: bool = False


class ServerMiddleware:
    """API key, allowed hosts, body size and time limits, disconnects, shutdown deadline, request metrics."""

    def __init__(self, app: ASGIApp, settings: ServerArgs, metrics: ServerMetrics,
                 endpoints: Collection[str]) -> None:
        self.app = app
        self.key = settings.api_key.encode() if settings.api_key else None
        self.max_bytes = settings.max_request_bytes
        self.body_timeout = settings.body_timeout
        self.shutdown_timeout = settings.shutdown_timeout
        self.hosts = AllowedHosts(settings.allowed_hosts) if settings.allowed_hosts else None
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)  # metric labels: these paths, everything else is "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        cycle = _Cycle()
        self.metrics.request_started(endpoint)

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                cycle.status, cycle.started = message["status"], True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                cycle.complete = True
            await send(message)

        try:
            rejection = self._reject(scope, path)
            if rejection is not None:
                await rejection(scope, receive, send_and_record)
            else:
                await self._serve(scope, receive, send_and_record, cycle)
        finally:
            status = CLIENT_CLOSED_REQUEST if cycle.client_gone and not cycle.started else cycle.status
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - start)

    def _reject(self, scope: Scope, path: str) -> Response | None:
        """The error response for a request that must not reach the app, else ``None``."""
        headers = dict(scope["headers"])
        if self.hosts is not None and path not in PUBLIC_PATHS:
            host = headers.get(b"host", b"").decode("latin-1")
            if not self.hosts.allows(host):
                return error_response(400, f"Invalid Host header {host!r}: this server answers only for "
                                           f"{', '.join(self.hosts.patterns)}")
        if self.key is not None and path not in PUBLIC_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return error_response(401, "Unauthorized: missing or invalid API key (send 'Authorization: Bearer <key>')",
                                      {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return error_response(400, "Invalid Content-Length header", CLOSE)
            if size > self.max_bytes:
                return self._too_large(f"Request body of {size} bytes is larger")
        return None

    def _too_large(self, what: str) -> Response:
        # No "Connection: close": the HTTP protocol (uvicorn_server.PoolkitH11Protocol) reads and drops the rest
        # of the body for a while, so that a client still sending reads this answer instead of a reset.
        return error_response(413, f"{what} than this server's limit of {self.max_bytes} bytes")

    async def _serve(self, scope: Scope, receive: Receive, send: Send, cycle: _Cycle) -> None:
        """Read the body, then run the app until it answers, the client goes away or the shutdown deadline passes."""
        shutdown = shutdown_of(scope)
        expiry = shutdown.waiter() if shutdown is not None else asyncio.get_running_loop().create_future()
        watcher: asyncio.Future[None] | None = None
        app_task: asyncio.Future[None] | None = None
        try:
            body = await self._read_body(scope, receive, send, cycle, expiry)
            if body is None:  # answered (413, 408, 503) or the client went away
                return
            delivered = False
            disconnected = asyncio.Event()

            async def replay() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await disconnected.wait()
                return {"type": "http.disconnect"}

            app_task = asyncio.ensure_future(self.app(scope, replay, send))
            watcher = asyncio.ensure_future(self._watch_disconnect(receive, cycle))
            waiting: set[asyncio.Future[None]] = {app_task, watcher, expiry}
            while not app_task.done():
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if app_task.done():
                    break
                if watcher in done and cycle.client_gone:
                    disconnected.set()
                    logger.debug("Client went away: cancelling %s %s", scope["method"], scope["path"])
                    await _cancel(app_task)
                    return
                if expiry in done:
                    await _cancel(app_task)
                    if not cycle.started:
                        await self._shutdown_response(scope, receive, send)
                    return
            app_task.result()  # the app's own exception, if any, goes to uvicorn as before
        finally:
            for task in (app_task, watcher, expiry):
                if task is not None and not task.done():
                    await _cancel(task)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send, cycle: _Cycle,
                         expiry: asyncio.Future[None]) -> bytes | None:
        """The whole body, or ``None`` once answered: 413 as soon as it passes ``max_request_bytes``, 408 if it is
        not all there ``body_timeout`` seconds after the headers, 503 at the shutdown deadline; or the client left."""
        body = bytearray()  # one growing buffer, dropped at once when the body is over the limit
        deadline = time.monotonic() + self.body_timeout if self.body_timeout > 0 else None  # 0: no time limit
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            message: Message | None = None
            if remaining is None or remaining > 0:
                receiving: asyncio.Future[Any] = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait({receiving, expiry}, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
                if receiving in done:
                    message = receiving.result()
                else:
                    await _cancel(receiving)
                    if expiry in done:
                        await error_response(503, "The server is shutting down; retry on another instance",
                                             CLOSE)(scope, receive, send)
                        return None
            if message is None:
                await error_response(408, f"The request body was not received within this server's limit of "
                                          f"{self.body_timeout:g} s", CLOSE)(scope, receive, send)
                return None
            if message["type"] == "http.disconnect":
                cycle.client_gone = True
                return None
            chunk = message.get("body", b"")
            if len(body) + len(chunk) > self.max_bytes:
                del body
                await self._too_large("Request body is larger")(scope, receive, send)
                return None
            if not message.get("more_body", False):
                if not body:  # the usual case: the whole body in one message, no copy
                    return bytes(chunk)
                body += chunk
                return bytes(body)
            body += chunk

    @staticmethod
    async def _watch_disconnect(receive: Receive, cycle: _Cycle) -> None:
        """Return when the client goes away (``cycle.client_gone``) or the response is complete."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # uvicorn (and httpx's ASGI transport) also say "disconnect" once the response is complete
                cycle.client_gone = not cycle.complete
                return

    async def _shutdown_response(self, scope: Scope, receive: Receive, send: Send) -> None:
        logger.warning("%s %s still running %g s after the server began to stop: answered 503", scope["method"],
                       scope["path"], self.shutdown_timeout)
        await error_response(503, f"The server is shutting down and this request did not finish within its "
                                  f"shutdown timeout of {self.shutdown_timeout:g} s; retry on another instance",
                             CLOSE)(scope, receive, send)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it is done (its cancellation is not ours: it is not re-raised here)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None:  # retrieve it: no "never retrieved" noise
        logger.debug("Task failed while cancelled", exc_info=task.exception())


class AllowedHosts:
    """``Host`` header check (as Starlette's ``TrustedHostMiddleware``): a pattern is a host name (any port),
    ``host:port`` (that port only), ``*.example.com`` (subdomains) or ``*`` (any host). Case-insensitive."""

    def __init__(self, patterns: Collection[str]) -> None:
        self.patterns = [p.strip().lower() for p in patterns if p.strip()]  # checked by ServerArgs
        self.allow_any = "*" in self.patterns

    def allows(self, header: str) -> bool:
        if self.allow_any:
            return True
        host, port = split_host(header.strip().lower())
        if not host:
            return False
        with_port = f"{host}:{port}" if port else None
        for pattern in self.patterns:
            if pattern in (host, with_port):
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False


def split_host(header: str) -> tuple[str, str]:
    """``host[:port]`` (IPv6 in brackets: ``[::1]:8000``) → (host, port); the port is ``""`` when absent."""
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return "", ""
        host, rest = header[: end + 1], header[end + 1:]
        if rest and not rest.startswith(":"):
            return "", ""
        return host, rest[1:]
    host, _, port = header.partition(":")
    if ":" in port:  # a bare IPv6 address is not a valid Host header
        return "", ""
    return host, port
