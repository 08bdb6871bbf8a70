"""The server's settings, declared once (flags of ``poolkit serve``, ``POOLKIT_*`` variables, defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import parse_optional_int, setting

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass
class ServerArgs:
    """HTTP server, batching and limits of ``poolkit serve`` (the model's settings are ``EngineArgs``)."""

    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(8000, help="port to listen on")
    api_key: str | None = setting(None, help="require 'Authorization: Bearer KEY' on every route but /health")
    log_level: str = setting("info", help="poolkit's log level", choices=LOG_LEVELS)
    uvicorn_log_level: str = setting("info", help="uvicorn's log level", choices=(*LOG_LEVELS, "trace"))
    disable_access_log: bool = setting(False, help="no per-request log lines")
    shutdown_timeout: float = setting(30.0, help="seconds to wait for in-flight requests on SIGTERM/SIGINT")
    keep_alive_timeout: int = setting(5, help="idle keep-alive seconds")
    batch_wait_ms: float = setting(2.0, help="window after the latest request for others to join its batch")
    max_batch_wait_ms: float | None = setting(
        None, help="longest a request waits for batch partners (None: 10 x batch_wait_ms)")
    max_batch_tokens: int | None = setting(
        None, help="prompt tokens merged into one engine call (None: the engine's max_num_batched_tokens)",
        parse=parse_optional_int)
    max_queued_tokens: int = setting(1 << 20, help="queued tokens beyond which requests get 429 + Retry-After")
    max_inputs_per_request: int = setting(2048, help="inputs per request (as OpenAI)")
    max_input_chars: int = setting(100_000, help="characters per input, checked before tokenizing")
    max_request_bytes: int = setting(64 << 20, help="largest request body (Content-Length) accepted")
