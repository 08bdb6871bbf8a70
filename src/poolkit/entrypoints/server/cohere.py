"""``POST /v2/embed``: Cohere's v2 embed API (texts), with its quantized embedding types.

The request runs through the same async engine path as ``/v1/embeddings``
(``ctx.process("embed", ...)``: batching with other clients, admission, limits);
only the translation differs:

- ``input_type`` picks one of the model's Sentence-Transformers prompts
  (:func:`prompt_name`), as ``prompt_name`` does on ``/v1/embeddings``;
- ``truncate`` is ``truncate_prompt_tokens=-1`` on the side it names (``END``:
  the tokenizer cuts the end; ``START``: the tokenized input loses the start of
  its text, the special tokens and an ``input_type`` prompt kept, per request,
  without reconfiguring the shared tokenizer: ``truncation_side`` of the task
  layer), or no truncation (``NONE``: a too-long input is the usual 400; a model
  whose pooler config enables chunked processing embeds it in chunks instead);
- ``output_dimension`` is ``dimensions``: the Matryoshka size, with its errors;
- every requested ``embedding_types`` form is computed from the engine's float32
  vectors with :mod:`poolkit.quantize` (see there for the int8 / uint8 scaling).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter

from ...inputs import TruncationSide
from ...params import PoolingParams
from ...quantize import (
    quantize_binary,
    quantize_binary_signed,
    quantize_int8_per_vector,
    quantize_uint8_per_vector,
)
from ...tasks import role_prompt_name
from .context import Context, ServerContext
from .errors import API_ERRORS
from .protocol import (
    CohereEmbedBilledUnits,
    CohereEmbeddingsByType,
    CohereEmbeddingType,
    CohereEmbedMeta,
    CohereEmbedRequest,
    CohereEmbedResponse,
    CohereInputType,
    CohereTruncate,
)
from .responses import ModelResponse, encode_array

router = APIRouter(tags=["Cohere Embed"], responses=API_ERRORS)

ENDPOINT = "/v2/embed"

# truncate → (truncate_prompt_tokens, the side cut)
TRUNCATION: dict[CohereTruncate, tuple[int | None, TruncationSide | None]] = {
    "NONE": (None, None),
    "END": (-1, "right"),
    "START": (-1, "left"),
}

# embedding type → the codes of a (n, d) float32 batch, one row per input
_FORMS: dict[CohereEmbeddingType, Callable[[np.ndarray], Sequence[Any]]] = {
    "float": list,
    "int8": lambda x: list(quantize_int8_per_vector(x)),
    "uint8": lambda x: list(quantize_uint8_per_vector(x)),
    "binary": lambda x: list(quantize_binary_signed(x)),
    "ubinary": lambda x: list(quantize_binary(x)),
    "base64": lambda x: [encode_array(row, "base64") for row in x],
}


def prompt_name(ctx: ServerContext, input_type: CohereInputType | None) -> str | None:
    """The model's prompt for a Cohere ``input_type``, ``None`` where it has none (its default prompt applies).

    ``search_query`` / ``search_document``: the prompt sentence-transformers' ``encode_query`` /
    ``encode_document`` would use; ``classification`` / ``clustering``: the prompt of that name.
    """
    mc = ctx.model_config
    if input_type == "search_query":
        return role_prompt_name(mc, "query")
    if input_type == "search_document":
        return role_prompt_name(mc, "document")
    if input_type is not None and input_type in mc.prompts:
        return input_type
    return None


def embeddings_by_type(vectors: np.ndarray, types: Sequence[CohereEmbeddingType]) -> CohereEmbeddingsByType:
    """Every requested form of a ``(n, d)`` float32 batch (each type once, whatever the repeats)."""
    return CohereEmbeddingsByType.model_validate({t: _FORMS[t](vectors) for t in dict.fromkeys(types)})


@router.post(ENDPOINT, response_model=CohereEmbedResponse, summary="Embed texts (Cohere's v2 embed API)")
async def create_embed(request: CohereEmbedRequest, ctx: Context) -> ModelResponse:
    ctx.check_model(request.model)
    texts = ctx.texts(request.texts, "texts")
    truncate_prompt_tokens, side = TRUNCATION[request.truncate]
    params = PoolingParams(dimensions=request.output_dimension, output="dense")
    outputs = await ctx.process("embed", texts, params, truncate_prompt_tokens=truncate_prompt_tokens,
                                truncation_side=side, prompt_name=prompt_name(ctx, request.input_type))
    vectors = np.stack([o.outputs.numpy() for o in outputs]).astype(np.float32, copy=False)
    usage = ctx.usage(ENDPOINT, outputs)
    warnings = []
    if usage.truncated_inputs:
        cut = [i for i, o in enumerate(outputs) if o.truncated]
        warnings.append(f"{len(cut)} of the texts (index {', '.join(map(str, cut[:10]))}"
                        f"{', ...' if len(cut) > 10 else ''}) were longer than the model's maximum of "
                        f"{ctx.model_config.max_model_len} tokens and were cut at the "
                        f"{'start' if request.truncate == 'START' else 'end'} (truncate={request.truncate})")
    meta = CohereEmbedMeta(billed_units=CohereEmbedBilledUnits(input_tokens=usage.prompt_tokens), warnings=warnings)
    return ModelResponse(CohereEmbedResponse(
        id=f"embd-{uuid.uuid4().hex}", embeddings=embeddings_by_type(vectors, request.embedding_types or ["float"]),
        texts=texts, meta=meta))
