"""``POST /classify``: class probabilities and labels of sequence classifiers (vLLM's classification API)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from ...params import PoolingParams
from .context import Context
from .errors import API_ERRORS
from .protocol import ClassificationData, ClassificationRequest, ClassificationResponse
from .responses import ModelResponse

router = APIRouter(tags=["Classification"], responses=API_ERRORS)


@router.post("/classify", response_model=ClassificationResponse, summary="Classify texts or token ids")
async def create_classification(request: ClassificationRequest, ctx: Context) -> ModelResponse:
    model = ctx.check_model(request.model)
    prompts = ctx.prompts(request.input)
    params = PoolingParams(activation=request.activation)
    outputs = await ctx.process("classify", prompts, params, truncate_prompt_tokens=request.truncate_prompt_tokens)
    data = [ClassificationData(index=i, label=o.outputs.label, probs=o.outputs.numpy(),
                               num_classes=o.outputs.num_classes) for i, o in enumerate(outputs)]
    return ModelResponse(ClassificationResponse(id=f"classify-{uuid.uuid4().hex}", model=model, data=data,
                                                usage=ctx.usage("/classify", outputs)))
