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
    shutdown_timeout: float = setting(30.0, help="seconds in-flight requests get to finish after SIGTERM/SIGINT "
                                                 "(no new connections meanwhile); those still running are then "
                                                 "answered 503")
    keep_alive_timeout: int = setting(5, help="idle keep-alive seconds")
    max_inputs_per_request: int = setting(2048, help="inputs per request (as OpenAI)")
    max_input_chars: int = setting(100_000, help="characters per input, checked before tokenizing")
    max_request_bytes: int = setting(64 << 20, help="largest request body accepted (checked while it is read, "
                                                    "chunked or not: 413)")
    max_request_chars: int = setting(16_000_000, help="characters in all the inputs of one request, checked "
                                                      "before tokenizing (400)")
    header_timeout: float = setting(10.0, help="seconds a client has to send a request's headers, on a new "
                                               "connection or a kept-alive one (then the connection is closed); "
                                               "0: no limit")
    body_timeout: float = setting(30.0, help="seconds a client has to send a request's whole body, from the end "
                                             "of its headers (then 408); also how long the rest of a body is read "
                                             "and dropped after an early answer (413) before the connection "
                                             "closes; 0: no limit")
    max_connections: int = setting(1024, help="open connections at once; the request of each one beyond is "
                                              "answered 503 and its connection closed")
    allowed_hosts: list[str] | None = setting(
        None, help="accepted Host header values: a name (any port, e.g. api.example.com localhost), host:port, "
                   "*.example.com (subdomains) or *; other hosts get 400 on every route but /health (probes use "
                   "IP addresses). None: any", parse=parse_names, nargs="+", metavar="HOST")
    allowed_local_media_path: str | None = setting(
        None, help="a local folder whose images requests may name in image_url (file:// URLs or absolute paths "
                   "under it, symlinks resolved), as vLLM's flag; None: no local files")
    allowed_media_domains: list[str] | None = setting(
        None, help="host names http(s) image_url downloads (and their redirects) may name, as vLLM's flag; "
                   "None: any", parse=parse_names, nargs="+", metavar="HOST")
    media_fetch_timeout: float = setting(10.0, help="seconds an image_url has to download over http(s)")
    max_image_bytes: int = setting(20 << 20, help="largest image accepted in image_url (downloaded, decoded from "
                                                  "a data: URI or read from a file)")
    max_image_pixels: int = setting(50_000_000, help="most pixels (width x height) an image may have, checked "
                                                     "before it is decoded")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("shutdown_timeout", "header_timeout", "body_timeout", "media_fetch_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_request_bytes", "max_request_chars", "max_connections", "max_inputs_per_request",
                     "max_input_chars", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for pattern in self.allowed_hosts or ():
            if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")):
                raise ValueError(f"allowed host {pattern!r}: a wildcard must be like '*.example.com'")
