"""Scoring and reranking (embedding models: cosine similarity; cross-encoders: their score).

``/score`` and ``/v1/score`` score text pairs (vLLM's score API). ``/rerank`` and
``/v1/rerank`` (Jina style) and ``/v2/rerank`` (Cohere v2 style) rank documents
against a query; they share :func:`rerank` and differ only as :class:`RerankAPI` says.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi import APIRouter

from ...outputs import RequestOutput, ScoringOutput
from ...params import PoolingParams
from .context import Context, ServerContext
from .errors import API_ERRORS
from .protocol import (
    CohereBilledUnits,
    CohereMeta,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankV2Response,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
)
from .responses import ModelResponse

router = APIRouter(responses=API_ERRORS)

Scored = list[RequestOutput[ScoringOutput]]


async def score_pairs(ctx: ServerContext, left: list[str], right: list[str],
                      request: ScoreRequest | RerankRequest) -> Scored:
    """``LLM.score(left, right)``: pairs 1:1, 1:N or N:N (the engine rejects other shapes).

    ``dimensions`` applies to embedding models (scored by the cosine of Matryoshka-truncated vectors),
    ``activation`` to cross-encoders; the engine refuses either where it does not apply.
    """
    params = PoolingParams(activation=request.activation, dimensions=request.dimensions, output=request.output)
    return await ctx.process("score", left, right, params, truncate_prompt_tokens=request.truncate_prompt_tokens)


# -- /score, /v1/score ------------------------------------------------------------------------


async def score(ctx: ServerContext, request: ScoreRequest, endpoint: str) -> ScoreResponse:
    model = ctx.check_model(request.model)
    left = ctx.texts(request.text_1, "text_1")
    right = ctx.texts(request.text_2, "text_2")
    outputs = await score_pairs(ctx, left, right, request)
    return ScoreResponse(id=f"score-{uuid.uuid4().hex}", model=model,
                         data=[ScoreData(index=i, score=o.outputs.score) for i, o in enumerate(outputs)],
                         usage=ctx.usage(endpoint, outputs))


def _add_score_route(path: str) -> None:
    async def create_score(request: ScoreRequest, ctx: Context) -> ModelResponse:
        return ModelResponse(await score(ctx, request, path))

    router.add_api_route(path, create_score, methods=["POST"], response_model=ScoreResponse, tags=["Score"],
                         summary="Score text pairs")


for _path in ("/score", "/v1/score"):
    _add_score_route(_path)


# -- /rerank, /v1/rerank, /v2/rerank ----------------------------------------------------------------


@dataclass(frozen=True)
class RerankAPI:
    """What differs between the rerank routes."""

    response_model: type[RerankResponse]
    returns_documents: bool  # when the request does not say (``return_documents``)
    cohere_meta: bool  # Cohere v2's ``meta`` (API version, billed search units)


JINA = RerankAPI(RerankResponse, returns_documents=True, cohere_meta=False)
COHERE_V2 = RerankAPI(RerankV2Response, returns_documents=False, cohere_meta=True)


async def rerank(ctx: ServerContext, request: RerankRequest, endpoint: str, api: RerankAPI) -> RerankResponse:
    """Score every document against the query; results best first, cut to ``top_n``."""
    model = ctx.check_model(request.model)
    query = ctx.texts(request.query, "query")
    documents = ctx.texts([d if isinstance(d, str) else d.text for d in request.documents], "documents")
    outputs = await score_pairs(ctx, query, documents, request)
    scores = [o.outputs.score for o in outputs]
    order = sorted(range(len(documents)), key=scores.__getitem__, reverse=True)
    if request.top_n:
        order = order[: request.top_n]
    with_documents = api.returns_documents if request.return_documents is None else request.return_documents
    results = [RerankResult(index=i, relevance_score=scores[i],
                            document=RerankDocument(text=documents[i]) if with_documents else None) for i in order]
    extra = {"meta": _cohere_meta(len(documents))} if api.cohere_meta else {}
    return api.response_model(id=f"rerank-{uuid.uuid4().hex}", model=model, usage=ctx.usage(endpoint, outputs),
                              results=results, **extra)


def _cohere_meta(num_documents: int) -> CohereMeta:
    search_units = -(-num_documents // 100)  # Cohere bills one search unit per 100 documents
    return CohereMeta(billed_units=CohereBilledUnits(search_units=search_units))


def _add_rerank_route(path: str, api: RerankAPI) -> None:
    async def create_rerank(request: RerankRequest, ctx: Context) -> ModelResponse:
        return ModelResponse(await rerank(ctx, request, path, api))

    router.add_api_route(path, create_rerank, methods=["POST"], response_model=api.response_model, tags=["Rerank"],
                         summary="Rank documents against a query")



for _path, _api in {"/rerank": JINA, "/v1/rerank": JINA, "/v2/rerank": COHERE_V2}.items():
    _add_rerank_route(_path, _api)
