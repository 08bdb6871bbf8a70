"""Request and response schemas of the OpenAI-compatible server (one module, like vLLM's protocol).

Requests use strict types (no silent ``"1"`` → 1 or ``true`` → 1 coercion)
and ignore unknown fields, as OpenAI clients send extras. Handlers build every
response *from* these models and send ``model_dump()`` (see ``responses.py``),
so the published OpenAPI schema and the bytes on the wire cannot drift.

Some rules the server checks itself, with messages clients rely on ("'input'
item 1 is an empty string"); a pydantic constraint would replace those
messages, so :func:`_documents` only *publishes* them in the JSON schema.
Rules whose bounds are settings of the server or facts of the model (a list's
``maxItems`` is ``--max-inputs-per-request``, a token id's ``maximum`` the
vocabulary's last id) are written as :func:`_limits` placeholders, which
``build_app`` fills in for the server it builds (see ``app.py``), so that each
server's /openapi.json states its own limits.

Fields that are not OpenAI's are marked "Extension" in their descriptions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar, Union

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    RootModel,
    StrictBool,
    StrictStr,
    WithJsonSchema,
)
from pydantic.fields import FieldInfo


class OpenAIBaseModel(BaseModel):
    # Response schemas list every field as required: every field is sent (a field that may be left out of a
    # response says so with ``exclude_if``, which keeps it optional). Requests are unaffected.
    model_config = ConfigDict(extra="ignore", json_schema_serialization_defaults_required=True)


def _documents(**keywords: Any) -> FieldInfo:
    """JSON-schema keywords the handlers enforce at run time (with their own error messages)."""
    return Field(json_schema_extra=keywords)


LIMITS_KEY = "x-poolkit-limits"
"""Placeholder key in the generated JSON schema: ``{LIMITS_KEY: {keyword: limit name}}``, see :func:`_limits`."""

LIMIT_NAMES = frozenset({"max_inputs_per_request", "max_input_chars", "max_model_len", "max_token_id",
                         "max_detokenize_ids"})


def _limits(**keywords: str) -> dict[str, Any]:
    """JSON-schema keywords whose values are a limit of the server or the model, by name (:data:`LIMIT_NAMES`).

    ``build_app`` replaces ``{LIMITS_KEY: {"maxItems": "max_inputs_per_request"}}`` by ``{"maxItems": 2048}``
    (that server's ``--max-inputs-per-request``) when it publishes the schema.
    """
    assert set(keywords.values()) <= LIMIT_NAMES, keywords
    return {LIMITS_KEY: keywords}


def _whole_number_as_int(value: Any) -> Any:
    """``1.0`` as ``1``: JSON Schema's ``integer`` is any number without a fractional part, so accept those.

    Strings and booleans stay errors (no ``"1"`` → 1 or ``true`` → 1), and so do ``1.5``, ``inf`` and ``nan``.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema means it (``3`` or ``3.0``); constraints go before the validator, so that they
# are published as JSON-schema keywords.
JsonInt = Annotated[int, Field(strict=True), BeforeValidator(_whole_number_as_int)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0), BeforeValidator(_whole_number_as_int)]


# -- shared request pieces ---------------------------------------------------------

# One input text: not empty, at most --max-input-chars characters (code points, as JSON Schema counts them).
InputText = Annotated[StrictStr, _documents(minLength=1, **_limits(maxLength="max_input_chars"))]
# A list of inputs: not empty, at most --max-inputs-per-request of them.
InputTexts = Annotated[list[InputText], _documents(minItems=1, **_limits(maxItems="max_inputs_per_request"))]
TokenId = Annotated[JsonInt, _documents(minimum=0, **_limits(maximum="max_token_id"))]
# One input as token ids (its length is limited by the model's maximum, unless truncate_prompt_tokens is set).
TokenIds = Annotated[list[TokenId], _documents(minItems=1)]
PromptInput = Union[InputText, InputTexts, TokenIds,
                    Annotated[list[TokenIds], _documents(minItems=1, **_limits(maxItems="max_inputs_per_request"))]]
TextInput = Union[InputText, InputTexts]
# -1 (the model's limit) or 1 ... the model's limit.
TruncatePromptTokens = Annotated[JsonInt, WithJsonSchema({"type": "integer", "anyOf": [
    {"const": -1}, {"minimum": 1, **_limits(maximum="max_model_len")}]})]
