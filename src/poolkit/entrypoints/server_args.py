"""The server's settings, declared once (flags of ``poolkit serve``, ``POOLKIT_*`` variables, defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import BatchingArgs, parse_names, setting

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass
class ServerArgs(BatchingArgs):
    """HTTP server, batching and limits of ``poolkit serve`` (the model's settings are ``EngineArgs``)."""

    host: str = setting("127.0.0.1", help="address to listen on")
    port: int = setting(8000, help="port to listen on")
    api_key: str | None = setting(None, help="require 'Authorization: Bearer KEY' on every route but /health")
    log_level: str = setting("info", help="poolkit's log level", choices=LOG_LEVELS)
    uvicorn_log_level: str = setting("info", help="uvicorn's log level", choices=(*LOG_LEVELS, "trace"))
    disable_access_log: bool = setting(False, help="no per-request log lines")
    shutdown_timeout: float = setting(30.0, help="seconds to wait for in-flight requests on SIGTERM/SIGINT")
    keep_alive_timeout: int = setting(5, help="idle keep-alive seconds")
    max_inputs_per_request: int = setting(2048, help="inputs per request (as OpenAI)")
    max_input_chars: int = setting(100_000, help="characters per input, checked before tokenizing")
    max_request_bytes: int = setting(64 << 20, help="largest request body accepted (checked while it is read, "
                                                    "chunked or not: 413)")
    max_request_chars: int = setting(10_000_000, help="characters in all the inputs of one request, checked "
                                                      "before tokenizing")
    header_timeout: float = setting(10.0, help="seconds a client has to send a request's headers, on a new "
                                               "connection or a kept-alive one (then the connection is closed)")
    body_timeout: float = setting(30.0, help="seconds a client has to send a request's body (then 408)")
    max_connections: int = setting(1024, help="open connections at once; more are answered 503")
    allowed_hosts: list[str] | None = setting(
        None, help="accepted Host header values (e.g. api.example.com localhost); others get 400. None: any",
        parse=parse_names, nargs="+", metavar="HOST")
