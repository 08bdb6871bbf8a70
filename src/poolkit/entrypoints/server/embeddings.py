"""``POST /v1/embeddings``: OpenAI's embeddings API, with poolkit's prompt extensions."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from ...params import PoolingParams
from .context import Context
from .errors import API_ERRORS
from .protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse
from .responses import ModelResponse, encode_array

router = APIRouter(tags=["Embeddings"], responses=API_ERRORS)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, summary="Embed texts or token ids")
async def create_embeddings(request: EmbeddingRequest, ctx: Context) -> ModelResponse:
    model = ctx.check_model(request.model)
    prompts = ctx.prompts(request.input)
    params = PoolingParams(dimensions=request.dimensions, normalize=request.normalize)
    outputs = await ctx.process("embed", prompts, params, truncate_prompt_tokens=request.truncate_prompt_tokens,
                                prompt_name=request.prompt_name, prompt=request.prompt,
                                enable_chunked_processing=request.enable_chunked_processing)
    data = [EmbeddingData(index=i, embedding=encode_array(o.outputs.numpy(), request.encoding_format))
            for i, o in enumerate(outputs)]
    return ModelResponse(EmbeddingResponse(id=f"embd-{uuid.uuid4().hex}", model=model, data=data,
                                           usage=ctx.usage("/v1/embeddings", outputs)))