# ≥ 1; the sizes the model accepts are published by each server (see app.py).
Dimensions = Annotated[JsonInt, _documents(minimum=1)]

_MODEL = Field(None, description="A served model name (see /v1/models); omitted, null or empty: the served model. "
                                 "Another name is answered 404.")
_INPUT = Field(
    ...,
    description="The inputs: a text, a list of texts, a list of token ids (one input), or a list of those. "
    "Not empty; no empty text or empty token-id list; at most the server's limits on inputs per request and "
    "characters per text (maxItems, maxLength). Each input must fit the model's maximum length in tokens "
    "(`max_model_len` in /v1/models) unless truncate_prompt_tokens is set.",
)
_TRUNCATE = Field(
    None,
    description="Extension (vLLM): cut each input to this many tokens, the model's special tokens kept "
    "(-1: to the model's maximum length). Without it, an input longer than the model's maximum is an error. "
    "The number of inputs cut is reported in usage.truncated_inputs.",
)
_USER = Field(None, description="An end-user id (OpenAI's field); accepted and ignored.")

# -- shared response pieces ----------------------------------------------------------


def _float64_array(value: Any) -> np.ndarray:
    """Model outputs as float64, whose shortest decimal form is exactly the offline API's Python floats.

    Arrays only (at least one dimension), so that what is sent is the JSON array the schema promises.
    """
    if isinstance(value, str):  # never read a string as numbers: strings are base64 payloads
        raise ValueError("expected an array of numbers")
    try:
        array = np.asarray(value, dtype=np.float64)
    except TypeError:  # not numbers (e.g. another member of a union): a validation error, so the union goes on
        raise ValueError(f"expected an array of numbers, got {type(value).__name__}") from None
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


def _int_vector(dtype: type[np.integer[Any]]) -> Callable[[Any], np.ndarray]:
    """A validator of integer vectors that fit ``dtype`` (kept as arrays of it, like ``FloatVector``)."""
    info = np.iinfo(dtype)

    def validate(value: Any) -> np.ndarray:
        if isinstance(value, str):
            raise ValueError("expected an array of integers")
        array = np.asarray(value)
        if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"expected a vector of integers, got an array of {array.dtype} of shape {array.shape}")
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"expected integers in [{info.min}, {info.max}]")
        return array.astype(dtype, copy=False)

    return validate


def _int_items(dtype: type[np.integer[Any]]) -> WithJsonSchema:
    info = np.iinfo(dtype)
    return WithJsonSchema({"type": "array", "items": {"type": "integer", "minimum": int(info.min),
                                                      "maximum": int(info.max)}})


# Integer codes (``/v2/embed``'s quantized types), kept as NumPy arrays like ``FloatVector``.
Int8Vector = Annotated[np.ndarray, PlainValidator(_int_vector(np.int8)),
                       PlainSerializer(lambda a: a.tolist(), when_used="json"), _int_items(np.int8)]
UInt8Vector = Annotated[np.ndarray, PlainValidator(_int_vector(np.uint8)),
                        PlainSerializer(lambda a: a.tolist(), when_used="json"), _int_items(np.uint8)]


Int64Vector = Annotated[np.ndarray, PlainValidator(_int_vector(np.int64)),
                        PlainSerializer(lambda a: a.tolist(), when_used="json"), _int_items(np.int64)]


class SparseEmbedding(OpenAIBaseModel):
    """A sparse embedding: the active dimensions (token ids, ascending) and their weights."""

    indices: Int64Vector
    values: FloatVector


EmbeddingKind = Literal["dense", "sparse", "multi_vector"]
_OUTPUT = Field(
    None, description="Extension: which of the model's embeddings to return: `dense` (a vector), `sparse` "
    "(SPLADE / BGE-M3 lexical weights: `{indices, values}` over the vocabulary) or `multi_vector` (ColBERT-style: "
    "one normalized vector per kept token). null: the model's default, the first of `outputs` in /v1/models; "
    "another kind the model lacks is a 400.")
_MAX_ACTIVE_DIMS = Field(None, description="Extension (sentence-transformers' name): sparse embeddings keep only "
                                           "their this many largest weights.")


