"""The FastAPI app over one async engine (DESIGN.md §5): routers, lifespan, errors, middleware, OpenAPI.

Endpoints are enabled by what the model supports (:data:`ENDPOINTS`): a route of
an API the model lacks answers 400 naming what it supports, and is left out of
the OpenAPI schema. Each endpoint family lives in its own module.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.responses import Response

from ... import __version__
from ...async_engine import AsyncPoolingEngine
from ..server_args import ServerArgs
from . import classify, embeddings, pooling, score, system, tokenize
from .context import ServerContext
from .errors import error_response, install_error_handlers
from .metrics import ServerMetrics
from .middleware import ServerMiddleware
from .responses import ModelResponse

logger = logging.getLogger(__name__)

# Each endpoint family and the model method it needs (None: every model).
ENDPOINTS: tuple[tuple[APIRouter, str | None], ...] = (
    (system.router, None),
    (tokenize.router, None),
    (embeddings.router, "embed"),
    (pooling.router, "encode"),
    (classify.router, "classify"),
    (score.router, "score"),
)
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
    _document_validation_errors_as_400(app)
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
    await context.engine.close(timeout=context.settings.shutdown_timeout)


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


def _document_validation_errors_as_400(app: FastAPI) -> None:
    """Drop FastAPI's default 422 from the schema: validation errors are the documented 400s."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
