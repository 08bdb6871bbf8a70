"""``POST /pooling``: the pooler's raw output for any model (vLLM's pooling API)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from ...params import PoolingParams
from .context import Context
from .errors import API_ERRORS
from .protocol import PoolingData, PoolingRequest, PoolingResponse
from .responses import ModelResponse, encode_array

router = APIRouter(tags=["Pooling"], responses=API_ERRORS)


@router.post("/pooling", response_model=PoolingResponse, summary="Raw pooled outputs")
async def create_pooling(request: PoolingRequest, ctx: Context) -> ModelResponse:
    model = ctx.check_model(request.model)
    prompts = ctx.prompts(request.input)
    params = PoolingParams(dimensions=request.dimensions, normalize=request.normalize, activation=request.activation,
                           output=request.output)
    outputs = await ctx.process("encode", prompts, params, truncate_prompt_tokens=request.truncate_prompt_tokens,
                                enable_chunked_processing=request.enable_chunked_processing)
    data = [PoolingData(index=i, data=encode_array(o.outputs.numpy(), request.encoding_format))
            for i, o in enumerate(outputs)]
    return ModelResponse(PoolingResponse(id=f"pool-{uuid.uuid4().hex}", model=model, data=data,
                                         usage=ctx.usage("/pooling", outputs)))