class ErrorResponse(OpenAIBaseModel):
    """Every error the server sends (4xx and 5xx), in the shape of OpenAI's and vLLM's errors."""

    object: Literal["error"] = "error"
    message: str = Field(description="What went wrong, for people.")
    type: str = Field(description="The error's class, e.g. `BadRequestError`, `NotFoundError`.")
    param: Optional[str] = Field(default=None, description="Always null (OpenAI's field).")
    code: int = Field(description="The HTTP status.")


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = Field(default=0, description="Tokens of all the inputs, as the model read them.")
    total_tokens: int = Field(default=0, description="The same as prompt_tokens (nothing is generated).")
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


# ``input`` as text (one, or a list), not token ids.
TEXT_INPUT_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


_CHUNKED = Field(
    None, description="Extension (vLLM's pooler-config name, per request): an input longer than the model is "
    "embedded in chunks that each fit it (the model's special tokens on every chunk), whose pooled vectors are "
    "averaged by token count before normalization; up to the model's max_embed_len tokens. Not together with "
    "truncate_prompt_tokens (truncation wins). null: the model's setting. Embedding models pooling one vector "
    "per input only.")


class ChatTextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: InputText


class ImageURL(OpenAIBaseModel):
    url: Annotated[StrictStr, _documents(minLength=1)] = Field(
        ..., description="A data: URI (base64 image), an http(s) URL, or a local file (file:// URL or absolute "
        "path) under the server's --allowed-local-media-path.")
    detail: Optional[str] = Field(None, description="OpenAI's field; accepted and ignored.")


class ChatImagePart(OpenAIBaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ChatContentPart = Annotated[Union[ChatTextPart, ChatImagePart], Field(discriminator="type")]


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "user", "assistant"] = "user"
    content: Union[InputText, Annotated[list[ChatContentPart], _documents(minItems=1)]]


Conversation = Annotated[list[ChatMessage], _documents(minItems=1)]


class EmbeddingRequest(OpenAIBaseModel):
    # Rules across fields, written without "not" (which schemathesis' coverage phase cannot generate around):
    # prompt and prompt_name exclude each other, and a prompt text goes with text inputs only (app.py adds the
    # same rule for the model's prompt names).
    model_config = ConfigDict(json_schema_extra={"allOf": [
        # one of prompt and prompt_name is left out or null
        {"anyOf": [{"properties": {"prompt": {"type": "null"}}}, {"properties": {"prompt_name": {"type": "null"}}}]},
        # prompt is left out, null or empty, or the input is text
        {"anyOf": [{"properties": {"prompt": {"maxLength": 0}}}, {"properties": {"input": TEXT_INPUT_SCHEMA}}]},
    ]})

    model: Optional[str] = _MODEL
    input: Optional[PromptInput] = Field(None, description=_INPUT.description + " Required unless `messages` "
                                                                                "is given (image-text models).")
    messages: Optional[Union[Conversation, Annotated[list[Conversation], _documents(
        minItems=1, **_limits(maxItems="max_inputs_per_request"))]]] = Field(
        None, description="Extension (vLLM), for image-text models (CLIP, SigLIP): chat-style input instead of "
        "`input`: a conversation, or a list of conversations (a batch); one embedding per conversation, of its "
        "one text or one image (`image_url` part).")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float`: arrays of numbers; `base64`: each embedding as little-endian float32 bytes, "
        "base64-encoded (the openai client's default)."
    )
    dimensions: Optional[Dimensions] = Field(
        None, description="Matryoshka output size: the embedding is cut to this many dimensions, then normalized "
        "again. Only models that support it, and only the sizes the model lists (this server's schema gives them).")
    user: Optional[str] = _USER
    truncate_prompt_tokens: Optional[TruncatePromptTokens] = _TRUNCATE
    normalize: Optional[StrictBool] = Field(
        None, description="Extension (vLLM): L2-normalize the embeddings (true) or not (false); null: as the model "
        "does.")
    prompt_name: Optional[StrictStr] = Field(
        None, description="Extension: the name of one of the model's Sentence-Transformers prompts (`prompts` in "
        "/v1/models) put before every text input; without it (and without `prompt`) the model's default prompt "
        "applies. Not together with `prompt`, nor (unless the prompt is empty) with token-id inputs.")
    prompt: Optional[StrictStr] = Field(
        None, description="Extension: a prompt text put before every text input, instead of the model's default "
        "prompt (\"\": none). Not together with `prompt_name`, nor (unless empty) with token-id inputs.")
    enable_chunked_processing: Optional[StrictBool] = _CHUNKED
    output: Optional[EmbeddingKind] = _OUTPUT
    max_active_dims: Optional[Annotated[JsonInt, _documents(minimum=1)]] = _MAX_ACTIVE_DIMS


class EmbeddingData(OpenAIBaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: Union[SparseEmbedding, FloatVector, Base64Floats, FloatArray] = Field(
        description="Dense: a vector (or base64 float32 bytes); sparse: `{indices, values}`; multi-vector: one "
                    "vector per token (or all of them, flattened row by row, as base64 float32 bytes).")


class EmbeddingResponse(ListResponse[EmbeddingData]):
    """Embeddings in input order (OpenAI's ``/v1/embeddings`` response)."""


# -- /pooling ----------------------------------------------------------------------


class PoolingRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    input: PromptInput = _INPUT
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float`: (nested) arrays of numbers; `base64`: each output flattened, as "
        "little-endian float32 bytes, base64-encoded."
    )
    dimensions: Optional[Dimensions] = Field(
        None, description="Matryoshka output size, as on /v1/embeddings (embedding models that support it).")
    normalize: Optional[StrictBool] = Field(
        None, description="L2-normalize the output (true) or not (false); null: as the model's pooler does.")
    activation: Optional[StrictBool] = Field(
        None, description="Apply the model's activation (softmax or sigmoid) to classifier outputs (true) or "
        "not (false); null: as the model's pooler does.")
    user: Optional[str] = _USER
    enable_chunked_processing: Optional[StrictBool] = _CHUNKED
    truncate_prompt_tokens: Optional[TruncatePromptTokens] = _TRUNCATE
    output: Optional[EmbeddingKind] = _OUTPUT


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
    activation: Optional[StrictBool] = Field(
        None, description="false: raw logits instead of probabilities; null or true: probabilities.")
    user: Optional[str] = _USER
    truncate_prompt_tokens: Optional[TruncatePromptTokens] = _TRUNCATE


