"""``GET`` (and ``HEAD``) ``/health``, ``GET /metrics`` (Prometheus) and ``GET /v1/models``: there for every model."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from .context import Context
from .errors import API_ERRORS, error_response, error_responses
from .protocol import ModelCard, ModelList
from .responses import ModelResponse

router = APIRouter(tags=["System"])


@router.get("/health", response_class=Response, summary="200 while the engine runs",
            responses={200: {"description": "The engine is running (empty body)"},
                       **error_responses(400, 408, 413, 500, 503)})
async def health(ctx: Context) -> Response:
    if not ctx.engine.is_running:
        return error_response(503, "The engine is not running")
    return Response(status_code=200)


# HEAD too (load balancers and `curl -I` probe with it); not a separate operation in the OpenAPI schema.
router.add_api_route("/health", health, methods=["HEAD"], response_class=Response, include_in_schema=False)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"description": "Prometheus text exposition format",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}, **API_ERRORS})
async def metrics(ctx: Context) -> Response:
    return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)


@router.get("/v1/models", response_model=ModelList, responses=API_ERRORS, summary="The served model's names")
async def list_models(ctx: Context) -> ModelResponse:
    mc = ctx.model_config
    cards = [ModelCard(id=name, created=ctx.created, root=mc.model, max_model_len=mc.max_model_len,
                       task=mc.task, prompts=mc.prompts, default_prompt_name=mc.default_prompt_name,
                       modalities=list(mc.modalities), outputs=list(mc.outputs))
             for name in ctx.served_names]
    return ModelResponse(ModelList(data=cards))
