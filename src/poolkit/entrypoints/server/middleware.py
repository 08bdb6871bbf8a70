"""Checks that run before routing, on every request: API key, body size, request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``), so responses are not buffered and a
rejected request never reaches FastAPI (nor reads its body).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Collection

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..server_args import ServerArgs
from .errors import error_response
from .metrics import ServerMetrics

# Routes open without the API key (load balancers probe it).
PUBLIC_PATHS = frozenset({"/health"})


class ServerMiddleware:
    """API key (constant-time compare), ``Content-Length`` limit, and per-endpoint request metrics."""

    def __init__(self, app: ASGIApp, settings: ServerArgs, metrics: ServerMetrics,
                 endpoints: Collection[str]) -> None:
        self.app = app
        self.key = settings.api_key.encode() if settings.api_key else None
        self.max_bytes = settings.max_request_bytes
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)  # metric labels: these paths, everything else is "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        status = 500  # unless a response starts
        self.metrics.request_started(endpoint)

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            rejection = self._reject(scope, path)
            if rejection is not None:
                await rejection(scope, receive, send_and_record_status)
            else:
                await self.app(scope, receive, send_and_record_status)
        finally:
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - start)

    def _reject(self, scope: Scope, path: str) -> Response | None:
        """The error response for a request that must not reach the app, else ``None``."""
        headers = dict(scope["headers"])
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
                return error_response(400, "Invalid Content-Length header")
            if size > self.max_bytes:
                return error_response(413, f"Request body of {size} bytes is larger than this server's limit "
                                           f"of {self.max_bytes} bytes")
        return None