class ClassificationData(OpenAIBaseModel):
    index: int
    label: Optional[str]
    probs: FloatVector
    num_classes: int


class ClassificationResponse(ListResponse[ClassificationData]):
    """Class probabilities (or logits) and the best label, in input order."""


# -- /score, /v1/score --------------------------------------------------------------------


_SCORE_DIMENSIONS = Field(None, description="Extension: embedding models score by the cosine of vectors cut to "
                                            "this Matryoshka size (models that support it; not cross-encoders).")
_SCORE_ACTIVATION = Field(None, description="Cross-encoders: apply the model's activation (sigmoid) to the score "
                                            "(true) or return the raw logit (false); null: as the model does. Not "
                                            "for embedding models, which score by cosine.")


class ScoreRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    text_1: TextInput = Field(..., description="The first texts of the pairs: one text (scored against every "
                                               "text_2: 1:1 or 1:N), or a list as long as text_2 (N:N, zipped); a "
                                               "list of one counts as one text.")
    text_2: TextInput = Field(..., description="The second texts of the pairs: one text or a list.")
    activation: Optional[StrictBool] = _SCORE_ACTIVATION
    dimensions: Optional[Dimensions] = _SCORE_DIMENSIONS
    truncate_prompt_tokens: Optional[TruncatePromptTokens] = _TRUNCATE
    output: Optional[EmbeddingKind] = Field(
        None, description="Extension: embedding models with several kinds of embeddings (BGE-M3) score with this "
        "one: dense (cosine), sparse (dot product) or multi_vector (MaxSim); null: the model's default.")


