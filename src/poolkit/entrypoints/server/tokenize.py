"""``POST /tokenize`` and ``POST /detokenize`` with the served model's tokenizer (vLLM's APIs)."""

from __future__ import annotations

from fastapi import APIRouter

from .context import Context, check_unicode
from .errors import API_ERRORS, APIError, engine_errors
from .protocol import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from .responses import ModelResponse

router = APIRouter(responses=API_ERRORS)


def max_detokenize_ids(max_model_len: int) -> int:
    """Far more ids than one input of the model can have: a bound on one request's work."""
    return 16 * max_model_len + 1024


@router.post("/tokenize", response_model=TokenizeResponse, tags=["Tokenize"], summary="Tokenize a text")
async def tokenize(request: TokenizeRequest, ctx: Context) -> ModelResponse:
    ctx.check_model(request.model)
    limit = ctx.settings.max_input_chars
    if len(request.prompt) > limit:
        raise APIError(400, f"'prompt' has {len(request.prompt)} characters, more than this server's limit of "
                            f"{limit} characters")
    check_unicode(request.prompt, "'prompt'")
    with engine_errors():
        tokens = await ctx.engine.tokenize_text(request.prompt, request.add_special_tokens)
    return ModelResponse(TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=ctx.model_config.max_model_len))


@router.post("/detokenize", response_model=DetokenizeResponse, tags=["Detokenize"], summary="Token ids to text")
async def detokenize(request: DetokenizeRequest, ctx: Context) -> ModelResponse:
    ctx.check_model(request.model)
    if len(request.tokens) > max_detokenize_ids(ctx.model_config.max_model_len):
        raise APIError(400, f"'tokens' has {len(request.tokens)} items, too many to detokenize")
    with engine_errors():
        prompt = await ctx.engine.detokenize(request.tokens)
    return ModelResponse(DetokenizeResponse(prompt=prompt))
