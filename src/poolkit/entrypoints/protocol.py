"""Request and response schemas of the OpenAI-compatible server (one module, like vLLM's protocol).

Requests use strict types (no silent ``"1"`` → 1 or ``true`` → 1 coercion)
and ignore unknown fields, as OpenAI clients send extras. Response models
document the API (OpenAPI); handlers build the JSON directly for speed.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- shared pieces --------------------------------------------------------------

TokenIds = list[StrictInt]
PromptInput = Union[StrictStr, list[StrictStr], TokenIds, list[TokenIds]]

_MODEL = Field(None, description="Served model name; optional (must match /v1/models when given).")
_INPUT = Field(
    ...,
    description="A text, a list of texts, a list of token ids, or a list of those. Not empty; no empty strings.",
)
_TRUNCATE = Field(
    None,
    description="Keep only this many tokens of each input (-1: the model's limit). Without it, an input longer "
    "than the model's limit is an error.",
)


class ErrorResponse(OpenAIBaseModel):
    object: Literal["error"] = "error"
    message: str
    type: str
    param: Optional[str] = None
    code: int


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


# -- /v1/embeddings ---------------------------------------------------------------


class EmbeddingRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    input: PromptInput = _INPUT
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: little-endian float32 bytes, base64-encoded (the openai client's default)."
    )
    dimensions: Optional[StrictInt] = Field(None, description="Matryoshka output size (models that support it).")
    user: Optional[str] = None
    truncate_prompt_tokens: Optional[StrictInt] = _TRUNCATE
    normalize: Optional[StrictBool] = Field(None, description="Override the model's L2 normalization.")


class EmbeddingData(OpenAIBaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: Union[list[float], str]


class EmbeddingResponse(OpenAIBaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[EmbeddingData]
    usage: UsageInfo


# -- /pooling ----------------------------------------------------------------------


class PoolingRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    input: PromptInput = _INPUT
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: the flattened output as little-endian float32 bytes."
    )
    dimensions: Optional[StrictInt] = None
    normalize: Optional[StrictBool] = None
    activation: Optional[StrictBool] = None
    user: Optional[str] = None
    truncate_prompt_tokens: Optional[StrictInt] = _TRUNCATE


class PoolingData(OpenAIBaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: Union[list[Any], str] = Field(..., description="A vector, or nested lists for per-token outputs.")


class PoolingResponse(OpenAIBaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: UsageInfo


# -- /classify ------------------------------------------------------------------------


class ClassificationRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    input: PromptInput = _INPUT
    activation: Optional[StrictBool] = Field(None, description="false: raw logits instead of probabilities.")
    user: Optional[str] = None
    truncate_prompt_tokens: Optional[StrictInt] = _TRUNCATE


class ClassificationData(OpenAIBaseModel):
    index: int
    label: Optional[str]
    probs: list[float]
    num_classes: int


class ClassificationResponse(OpenAIBaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: UsageInfo


# -- /score, /v1/score --------------------------------------------------------------------


class ScoreRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    text_1: Union[StrictStr, list[StrictStr]] = Field(..., description="Queries: one, or as many as text_2.")
    text_2: Union[StrictStr, list[StrictStr]] = Field(..., description="Documents: scored against text_1.")
    activation: Optional[StrictBool] = None
    truncate_prompt_tokens: Optional[StrictInt] = _TRUNCATE


class ScoreData(OpenAIBaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(OpenAIBaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: UsageInfo


# -- /rerank, /v1/rerank (Jina), /v2/rerank (Cohere v2) ------------------------------------------


class RerankDocument(OpenAIBaseModel):
    text: StrictStr


class RerankRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    query: StrictStr
    documents: list[Union[StrictStr, RerankDocument]]
    top_n: Optional[StrictInt] = Field(None, ge=0, description="Return only the best N results (0 or omitted: all).")
    return_documents: Optional[StrictBool] = Field(
        None, description="Include each document's text (default: true on /rerank and /v1/rerank, false on /v2/rerank)."
    )
    activation: Optional[StrictBool] = None
    truncate_prompt_tokens: Optional[StrictInt] = _TRUNCATE


class RerankResult(OpenAIBaseModel):
    index: int
    relevance_score: float
    document: Optional[RerankDocument] = None


class RerankResponse(OpenAIBaseModel):
    id: str
    model: str
    usage: UsageInfo
    results: list[RerankResult]


class CohereApiVersion(OpenAIBaseModel):
    version: str = "2"


class CohereBilledUnits(OpenAIBaseModel):
    search_units: int = 1


class CohereMeta(OpenAIBaseModel):
    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits = Field(default_factory=CohereBilledUnits)


class RerankV2Response(RerankResponse):
    meta: CohereMeta


# -- /tokenize, /detokenize, /v1/models ---------------------------------------------------------------


class TokenizeRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    prompt: StrictStr
    add_special_tokens: StrictBool = True


class TokenizeResponse(OpenAIBaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    tokens: TokenIds


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "poolkit"
    root: str
    parent: Optional[str] = None
    max_model_len: int
    task: str


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