class ScoreData(OpenAIBaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(ListResponse[ScoreData]):
    """One score per (text_1, text_2) pair, in pair order."""


# -- /rerank, /v1/rerank (Jina), /v2/rerank (Cohere v2) ------------------------------------------


class RerankDocument(OpenAIBaseModel):
    text: InputText


class RerankRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    query: InputText = Field(..., description="The query every document is scored against.")
    documents: Annotated[list[Union[InputText, RerankDocument]],
                         _documents(minItems=1, **_limits(maxItems="max_inputs_per_request"))] = Field(
        ..., description="The documents to rank: texts, or objects with a `text`.")
    top_n: Optional[NonNegativeInt] = Field(
        None, description="Return only the best N results (0, null or omitted: all).")
    return_documents: Optional[StrictBool] = Field(
        None, description="Include each document's text (default: true on /rerank and /v1/rerank, false on /v2/rerank)."
    )
    activation: Optional[StrictBool] = _SCORE_ACTIVATION
    dimensions: Optional[Dimensions] = _SCORE_DIMENSIONS
    truncate_prompt_tokens: Optional[TruncatePromptTokens] = _TRUNCATE
    output: Optional[EmbeddingKind] = Field(
        None, description="Extension: embedding models with several kinds of embeddings (BGE-M3) score with this "
        "one: dense (cosine), sparse (dot product) or multi_vector (MaxSim); null: the model's default.")


def _never_null(*fields: str) -> Callable[[dict[str, Any]], None]:
    """A model's ``json_schema_extra`` for optional fields that are left out rather than sent as null."""

    def edit(schema: dict[str, Any]) -> None:
        for field in fields:
            prop = schema["properties"][field]
            alternatives = [a for a in prop.pop("anyOf") if a != {"type": "null"}]
            prop.pop("default", None)
            prop.update(alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives})

    return edit


class RerankResult(OpenAIBaseModel):
    model_config = ConfigDict(json_schema_extra=_never_null("document"))

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
    """Cohere v2's ``meta`` (only on /v2/rerank): one search unit per 100 documents."""

    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits = Field(default_factory=CohereBilledUnits)


class RerankV2Response(RerankResponse):
    meta: CohereMeta


# -- /v2/embed (Cohere v2) --------------------------------------------------------------------------

CohereInputType = Literal["search_document", "search_query", "classification", "clustering"]
CohereEmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
CohereTruncate = Literal["NONE", "START", "END"]


class CohereEmbedRequest(OpenAIBaseModel):
    """Cohere's v2 embed request (text inputs)."""

    model: Optional[str] = _MODEL
    texts: InputTexts = Field(
        ..., description="The texts to embed: not empty, no empty text, at most the server's limits on inputs per "
        "request and characters per text (maxItems, maxLength).")
    input_type: Optional[CohereInputType] = Field(
        None, description="What the texts are for. `search_query` and `search_document` put the model's "
        "Sentence-Transformers query / document prompt before every text (the prompt named `query`; the first of "
        "`document`, `passage`, `corpus`), `classification` and `clustering` the prompt of that name, when the "
        "model has one (`prompts` in /v1/models); otherwise (and when null) the model's default prompt applies.")
    embedding_types: Optional[Annotated[list[CohereEmbeddingType], Field(min_length=1)]] = Field(
        None, description="The forms to return, each under its own key of `embeddings` (null or omitted: "
        "`[\"float\"]`). `float`: the vectors; `int8` / `uint8`: each vector scaled on its own so that its "
        "largest component is ±127 (int8 in [-127, 127]; uint8 = int8 + 128), compare them by cosine similarity; "
        "`binary` / `ubinary`: one bit per dimension (> 0), packed 8 to a byte, most significant bit first "
        "(ubinary: the bytes as 0...255; binary: the bytes minus 128); `base64`: each vector as little-endian "
        "float32 bytes, base64-encoded.")
    output_dimension: Optional[Dimensions] = Field(
        None, description="Matryoshka output size, as `dimensions` on /v1/embeddings: the vector is cut to this "
        "many dimensions, then normalized again (only models that support it, only the sizes the model lists; "
        "this server's schema gives them). Every embedding type is computed from the cut vector.")
    truncate: CohereTruncate = Field(
        "END", description="An input longer than the model's maximum (`max_model_len` in /v1/models): `END` "
        "drops its end, `START` its start (the model's special tokens, and the prompt `input_type` put before "
        "the text, are kept); the cut inputs are reported in `meta.warnings`. `NONE`: such an input is an error "
        "(400), unless the model embeds long inputs in chunks (its pooler config's enable_chunked_processing).")


