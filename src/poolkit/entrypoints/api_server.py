"""OpenAI-compatible HTTP server (FastAPI) over the async engine. DESIGN.md §5.

Endpoints are enabled by what the model supports: ``/v1/embeddings`` for
embedding models, ``/classify`` for classifiers, ``/score`` and the rerank
routes for embedding models (cosine) and cross-encoders, ``/pooling`` for all.
Disabled ones answer 400 with the reason. Every error has the reference
shape ``{"object": "error", "message", "type", "param", "code"}`` and the
HTTP status equals ``code``, validation errors included (400, not 422).
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..async_engine import AsyncPoolingEngine, EngineClosedError, EngineExecutionError, QueueFullError
from ..params import PoolingParams
from .metrics import ServerMetrics
from .protocol import (
    ClassificationRequest,
    ClassificationResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelList,
    PoolingRequest,
    PoolingResponse,
    PromptInput,
    RerankRequest,
    RerankResponse,
    RerankV2Response,
    ScoreRequest,
    ScoreResponse,
    TokenizeRequest,
    TokenizeResponse,
)

if TYPE_CHECKING:
    import argparse

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


@dataclass
class ServerSettings:
    """HTTP-layer limits and identity (the engine's knobs live on the engine)."""

    served_model_names: list[str]
    api_key: str | None = None
    max_inputs_per_request: int = 2048
    max_input_chars: int = 100_000
    max_request_bytes: int = 64 * 1024 * 1024
    shutdown_timeout: float | None = 30.0  # for the model worker to finish queued work
    created: int = field(default_factory=lambda: int(time.time()))


class APIError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ORJSONResponse(Response):
    """JSON via orjson; NumPy arrays serialize natively (no Python float objects)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": _ERROR_TYPES.get(status, "BadRequestError" if status < 500
            else "InternalServerError"), "param": None, "code": status}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> ORJSONResponse:
    return ORJSONResponse(error_body(status, message), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError, content_type: str) -> str:
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"Malformed JSON body{': ' + str(detail) if detail else ''}"
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") == "model_attributes_type":
            hint = "" if "json" in content_type else f" (got Content-Type {content_type!r}; send application/json)"
            return f"The request body must be a JSON object{hint}"
    parts: list[str] = []
    fields_seen: dict[str, list[str]] = {}
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        top = loc[0] if loc else "body"
        fields_seen.setdefault(top, []).append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    for top, msgs in fields_seen.items():
        if len(msgs) > 2:  # a union: every alternative failed
            parts.append(f"{top}: invalid value ({len(msgs)} alternatives failed, e.g. {msgs[0]})")
        else:
            parts.extend(msgs)
    return "Invalid request: " + "; ".join(parts[:5])


class ServerMiddleware:
    """Pure ASGI middleware: API key (constant-time), body size limit, request metrics."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: ServerMetrics, endpoints: set[str]) -> None:
        self.app = app
        self.key = settings.api_key.encode() if settings.api_key else None
        self.max_bytes = settings.max_request_bytes
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        status = [500]
        self.metrics.request_started(endpoint)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            rejection = self._reject(scope, path)
            if rejection is not None:
                await rejection(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(endpoint, scope["method"], status[0], time.perf_counter() - start)

    def _reject(self, scope: Scope, path: str) -> Response | None:
        headers = dict(scope["headers"])
        if self.key is not None and path != "/health":
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return error_response(401, "Unauthorized: missing or invalid API key (send 'Authorization: Bearer <key>')",
                                      {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                return error_response(400, "Invalid Content-Length header")
            if too_big:
                return error_response(413, f"Request body of {int(length)} bytes is larger than this server's limit "
                                           f"of {self.max_bytes} bytes")
        return None


def _vector(value: np.ndarray, encoding_format: str) -> Any:
    if encoding_format == "base64":
        return base64.b64encode(value.astype("<f4", copy=False).tobytes()).decode("ascii")
    return value.astype(np.float64)  # exactly the offline floats; orjson writes the array directly


def build_app(engine: AsyncPoolingEngine, settings: ServerSettings, metrics: ServerMetrics | None = None) -> FastAPI:
    """The FastAPI app for one engine. The lifespan starts the model worker and drains it on shutdown."""
    metrics = metrics or ServerMetrics()
    mc = engine.model_config
    names = settings.served_model_names or [mc.served_model_name]
    methods = mc.supported_methods

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        engine.start()
        logger.info("Serving %s (task=%s) as %s; endpoints: %s", mc.model, mc.task, ", ".join(names),
                    ", ".join(sorted(enabled_paths)))
        yield
        logger.info("Shutting down: draining queued requests")
        await engine.close(timeout=settings.shutdown_timeout)

    app = FastAPI(
        title="poolkit",
        summary="OpenAI-compatible server for pooling models: embeddings, pooling, classification, scoring, reranking",
        version=_version(),
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )

    # -- errors ---------------------------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, _validation_message(exc, request.headers.get("content-type", "")))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"{message}: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"Internal server error: {type(exc).__name__}")

    # -- helpers --------------------------------------------------------------------

    def check_model(model: str | None) -> str:
        if model is None or model == "":
            return names[0]
        if model not in names:
            raise APIError(404, f"The model `{model}` does not exist.")
        return model

    def prompts_of(value: PromptInput, field_name: str = "input") -> list[Any]:
        if isinstance(value, str):
            items: list[Any] = [value]
        elif value and isinstance(value[0], int):
            items = [value]
        else:
            items = list(value)
        check_items(items, field_name)
        return items

    def check_items(items: list[Any], field_name: str) -> None:
        if not items:
            raise APIError(400, f"'{field_name}' must not be empty")
        if len(items) > settings.max_inputs_per_request:
            raise APIError(400, f"'{field_name}' has {len(items)} items, more than this server's limit of "
                                f"{settings.max_inputs_per_request} per request")
        limit = settings.max_input_chars
        for i, item in enumerate(items):
            if len(item) == 0:
                kind = "an empty string" if isinstance(item, str) else "an empty list of token ids"
                raise APIError(400, f"'{field_name}' item {i} is {kind}; inputs must not be empty")
            if isinstance(item, str) and len(item) > limit:
                raise APIError(400, f"'{field_name}' item {i} has {len(item)} characters, more than this server's "
                                    f"limit of {limit} characters")

    async def call(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except QueueFullError as exc:
            raise APIError(429, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        except EngineClosedError as exc:
            raise APIError(503, str(exc)) from None
        except EngineExecutionError as exc:
            raise APIError(500, str(exc)) from None
        except (ValueError, TypeError) as exc:  # validation by the engine: its exact message
            raise APIError(400, str(exc)) from None

    def usage(endpoint: str, num_tokens: list[int]) -> dict[str, int]:
        total = sum(num_tokens)
        metrics.add_prompt_tokens(endpoint, total)
        return {"prompt_tokens": total, "total_tokens": total}

    def ok(content: dict[str, Any]) -> ORJSONResponse:
        return ORJSONResponse(content)

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": _ERROR_TYPES[code]} for code in (400, 401, 404, 429, 500, 503)
    }
    enabled_paths: set[str] = set()

    def route(path: str, method: str, needs: str | None, api_name: str, **kwargs: Any) -> Callable[[T], T]:
        """Register ``fn`` on ``path`` when the model supports ``needs``, else a 400 explaining why."""

        def register(fn: T) -> T:
            if needs is None or needs in methods:
                enabled_paths.add(path)
                app.add_api_route(path, fn, methods=[method], responses=error_responses, **kwargs)  # type: ignore[arg-type]
            else:
                message = (f"The model `{names[0]}` (task={mc.task}) does not support the {api_name} API; "
                           f"it supports: {', '.join(sorted(methods))}")

                async def disabled() -> Response:
                    return error_response(400, message)

                app.add_api_route(path, disabled, methods=[method], include_in_schema=False)
            return fn

        return register

    # -- endpoints ------------------------------------------------------------------

    @route("/health", "GET", None, "Health", summary="200 while the engine runs", response_class=Response)
    async def health() -> Response:
        if not engine.is_running:
            return error_response(503, "The engine is not running")
        return Response(status_code=200)

    @route("/metrics", "GET", None, "Metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @route("/v1/models", "GET", None, "Models", response_model=ModelList)
    async def list_models() -> Response:
        cards = [
            {"id": name, "object": "model", "created": settings.created, "owned_by": "poolkit",
             "root": mc.model, "parent": None, "max_model_len": mc.max_model_len,
             "task": mc.task}
            for name in names
        ]
        return ok({"object": "list", "data": cards})

    @route("/v1/embeddings", "POST", "embed", "Embeddings", response_model=EmbeddingResponse)
    async def create_embeddings(request: EmbeddingRequest) -> Response:
        model = check_model(request.model)
        prompts = prompts_of(request.input)
        params = PoolingParams(dimensions=request.dimensions, normalize=request.normalize)
        result = await call(engine.pool("embed", prompts, params, request.truncate_prompt_tokens))
        fmt = request.encoding_format
        return ok({
            "id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": [{"index": i, "object": "embedding", "embedding": _vector(v, fmt)} for i, v in enumerate(result.values)],
            "usage": usage("/v1/embeddings", result.num_tokens),
        })

    @route("/pooling", "POST", "encode", "Pooling", response_model=PoolingResponse)
    async def create_pooling(request: PoolingRequest) -> Response:
        model = check_model(request.model)
        prompts = prompts_of(request.input)
        params = PoolingParams(dimensions=request.dimensions, normalize=request.normalize,
                               activation=request.activation)
        result = await call(engine.pool("encode", prompts, params, request.truncate_prompt_tokens))
        fmt = request.encoding_format
        return ok({
            "id": f"pool-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": [{"index": i, "object": "pooling", "data": _vector(v, fmt)}
                     for i, v in enumerate(result.values)],
            "usage": usage("/pooling", result.num_tokens),
        })

    @route("/classify", "POST", "classify", "Classification", response_model=ClassificationResponse)
    async def create_classify(request: ClassificationRequest) -> Response:
        model = check_model(request.model)
        prompts = prompts_of(request.input)
        params = PoolingParams(activation=request.activation)
        result = await call(engine.pool("classify", prompts, params, request.truncate_prompt_tokens))
        data = []
        for i, v in enumerate(result.values):
            best = int(np.argmax(v)) if v.size else 0
            data.append({"index": i, "label": mc.id2label.get(best, f"LABEL_{best}"), "probs": v.astype(np.float64),
                         "num_classes": int(v.size)})
        return ok({
            "id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": data, "usage": usage("/classify", result.num_tokens),
        })

    async def score_pairs(endpoint: str, left: list[str], right: list[str], activation: bool | None,
                          truncate: int | None) -> Any:
        params = PoolingParams(activation=activation)
        return await call(engine.score(left, right, params, truncate))

    async def create_score(request: ScoreRequest, raw: Request) -> Response:
        model = check_model(request.model)
        left = [request.text_1] if isinstance(request.text_1, str) else list(request.text_1)
        right = [request.text_2] if isinstance(request.text_2, str) else list(request.text_2)
        check_items(left, "text_1")
        check_items(right, "text_2")
        result = await score_pairs(raw.url.path, left, right, request.activation, request.truncate_prompt_tokens)
        return ok({
            "id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": model,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(result.scores)],
            "usage": usage(raw.url.path, result.num_tokens),
        })

    for path in ("/score", "/v1/score"):
        route(path, "POST", "score", "Score", response_model=ScoreResponse, name=f"score{path.replace('/', '_')}")(
            create_score)

    async def rerank(request: RerankRequest, endpoint: str, v2: bool) -> Response:
        model = check_model(request.model)
        check_items([request.query], "query")
        documents = [d if isinstance(d, str) else d.text for d in request.documents]
        check_items(documents, "documents")
        result = await score_pairs(endpoint, [request.query], documents, request.activation,
                                   request.truncate_prompt_tokens)
        order = sorted(range(len(documents)), key=result.scores.__getitem__, reverse=True)
        if request.top_n:
            order = order[: request.top_n]
        with_docs = request.return_documents if request.return_documents is not None else not v2
        results = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": result.scores[i]}
            if with_docs:
                item["document"] = {"text": documents[i]}
            results.append(item)
        body: dict[str, Any] = {"id": f"rerank-{uuid.uuid4().hex}", "model": model,
                                "usage": usage(endpoint, result.num_tokens), "results": results}
        if v2:
            body["meta"] = {"api_version": {"version": "2"},
                            "billed_units": {"search_units": max(1, -(-len(documents) // 100))}}
        return ok(body)

    @route("/rerank", "POST", "score", "Rerank", response_model=RerankResponse)
    async def create_rerank(request: RerankRequest) -> Response:
        return await rerank(request, "/rerank", v2=False)

    @route("/v1/rerank", "POST", "score", "Rerank", response_model=RerankResponse)
    async def create_rerank_v1(request: RerankRequest) -> Response:
        return await rerank(request, "/v1/rerank", v2=False)

    @route("/v2/rerank", "POST", "score", "Rerank", response_model=RerankV2Response)
    async def create_rerank_v2(request: RerankRequest) -> Response:
        return await rerank(request, "/v2/rerank", v2=True)

    @route("/tokenize", "POST", None, "Tokenize", response_model=TokenizeResponse)
    async def tokenize(request: TokenizeRequest) -> Response:
        check_model(request.model)
        if len(request.prompt) > settings.max_input_chars:
            raise APIError(400, f"'prompt' has {len(request.prompt)} characters, more than this server's limit of "
                                f"{settings.max_input_chars} characters")
        tokens = await call(engine.tokenize_text(request.prompt, request.add_special_tokens))
        return ok({"tokens": tokens, "count": len(tokens), "max_model_len": mc.max_model_len})

    @route("/detokenize", "POST", None, "Detokenize", response_model=DetokenizeResponse)
    async def detokenize(request: DetokenizeRequest) -> Response:
        check_model(request.model)
        if len(request.tokens) > 16 * mc.max_model_len + 1024:
            raise APIError(400, f"'tokens' has {len(request.tokens)} items, too many to detokenize")
        return ok({"prompt": await call(engine.detokenize(request.tokens))})

    _document_errors(app)
    app.add_middleware(ServerMiddleware, settings=settings, metrics=metrics,
                       endpoints=enabled_paths | {"/docs", "/openapi.json", "/redoc"})
    app.state.engine = engine
    app.state.settings = settings
    app.state.metrics = metrics
    return app


def _document_errors(app: FastAPI) -> None:
    """Describe validation failures as the 400 they are, not FastAPI's default 422."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    from .. import __version__

    return __version__


# -- process entry (used by ``poolkit serve``) ------------------------------------------------------


def run_server(args: argparse.Namespace) -> int:
    """Load the model, warm it up, and serve until SIGINT/SIGTERM (then drain and exit)."""
    import uvicorn

    from ..engine import LLM
    from .cli import engine_kwargs

    try:
        llm = LLM(**engine_kwargs(args))
    except (ValueError, TypeError, OSError) as exc:  # bad model, task or flags: one clear line, no traceback
        logger.debug("Model loading failed", exc_info=True)
        raise SystemExit(f"poolkit serve: error: {exc}") from None
    _warm_up(llm)
    metrics = ServerMetrics()
    engine = AsyncPoolingEngine(
        llm,
        batch_wait_ms=args.batch_wait_ms,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_batch_tokens=args.max_batch_tokens,
        max_queued_tokens=args.max_queued_tokens,
        stats=metrics,
    )
    settings = ServerSettings(
        served_model_names=list(args.served_model_name or [llm.model_config.served_model_name]),
        api_key=args.api_key or None,
        max_inputs_per_request=args.max_inputs_per_request,
        max_input_chars=args.max_input_chars,
        max_request_bytes=args.max_request_bytes,
        shutdown_timeout=args.shutdown_timeout,
    )
    app = build_app(engine, settings, metrics)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_access_log,
        timeout_graceful_shutdown=args.shutdown_timeout,
        timeout_keep_alive=args.keep_alive_timeout,
    )
    uvicorn.Server(config).run()
    return 0


def _warm_up(llm: Any) -> None:
    """One tiny forward pass so the first request does not pay for lazy initialisation."""
    engine = llm.engine
    try:
        tokens = engine.processor.encode(["warm up"])
        engine.execute(tokens, [engine.head_options("encode", PoolingParams())])
    except Exception:  # a model that cannot even pool "warm up" will fail loudly on requests instead
        logger.warning("Warm-up pass failed", exc_info=True)
