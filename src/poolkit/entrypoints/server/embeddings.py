"""``POST /v1/embeddings``: OpenAI's embeddings API, with poolkit's prompt extensions."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from ...outputs import SparseEmbeddingOutput
from ...params import PoolingParams
from .context import Context
from .errors import API_ERRORS, APIError
from .messages import conversation_prompts
from .protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, SparseEmbedding
from .responses import EncodingFormat, ModelResponse, encode_array

router = APIRouter(tags=["Embeddings"], responses=API_ERRORS)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, summary="Embed texts or token ids")
async def create_embeddings(request: EmbeddingRequest, ctx: Context) -> ModelResponse:
    model = ctx.check_model(request.model)
    if request.input is None and request.messages is None:
        raise APIError(400, "input: Field required (or 'messages': chat-style input for image-text models)")
    if request.input is not None and request.messages is not None:
        raise APIError(400, "Send either 'input' or 'messages' (chat-style, for image-text models), not both")
    if request.input is not None:
        prompts = ctx.prompts(request.input)
    else:
        prompts = await conversation_prompts(ctx, request.messages)  # type: ignore[arg-type]
    params = PoolingParams(dimensions=request.dimensions, normalize=request.normalize, output=request.output,
                           max_active_dims=request.max_active_dims)
    if request.encoding_format == "base64" and (request.output or ctx.model_config.default_output) == "sparse":
        raise APIError(400, "encoding_format base64 sends float arrays; sparse embeddings are sent as "
                            "{indices, values} (use encoding_format float)")
    outputs = await ctx.process("embed", prompts, params, truncate_prompt_tokens=request.truncate_prompt_tokens,
                                prompt_name=request.prompt_name, prompt=request.prompt,
                                enable_chunked_processing=request.enable_chunked_processing)
    data = [EmbeddingData(index=i, embedding=embedding_payload(o.outputs, request.encoding_format))
            for i, o in enumerate(outputs)]
    return ModelResponse(EmbeddingResponse(id=f"embd-{uuid.uuid4().hex}", model=model, data=data,
                                           usage=ctx.usage("/v1/embeddings", outputs)))


def embedding_payload(output: Any, encoding_format: EncodingFormat) -> Any:
    """What ``embedding`` holds: a vector or per-token vectors (as arrays or base64), or a sparse embedding's
    ``{indices, values}``."""
    if isinstance(output, SparseEmbeddingOutput):
        return SparseEmbedding(indices=output.indices, values=output.values)
    return encode_array(output.numpy(), encoding_format)
