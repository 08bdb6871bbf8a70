"""Prometheus metrics of the server (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class ServerMetrics:
    """HTTP and batching metrics; also the async engine's ``EngineStats`` sink."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "poolkit_requests", "HTTP requests by endpoint, method and status code", ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "poolkit_request_latency_seconds", "HTTP request latency", ["endpoint"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "poolkit_requests_in_progress", "HTTP requests being handled, by endpoint", ["endpoint"], registry=r
        )
        self.prompt_tokens = Counter("poolkit_prompt_tokens", "Prompt tokens processed", ["endpoint"], registry=r)
        self.queue_wait = Histogram(
            "poolkit_queue_wait_seconds", "Time a request chunk waited in the batching queue",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "poolkit_batch_size", "Sequences per merged model batch", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "poolkit_batch_tokens", "Prompt tokens per merged model batch", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "poolkit_batch_execute_seconds", "Model time per merged batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queued_tokens = Gauge("poolkit_queued_tokens", "Tokens waiting for the model worker", registry=r)
        self.open_connections = Gauge("poolkit_open_connections", "Open HTTP connections", registry=r)
        self.protocol_rejections = Counter(
            "poolkit_http_rejections", "Connections the HTTP layer answered or closed itself, before or instead "
            "of the app: header_timeout (request headers too slow), max_connections (503), bad_request (malformed "
            "HTTP: 400), body_drain (a body still arriving after its early answer, cut off)", ["reason"], registry=r,
        )
        self.skipped_tokens = Counter(
            "poolkit_skipped_tokens", "Queued tokens never run: their caller went away (cancelled) or they waited "
            "past their deadline (expired)", ["reason"], registry=r,
        )

    # -- HTTP layer --
    def request_started(self, endpoint: str) -> None:
        self.in_progress.labels(endpoint).inc()

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """A request finished (pairs with :meth:`request_started`)."""
        self.in_progress.labels(endpoint).dec()
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def add_prompt_tokens(self, endpoint: str, tokens: int) -> None:
        self.prompt_tokens.labels(endpoint).inc(tokens)

    # -- HTTP connections (called by the uvicorn protocol, see uvicorn_server) --
    def connection_opened(self) -> None:
        self.open_connections.inc()

    def connection_closed(self) -> None:
        self.open_connections.dec()

    def connection_rejected(self, reason: str) -> None:
        self.protocol_rejections.labels(reason).inc()

    # -- EngineStats (called from the model worker thread; prometheus_client is thread-safe) --
    def observe_queue_wait(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    def observe_batch(self, num_seqs: int, num_tokens: int, seconds: float) -> None:
        self.batch_size.observe(num_seqs)
        self.batch_tokens.observe(num_tokens)
        self.batch_seconds.observe(seconds)

    def add_skipped_tokens(self, reason: str, tokens: int) -> None:
        self.skipped_tokens.labels(reason).inc(tokens)

    def set_queued_tokens(self, tokens: int) -> None:
        self.queued_tokens.set(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
