"""The FastAPI app over one async engine (DESIGN.md §5): routers, lifespan, errors, middleware, OpenAPI.

Endpoints are enabled by what the model supports (:data:`ENDPOINTS`): a route of
an API the model lacks answers 400 naming what it supports, and is left out of
the OpenAPI schema. Each endpoint family lives in its own module.

/openapi.json describes the server it comes from (:func:`_publish_openapi`): its
limits, the options its model accepts, and its API key if it has one.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.responses import Response

from ... import __version__
from ...async_engine import AsyncPoolingEngine
from ..server_args import ServerArgs
from . import classify, cohere, embeddings, pooling, score, sparse, system, tokenize
from .context import ServerContext
from .errors import error_response, install_error_handlers
from .metrics import ServerMetrics
from .middleware import PUBLIC_PATHS, ServerMiddleware
from .protocol import LIMITS_KEY, TEXT_INPUT_SCHEMA
from .responses import ModelResponse

logger = logging.getLogger(__name__)

# Each endpoint family and the model method it needs (None: every model).
ENDPOINTS: tuple[tuple[APIRouter, str | None], ...] = (
    (system.router, None),
    (tokenize.router, None),
    (embeddings.router, "embed"),
    (cohere.router, "embed"),
    (sparse.router, "embed_sparse"),
    (pooling.router, "encode"),
    (classify.router, "classify"),
    (score.router, "score"),
)
# Seconds the lifespan waits for the model worker once HTTP is drained.
ENGINE_CLOSE_TIMEOUT = 5.0
DOCS_PATHS = frozenset({"/docs", "/openapi.json", "/redoc"})


def build_app(engine: AsyncPoolingEngine, settings: ServerArgs | None = None,
              metrics: ServerMetrics | None = None) -> FastAPI:
    """The FastAPI app for one engine. Its lifespan starts the model worker and drains it on shutdown."""
    settings = settings or ServerArgs()
    context = ServerContext(engine, settings, metrics or ServerMetrics())
    app = FastAPI(
        title="poolkit",
        summary="OpenAI-compatible server for pooling models: embeddings, pooling, classification, scoring, reranking",
        version=__version__,
        lifespan=_lifespan,
        default_response_class=ModelResponse,
    )
    app.state.context = context
    install_error_handlers(app)
    enabled: set[str] = set()
    for router, needs in ENDPOINTS:
        if needs is None or needs in context.supported_methods:
            app.include_router(router)
            enabled.update(route.path for route in _api_routes(router))
        else:
            _include_refusals(app, router, context)
    app.state.enabled_paths = sorted(enabled)
    _publish_openapi(app, context)
    app.add_middleware(ServerMiddleware, settings=settings, metrics=context.metrics, endpoints=enabled | DOCS_PATHS)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    context: ServerContext = app.state.context
    mc = context.model_config
    context.engine.start()
    logger.info("Serving %s (task=%s) as %s; endpoints: %s", mc.model, mc.task, ", ".join(context.served_names),
                ", ".join(app.state.enabled_paths))
    yield
    logger.info("Shutting down: draining queued requests")
    # Requests still running at the shutdown timeout were answered 503 by the middleware; what remains
    # queued is theirs (cancelled, skipped at once), so only a batch in flight is waited for, briefly.
    await context.engine.close(timeout=ENGINE_CLOSE_TIMEOUT)


def _api_routes(router: APIRouter) -> list[APIRoute]:
    return [route for route in router.routes if isinstance(route, APIRoute)]


def _include_refusals(app: FastAPI, router: APIRouter, context: ServerContext) -> None:
    """Routes of an API the model lacks: each answers 400 naming the API (its first tag) and what the model
    supports, rather than a bare 404, and stays out of the OpenAPI schema."""
    mc = context.model_config
    for route in _api_routes(router):
        message = (f"The model `{context.served_names[0]}` (task={mc.task}) does not support the {route.tags[0]} "
                   f"API; it supports: {', '.join(sorted(context.supported_methods))}")
        app.add_api_route(route.path, _refusal(message), methods=sorted(route.methods or ()), include_in_schema=False)


def _refusal(message: str) -> Callable[[], Awaitable[Response]]:
    async def refuse() -> Response:
        return error_response(400, message)

    return refuse


def _publish_openapi(app: FastAPI, context: ServerContext) -> None:
    """/openapi.json as this server answers: validation errors are the documented 400s (FastAPI's default 422
    is dropped), limits and model options are this server's, and its API key, if any, is declared."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            _fill_limits(schema, _limits(context))
            _publish_model_options(components.get("schemas", {}), context)
            if context.settings.api_key:
                _declare_api_key(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _limits(context: ServerContext) -> dict[str, int]:
    """The values of the request schemas' limit placeholders (``protocol.LIMIT_NAMES``) on this server."""
    settings, mc = context.settings, context.model_config
    return {
        "max_inputs_per_request": settings.max_inputs_per_request,
        "max_input_chars": settings.max_input_chars,
        "max_model_len": mc.max_model_len,
        "max_token_id": context.engine.tasks.processor.vocab_size - 1,
        "max_detokenize_ids": tokenize.max_detokenize_ids(mc.max_model_len),  # the /detokenize check
    }


def _fill_limits(node: Any, limits: Mapping[str, int]) -> None:
    """Replace every ``{LIMITS_KEY: {keyword: name}}`` placeholder in ``node`` by ``{keyword: limits[name]}``."""
    if isinstance(node, dict):
        for keyword, name in node.pop(LIMITS_KEY, {}).items():
            node[keyword] = limits[name]
        for value in node.values():
            _fill_limits(value, limits)
    elif isinstance(node, list):
        for value in node:
            _fill_limits(value, limits)


def _publish_model_options(schemas: dict[str, Any], context: ServerContext) -> None:
    """Request fields whose valid values depend on the model: the served names, the Matryoshka sizes, the
    Sentence-Transformers prompts; a field that this model refuses whatever its value is published as null-only."""
    mc = context.model_config
    by_cosine = mc.task == "embed"  # embedding models score by cosine; cross-encoders by their head
    dimensions = _dimensions_schema(context)
    prompt_names = {"type": "string", "enum": sorted(mc.prompts)} if mc.prompts else None
    chunked: dict[str, Any] = {"type": "boolean"} if _can_chunk(context) else {"type": "boolean", "enum": [False]}
    outputs = {"type": "string", "enum": list(mc.outputs)}
    dense = mc.default_output == "dense"  # normalize and dimensions apply to dense embeddings only
    if not dense:
        dimensions = None
    options: dict[tuple[str, str], dict[str, Any] | None] = {
        ("EmbeddingRequest", "output"): outputs,
        ("EmbeddingRequest", "normalize"): {"type": "boolean"} if dense else None,
        ("EmbeddingRequest", "max_active_dims"): {"type": "integer", "minimum": 1} if not dense and "sparse" in mc.outputs else None,
        ("EmbedSparseRequest", "prompt_name"): prompt_names,
        ("PoolingRequest", "output"): outputs,
        ("PoolingRequest", "normalize"): {"type": "boolean"} if dense else None,
        ("EmbeddingRequest", "dimensions"): dimensions,
        ("EmbeddingRequest", "prompt_name"): prompt_names,
        ("EmbeddingRequest", "enable_chunked_processing"): chunked,
        ("CohereEmbedRequest", "output_dimension"): dimensions,
        ("PoolingRequest", "dimensions"): dimensions if mc.task == "embed" else None,
        ("PoolingRequest", "enable_chunked_processing"): chunked,
    }
    for request in ("ScoreRequest", "RerankRequest"):
        options[request, "dimensions"] = dimensions if by_cosine else None
        options[request, "output"] = outputs if by_cosine else None
        if by_cosine:
            options[request, "activation"] = None
    if "image" not in mc.modalities:
        options["EmbeddingRequest", "messages"] = None  # text models take `input`, which is then required
        if "EmbeddingRequest" in schemas:
            schemas["EmbeddingRequest"].setdefault("required", []).append("input")
            prop = schemas["EmbeddingRequest"]["properties"]["input"]
            prop["anyOf"] = [a for a in prop["anyOf"] if a != {"type": "null"}]
            prop.pop("default", None)
    elif "EmbeddingRequest" in schemas:  # exactly one of input and messages
        schemas["EmbeddingRequest"].setdefault("allOf", []).append({"oneOf": [
            {"required": ["input"], "properties": {"messages": {"type": "null"}}},
            {"required": ["messages"], "properties": {"input": {"type": "null"}}}]})
    for (name, field), accepted in options.items():
        if name in schemas:
            _accept(schemas[name]["properties"][field], accepted)
    if any(mc.prompts.values()) and "EmbeddingRequest" in schemas:
        # a prompt (not an empty one) goes with text inputs only: prompt_name is null or names an empty prompt,
        # or the input is text
        unprompted = [None, *sorted(name for name, text in mc.prompts.items() if not text)]
        schemas["EmbeddingRequest"].setdefault("allOf", []).append({"anyOf": [
            {"properties": {"prompt_name": {"enum": unprompted}}},
            {"properties": {"input": copy.deepcopy(TEXT_INPUT_SCHEMA)}}]})
    served = {"type": "string", "enum": [*context.served_names, ""]}  # "" (as null): the served model
    for name, schema in schemas.items():
        if name.endswith("Request") and "model" in schema.get("properties", {}):
            _accept(schema["properties"]["model"], served)


def _can_chunk(context: ServerContext) -> bool:
    """Whether requests may ask for chunked processing of long inputs (an embedding model pooling one vector)."""
    from ...tasks.chunking import check_chunking

    try:
        check_chunking(context.model_config, context.engine.tasks.processor)
    except ValueError:
        return False
    return True


def _dimensions_schema(context: ServerContext) -> dict[str, Any] | None:
    """The Matryoshka ``dimensions`` the model accepts, as a JSON schema; ``None`` if it accepts none."""
    mc = context.model_config
    if not mc.is_matryoshka:
        return None
    if mc.matryoshka_dimensions is None:
        return {"type": "integer", "minimum": 1, "maximum": mc.embedding_dim}
    listed = sorted(d for d in mc.matryoshka_dimensions if 1 <= d <= mc.embedding_dim)
    return {"type": "integer", "enum": listed} if listed else None


def _accept(prop: dict[str, Any], accepted: dict[str, Any] | None) -> None:
    """Make an optional (nullable) property accept ``accepted`` besides null; ``None``: only null."""
    alternatives = [a for a in prop.pop("anyOf") if a.get("type") == "null"]
    if accepted is None:
        prop["description"] = (prop.get("description", "") + " Not supported by this server's model: leave it "
                               "out (or null).").strip()
    else:
        alternatives.insert(0, accepted)
    prop.update(alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives})


def _declare_api_key(schema: dict[str, Any]) -> None:
    """The server's API key as an HTTP bearer scheme, required by every operation but the public ones."""
    schema["components"].setdefault("securitySchemes", {})["APIKey"] = {
        "type": "http", "scheme": "bearer",
        "description": "The server's API key (`--api-key`): send `Authorization: Bearer <key>`.",
    }
    for path, path_item in schema.get("paths", {}).items():
        if path not in PUBLIC_PATHS:
            for operation in path_item.values():
                operation["security"] = [{"APIKey": []}]
