"""Request and response schemas of the OpenAI-compatible server (one module, like vLLM's protocol).

Requests use strict types (no silent ``"1"`` → 1 or ``true`` → 1 coercion)
and ignore unknown fields, as OpenAI clients send extras. Handlers build every
response *from* these models and send ``model_dump()`` (see ``responses.py``),
so the published OpenAPI schema and the bytes on the wire cannot drift.

Some rules the server checks itself, with messages clients rely on ("'input'
item 1 is an empty string"); a pydantic constraint would replace those
messages, so :func:`_documents` only *publishes* them in the JSON schema.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar, Union

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic.fields import FieldInfo


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _documents(**keywords: Any) -> FieldInfo:
    """JSON-schema keywords the handlers enforce at run time (with their own error messages)."""
    return Field(json_schema_extra=keywords)


# -- shared request pieces ---------------------------------------------------------

NonEmptyStr = Annotated[StrictStr, _documents(minLength=1)]
TokenId = Annotated[StrictInt, _documents(minimum=0)]
TokenIds = Annotated[list[TokenId], _documents(minItems=1)]
NonEmptyStrList = Annotated[list[NonEmptyStr], _documents(minItems=1)]
PromptInput = Union[NonEmptyStr, NonEmptyStrList, TokenIds, Annotated[list[TokenIds], _documents(minItems=1)]]
TextInput = Union[NonEmptyStr, NonEmptyStrList]

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


# -- shared response pieces ----------------------------------------------------------


def _float64_array(value: Any) -> np.ndarray:
    """Model outputs as float64, whose shortest decimal form is exactly the offline API's Python floats.

    Arrays only (at least one dimension), so that what is sent is the JSON array the schema promises.
    """
    if isinstance(value, str):  # never read a string as numbers: strings are base64 payloads
        raise ValueError("expected an array of numbers")
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        raise ValueError("expected an array, got a scalar")
    return array


def _float64_vector(value: Any) -> np.ndarray:
    array = _float64_array(value)
    if array.ndim != 1:
        raise ValueError(f"expected a vector, got an array of shape {array.shape}")
    return array


# NumPy arrays in response models: ``model_dump()`` keeps the array (orjson writes it without making
# a Python float per element), ``model_dump_json()`` writes a list; the schema says what both produce.
FloatVector = Annotated[
    np.ndarray,
    PlainValidator(_float64_vector),
    PlainSerializer(lambda a: a.tolist(), when_used="json"),
    WithJsonSchema({"type": "array", "items": {"type": "number"}}),
]
FloatArray = Annotated[
    np.ndarray,
    PlainValidator(_float64_array),
    PlainSerializer(lambda a: a.tolist(), when_used="json"),
    WithJsonSchema({"type": "array", "description": "A vector, or nested lists for per-token outputs."}),
]
Base64Floats = Annotated[StrictStr, Field(description="Little-endian float32 bytes, base64-encoded.")]


class ErrorResponse(OpenAIBaseModel):
    object: Literal["error"] = "error"
    message: str
    type: str
    param: Optional[str] = None
    code: int


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    truncated_inputs: int = Field(0, description="Extension: inputs cut by truncate_prompt_tokens.")


DataT = TypeVar("DataT")


class ListResponse(OpenAIBaseModel, Generic[DataT]):
    """The OpenAI list envelope shared by /v1/embeddings, /pooling, /classify and /score."""

    id: str
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[DataT]
    usage: UsageInfo


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
    prompt_name: Optional[StrictStr] = Field(
        None, description="Extension: a Sentence-Transformers prompt of the model (see /v1/models) put before "
        "every text; without it (and without `prompt`) the model's default prompt applies.")
    prompt: Optional[StrictStr] = Field(None, description="Extension: a prompt text put before every text.")


class EmbeddingData(OpenAIBaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: Union[FloatVector, Base64Floats]


class EmbeddingResponse(ListResponse[EmbeddingData]):
    """Embeddings in input order (OpenAI's ``/v1/embeddings`` response)."""


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
    data: Union[FloatArray, Base64Floats]


class PoolingResponse(ListResponse[PoolingData]):
    """The pooler's raw outputs in input order."""


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
    probs: FloatVector
    num_classes: int


class ClassificationResponse(ListResponse[ClassificationData]):
    """Class probabilities (or logits) and the best label, in input order."""


# -- /score, /v1/score --------------------------------------------------------------------


_SCORE_DIMENSIONS = Field(None, description="Extension: embedding models score by the cosine of vectors cut to "
                                            "this Matryoshka size (models that support it).")


class ScoreRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    text_1: TextInput = Field(..., description="Queries: one, or as many as text_2.")
    text_2: TextInput = Field(..., description="Documents: scored against text_1.")
    activation: Optional[StrictBool] = None
    dimensions: Optional[StrictInt] = _SCORE_DIMENSIONS
    truncate_prompt_tokens: Optional[StrictInt] = _TRUNCATE


class ScoreData(OpenAIBaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(ListResponse[ScoreData]):
    """One score per (text_1, text_2) pair, in pair order."""


# -- /rerank, /v1/rerank (Jina), /v2/rerank (Cohere v2) ------------------------------------------


class RerankDocument(OpenAIBaseModel):
    text: NonEmptyStr


class RerankRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    query: NonEmptyStr
    documents: Annotated[list[Union[NonEmptyStr, RerankDocument]], _documents(minItems=1)]
    top_n: Optional[StrictInt] = Field(None, ge=0, description="Return only the best N results (0 or omitted: all).")
    return_documents: Optional[StrictBool] = Field(
        None, description="Include each document's text (default: true on /rerank and /v1/rerank, false on /v2/rerank)."
    )
    activation: Optional[StrictBool] = None
    dimensions: Optional[StrictInt] = _SCORE_DIMENSIONS
    truncate_prompt_tokens: Optional[StrictInt] = _TRUNCATE


class RerankResult(OpenAIBaseModel):
    index: int
    relevance_score: float
    document: Optional[RerankDocument] = Field(
        None, exclude_if=lambda document: document is None, description="Absent unless documents are returned."
    )


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
    tokens: list[TokenId]


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
    prompts: dict[str, str] = Field(default_factory=dict,
                                    description="Extension: the model's Sentence-Transformers prompts by name.")
    default_prompt_name: Optional[str] = Field(None, description="Extension: the prompt applied by default.")


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
