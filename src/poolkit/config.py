"""Engine configuration: pooler settings, task resolution and the resolved model config.

The pooler a model runs with is built in layers of rising precedence
(DESIGN.md §3): the task's default, the architecture's own default, the
Sentence-Transformers files, and finally ``override_pooler_config``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

Task = Literal["embed", "classify", "score", "reward", "encode"]
TASKS: tuple[str, ...] = ("embed", "classify", "score", "reward", "encode")
TaskOption = Literal["auto", "embed", "classify", "score", "reward", "encode"]


class PoolingType(str, Enum):
    """How hidden states are reduced to the pooled output."""

    CLS = "CLS"
    MEAN = "MEAN"
    LAST = "LAST"
    ALL = "ALL"
    STEP = "STEP"

    @classmethod
    def parse(cls, value: str | PoolingType) -> PoolingType:
        if isinstance(value, PoolingType):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"Unknown pooling_type {value!r}; expected one of {names}") from None


@dataclass
class PoolerConfig:
    """Partial pooler settings; ``None`` means "not set at this layer".

    Mirrors vLLM's ``PoolerConfig``: ``pooling_type``, ``normalize``,
    ``activation`` (softmax/sigmoid on classifier and reward outputs; the older
    name ``softmax`` is accepted), ``dimensions`` (default Matryoshka size),
    ``step_tag_id`` and ``returned_token_ids`` for STEP pooling.

    Long inputs (vLLM's names): ``enable_chunked_processing`` embeds an input
    longer than ``max_model_len`` in chunks that each fit the model (the model's
    special tokens re-added to every chunk), ``chunk_overlap`` tokens apart
    (default 0), up to ``max_embed_len`` tokens (default: 32 x ``max_model_len``);
    the chunks' pooled vectors are averaged, weighted by their token counts,
    before the head (Dense, Matryoshka truncation, normalization).
    """

    pooling_type: str | None = None
    normalize: bool | None = None
    activation: bool | None = None
    softmax: bool | None = None
    dimensions: int | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    enable_chunked_processing: bool | None = None
    max_embed_len: int | None = None
    chunk_overlap: int | None = None

    def __post_init__(self) -> None:
        if self.pooling_type is not None:
            self.pooling_type = PoolingType.parse(self.pooling_type).value
        if self.softmax is not None and self.activation is None:
            self.activation = self.softmax
        self.softmax = None

    @classmethod
    def coerce(cls, value: PoolerConfig | dict[str, Any] | str | None) -> PoolerConfig:
        """Accept a PoolerConfig, a dict, or a JSON string (the CLI form)."""
        if value is None:
            return cls()
        if isinstance(value, PoolerConfig):
            return value
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise TypeError(f"override_pooler_config must be a PoolerConfig, dict or JSON, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"Unknown pooler config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**value)

    def over(self, base: PoolerConfig) -> PoolerConfig:
        """Return ``base`` with every field this layer sets replaced."""
        merged = dataclasses.asdict(base)
        for key, val in dataclasses.asdict(self).items():
            if val is not None:
                merged[key] = val
        return PoolerConfig(**merged)

    def __repr__(self) -> str:
        set_fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self).items() if v is not None)
        return f"PoolerConfig({set_fields})"


# The reference document's table of default poolers per task.
TASK_DEFAULT_POOLERS: dict[str, PoolerConfig] = {
    "embed": PoolerConfig(pooling_type="LAST", normalize=True, activation=False),
    "classify": PoolerConfig(pooling_type="LAST", normalize=False, activation=True),
    # "score" is defined by the model; LAST + activation is the fallback for decoder heads.
    "score": PoolerConfig(pooling_type="LAST", normalize=False, activation=True),
    "reward": PoolerConfig(pooling_type="ALL", normalize=False, activation=False),
    "encode": PoolerConfig(pooling_type="ALL", normalize=False, activation=False),
}


@dataclass
class DenseSpec:
    """A Sentence-Transformers ``Dense`` module found in the checkpoint."""

    path: str
    in_features: int
    out_features: int
    bias: bool
    activation: str


OutputKind = Literal["dense", "sparse", "multi_vector"]
OUTPUT_KINDS: tuple[str, ...] = ("dense", "sparse", "multi_vector")


@dataclass
class SparseSpec:
    """How a model makes sparse (vocabulary-size) embeddings.

    ``splade``: the MLM head's logits per token, ``log(1 + relu(x))`` (applied twice for
    ``log1p_relu``), reduced over the tokens by ``max`` or ``sum`` (sentence-transformers' ``SpladePooling``).
    ``lexical``: BGE-M3's ``sparse_linear``: one ``relu`` weight per token, the largest per token id,
    special tokens left out. With ``static_dir``, inputs of ``static_role`` get the static weight of every
    token they contain instead (sentence-transformers' ``SparseStaticEmbedding``), without the model.
    """

    source: Literal["splade", "lexical"]
    vocab_size: int
    pooling_strategy: Literal["max", "sum"] = "max"
    activation: Literal["relu", "log1p_relu"] = "relu"
    # Inference-free sparse encoders: the SparseStaticEmbedding folder (a weight per token) and the role it
    # encodes without running the model (usually queries); the other role runs SPLADE.
    static_dir: str | None = None
    static_role: str | None = None


@dataclass
class MultiVectorSpec:
    """How a model makes per-token (ColBERT-style) vectors.

    ``projection``: Sentence-Transformers ``Dense`` modules on the token embeddings (``MultiVectorEncoder``),
    or BGE-M3's ``colbert_linear`` (``"colbert_linear"``, which also leaves out the first token).
    ``skiplist_words`` are dropped from the vectors of the roles in ``skiplist_roles`` (documents by default).
    ``similarity``: ``maxsim`` (sum over query tokens of the best document token's dot product) or
    ``meanmaxsim`` (divided by the query's token count, as BGE-M3 scores).
    ``query_length`` / ``document_length``: the most tokens of a query / document (sentence-transformers'
    per-role lengths). ``expansion``: ColBERT query expansion (``strategy`` ``fixed`` or ``min``, ``length``,
    ``attend``, ``token``): queries shorter than ``length`` are padded with the expansion token to it (``fixed``:
    ``length`` is also their maximum); with ``attend`` false no token attends to the expansion tokens.
    """

    dim: int
    dense: list[DenseSpec] = field(default_factory=list)
    colbert_linear: bool = False
    normalize: bool = True
    skiplist_words: list[str] = field(default_factory=list)
    skiplist_roles: list[str] = field(default_factory=lambda: ["document"])
    similarity: Literal["maxsim", "meanmaxsim"] = "maxsim"
    query_length: int | None = None
    document_length: int | None = None
    expansion: dict[str, Any] | None = None


@dataclass
class TokenClassifierSpec:
    """A score head taken from the LM head's rows for ``tokens`` (vLLM's ``classifier_from_token``)."""

    tokens: list[str]
    method: str  # "from_2_way_softmax" or "no_post_processing"


@dataclass
class ModelConfig:
    """Everything the engine resolved about the model before loading weights."""

    model: str
    model_path: str
    served_model_name: str
    task: str
    architecture: str
    head: Literal["none", "sequence", "decoder_score", "token", "masked_lm"]
    hf_config: Any = field(repr=False)
    pooler_config: PoolerConfig
    pooler_layers: dict[str, PoolerConfig] = field(repr=False, default_factory=dict)
    max_model_len: int = 512
    hidden_size: int = 0
    embedding_dim: int = 0
    num_labels: int = 0
    id2label: dict[int, str] = field(default_factory=dict)
    problem_type: str | None = None
    is_matryoshka: bool = False
    matryoshka_dimensions: list[int] | None = None
    dense: list[DenseSpec] = field(default_factory=list)
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    include_prompt: bool = True  # Sentence-Transformers Pooling: False = prompt tokens are not pooled
    is_sentence_transformer: bool = False
    trust_remote_code: bool = False
    classifier_from_token: TokenClassifierSpec | None = None
    score_template: str | None = None  # "...{query}...{document}...": pairs become one templated text
    # Two-tower image-text models (CLIP, SigLIP): the family, and the vision tower's tokens per image.
    tower: str | None = None
    image_tokens: int = 0
    # What ``embed`` can return; the first is the default (BGE-M3 offers all three from one forward pass).
    outputs: tuple[str, ...] = ("dense",)
    sparse: SparseSpec | None = None
    multi_vector: MultiVectorSpec | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The kinds of input the model embeds."""
        return ("text", "image") if self.tower is not None else ("text",)

    @property
    def default_output(self) -> str:
        return self.outputs[0]

    def require_output(self, output: str) -> None:
        """``ValueError`` naming the model's outputs when it cannot make ``output`` embeddings."""
        if output not in OUTPUT_KINDS:
            raise ValueError(f"Unknown output {output!r}; expected one of {', '.join(OUTPUT_KINDS)}")
        if output not in self.outputs:
            raise ValueError(f'Model "{self.served_model_name}" does not produce {output.replace("_", "-")} '
                             f"embeddings; its outputs: {', '.join(self.outputs)}")

    @property
    def supported_methods(self) -> frozenset[str]:
        """The LLM methods this model can serve."""
        methods = {"encode"}
        if self.task == "embed":
            methods |= {"embed", "score"}
            if "sparse" in self.outputs:
                methods.add("embed_sparse")  # TEI's /embed_sparse
        elif self.task in ("classify", "score"):
            methods.add("classify")
            if self.num_labels == 1:
                methods.add("score")
        elif self.task == "reward":
            methods.add("reward")
        return frozenset(methods)

    def require(self, method: str, caller: str | None = None) -> None:
        """Raise ``ValueError`` naming what the model supports when ``method`` is outside its task."""
        if method not in self.supported_methods:
            raise ValueError(
                f"{caller or method} is not supported by model {self.served_model_name!r} (task={self.task!r}); "
                f"it supports: {', '.join(sorted(self.supported_methods))}"
            )


def is_encoder_only(hf_config: Any) -> bool:
    """BERT-like bidirectional encoders (their own default pooling is CLS)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    archs = getattr(hf_config, "architectures", None) or []
    if any("ForCausalLM" in a for a in archs):
        return False
    return hf_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def architecture_kind(architecture: str) -> Literal["sequence", "token", "reward", "base"]:
    if architecture.endswith("ForSequenceClassification"):
        return "sequence"
    if architecture.endswith("ForTokenClassification"):
        return "token"
    if architecture.endswith(("RewardModel", "ForProcessRewardModel", "ForRewardModel")):
        return "reward"
    return "base"


def resolve_task(requested: str, architecture: str, num_labels: int, problem_type: str | None) -> str:
    """Pick the task for ``task="auto"`` and check an explicit one fits the architecture."""
    if requested not in ("auto", *TASKS):
        raise ValueError(f"Unknown task {requested!r}; expected one of auto, {', '.join(TASKS)}")
    kind = architecture_kind(architecture)
    if requested == "auto":
        if kind == "sequence":
            is_cross_encoder = num_labels == 1 and problem_type != "regression"
            return "score" if is_cross_encoder else "classify"
        if kind in ("token", "reward"):
            return "reward"
        return "embed"
    if requested in ("classify", "score") and kind != "sequence":
        raise ValueError(
            f"task={requested!r} needs a sequence-classification checkpoint "
            f"(architecture ...ForSequenceClassification); {architecture} has no classification head"
        )
    return requested
