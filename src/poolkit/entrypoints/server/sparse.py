"""``POST /embed_sparse``: text-embeddings-inference's sparse embeddings API, for sparse (SPLADE, BGE-M3) models.

The same engine path as ``/v1/embeddings`` with ``output: "sparse"``; only the
request and response shapes are TEI's: ``truncate`` (bool) with
``truncation_direction``, and ``[[{index, value}, ...], ...]``.
"""

from __future__ import annotations

from fastapi import APIRouter

from ...params import PoolingParams
from .context import Context
from .errors import API_ERRORS
from .protocol import EmbedSparseRequest, EmbedSparseResponse, SparseValue
from .responses import ModelResponse

router = APIRouter(tags=["Sparse embeddings"], responses=API_ERRORS)

ENDPOINT = "/embed_sparse"


@router.post(ENDPOINT, response_model=EmbedSparseResponse, summary="Sparse embeddings (TEI)")
async def embed_sparse(request: EmbedSparseRequest, ctx: Context) -> ModelResponse:
    texts = ctx.texts(request.inputs, "inputs")
    params = PoolingParams(output="sparse", max_active_dims=request.max_active_dims)
    outputs = await ctx.process("embed", texts, params, truncate_prompt_tokens=-1 if request.truncate else None,
                                truncation_side=request.truncation_direction.lower() if request.truncate else None,
                                prompt_name=request.prompt_name)
    ctx.usage(ENDPOINT, outputs)  # counts the tokens in the metrics; TEI's response has no usage field
    return ModelResponse(EmbedSparseResponse([
        [SparseValue(index=i, value=v) for i, v in zip(o.outputs.indices.tolist(), o.outputs.values.tolist())]
        for o in outputs]))