class CohereEmbeddingsByType(OpenAIBaseModel):
    """One list per requested embedding type (the others are left out), each in input order."""

    # (no field may be annotated ``float`` below ``float`` itself: it is a field name here)
    model_config = ConfigDict(json_schema_extra=_never_null("float", "int8", "uint8", "binary", "ubinary",
                                                            "base64"))

    float: Optional[list[FloatVector]] = Field(None, exclude_if=lambda v: v is None)
    int8: Optional[list[Int8Vector]] = Field(None, exclude_if=lambda v: v is None)
    uint8: Optional[list[UInt8Vector]] = Field(None, exclude_if=lambda v: v is None)
    binary: Optional[list[Int8Vector]] = Field(None, exclude_if=lambda v: v is None)
    ubinary: Optional[list[UInt8Vector]] = Field(None, exclude_if=lambda v: v is None)
    base64: Optional[list[Base64Floats]] = Field(None, exclude_if=lambda v: v is None)


class CohereEmbedBilledUnits(OpenAIBaseModel):
    input_tokens: int = Field(description="Tokens of all the inputs, as the model read them (usage.prompt_tokens "
                                          "on /v1/embeddings).")


class CohereEmbedMeta(OpenAIBaseModel):
    """Cohere v2's ``meta`` of an embed response."""

    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereEmbedBilledUnits
    warnings: list[str] = Field(default_factory=list, exclude_if=lambda warnings: not warnings,
                                description="Absent unless there is something to say, e.g. that inputs were cut.")


class CohereEmbedResponse(OpenAIBaseModel):
    """Cohere's v2 embed response: the embeddings by type, the input texts, and ``meta``."""

    id: str
    embeddings: CohereEmbeddingsByType
    texts: list[str]
    meta: CohereEmbedMeta
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"


# -- /embed_sparse (text-embeddings-inference) --------------------------------------------------------


class EmbedSparseRequest(OpenAIBaseModel):
    """TEI's ``/embed_sparse`` request."""

    inputs: TextInput = Field(..., description="A text or a list of texts.")
    truncate: Optional[StrictBool] = Field(
        False, description="Cut inputs longer than the model to its maximum length (false: such an input is a 400).")
    truncation_direction: Literal["Left", "Right", "left", "right"] = Field(
        "Right", description="The end a cut removes: Right keeps the start of each text, Left its end.")
    prompt_name: Optional[StrictStr] = Field(None, description="One of the model's Sentence-Transformers prompts.")
    max_active_dims: Optional[Annotated[JsonInt, _documents(minimum=1)]] = _MAX_ACTIVE_DIMS


class SparseValue(OpenAIBaseModel):
    index: int
    value: float


class EmbedSparseResponse(RootModel[list[list[SparseValue]]]):
    """Per input, its active dimensions (token ids) and weights, as TEI's ``/embed_sparse`` answers."""


# -- /tokenize, /detokenize, /v1/models ---------------------------------------------------------------


class TokenizeRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    prompt: Annotated[StrictStr, _documents(**_limits(maxLength="max_input_chars"))] = Field(
        ..., description="The text to tokenize (may be empty), at most the server's limit of characters per text.")
    add_special_tokens: StrictBool = Field(True, description="Add the model's special tokens ([CLS], [SEP], ...).")


class TokenizeResponse(OpenAIBaseModel):
    tokens: list[int]
    count: int = Field(description="The number of tokens.")
    max_model_len: int = Field(description="The model's maximum input length in tokens.")


class DetokenizeRequest(OpenAIBaseModel):
    model: Optional[str] = _MODEL
    tokens: Annotated[list[TokenId], _documents(**_limits(maxItems="max_detokenize_ids"))] = Field(
        ..., description="Token ids of the model's vocabulary (may be empty).")


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "poolkit"
    root: str
    parent: Optional[str] = None
    max_model_len: int = Field(description="Extension (vLLM): the model's maximum input length in tokens.")
    task: str = Field(description="Extension: the model's task (embed, classify, score, ...).")
    prompts: dict[str, str] = Field(default_factory=dict,
                                    description="Extension: the model's Sentence-Transformers prompts by name.")
    default_prompt_name: Optional[str] = Field(None, description="Extension: the prompt applied by default.")
    modalities: list[str] = Field(default_factory=lambda: ["text"], description="Extension: the kinds of input the "
                                  "model embeds (text; image for CLIP/SigLIP, sent as `messages`).")
    outputs: list[str] = Field(default_factory=lambda: ["dense"], description="Extension: the kinds of embeddings "
                               "the model returns (dense, sparse, multi_vector), its default first.")


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
