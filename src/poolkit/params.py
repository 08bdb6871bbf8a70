"""Per-request pooling parameters and their validation against the model."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ModelConfig, PoolerConfig

# Which PoolingParams fields make sense for which method.
_APPLICABLE: dict[str, frozenset[str]] = {
    "embed": frozenset({"dimensions", "normalize", "output", "max_active_dims"}),
    "encode": frozenset({"dimensions", "normalize", "activation", "output", "max_active_dims"}),
    "classify": frozenset({"activation"}),
    "score": frozenset({"activation", "output"}),
    "reward": frozenset({"activation"}),
}


def matryoshka_unsupported(name: str) -> str:
    return (
        f'Model "{name}" does not support matryoshka representation, '
        "changing output dimensions will lead to poor results."
    )


def matryoshka_dimension_unsupported(name: str, dims: list[int]) -> str:
    return (
        f'Model "{name}" only supports {dims} matryoshka dimensions, '
        "use other output dimensions will lead to poor results."
    )


@dataclass(frozen=True)
class HeadOptions:
    """The effective per-prompt head settings: the pooler's defaults with the request's PoolingParams over them."""

    normalize: bool
    activation: bool
    dimensions: int | None
    raw: bool = False  # the pooled vector before the head (a chunk of a long input; the head runs after merging)
    output: str = "dense"  # dense, sparse or multi_vector (ModelConfig.outputs)
    role: str = "document"  # query or document: multi-vector skiplists apply per role
    max_active_dims: int | None = None  # sparse: keep only the largest weights


@dataclass(frozen=True)
class PoolingParams:
    """Request-level pooling options, as in vLLM.

    Args:
        dimensions: Matryoshka output size (embedding models that support it);
            the vector is truncated, then re-normalized.
        normalize: override the pooler's L2 normalization for this request.
        activation: override softmax/sigmoid on classifier or reward outputs.
        output: ``"dense"``, ``"sparse"`` or ``"multi_vector"``: which of the model's embeddings to return
            (default: the model's first, e.g. sparse for a SPLADE model, dense for BGE-M3).
        max_active_dims: sparse embeddings: keep only this many largest weights (sentence-transformers' name).
    """

    dimensions: int | None = None
    normalize: bool | None = None
    activation: bool | None = None
    output: str | None = None
    max_active_dims: int | None = None

    def set_fields(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def verify(self, method: str, model_config: ModelConfig) -> None:
        """Raise ``ValueError`` when a field does not apply to ``method`` or the model."""
        not_applicable = [f for f in self.set_fields() if f not in _APPLICABLE[method]]
        if not_applicable:
            raise ValueError(
                f"PoolingParams field(s) {', '.join(not_applicable)} do not apply to "
                f"{method} on a {model_config.task} model"
            )
        name = model_config.served_model_name
        if self.output is not None:
            model_config.require_output(self.output)
        output = self.output or model_config.default_output
        if output != "dense":
            dense_only = {"dimensions": "dimensions (Matryoshka truncation)", "normalize": "normalize"}
            asked = [what for f, what in dense_only.items() if getattr(self, f) is not None]
            if asked:
                raise ValueError(f'Model "{name}" returns {output.replace("_", "-")} embeddings here; '
                                 f"{' and '.join(asked)} apply to dense embeddings only")
        if self.max_active_dims is not None:
            if output != "sparse":
                raise ValueError(f"max_active_dims applies to sparse embeddings; this request returns {output} ones")
            if isinstance(self.max_active_dims, bool) or not isinstance(self.max_active_dims, int) \
                    or self.max_active_dims < 1:
                raise ValueError("max_active_dims must be a positive number of dimensions")
        if self.dimensions is not None:
            if method == "encode" and model_config.task != "embed":
                raise ValueError("PoolingParams field(s) dimensions do not apply to encode on a "
                                 f"{model_config.task} model")
            if not model_config.is_matryoshka:
                raise ValueError(matryoshka_unsupported(name))
            dims = model_config.matryoshka_dimensions
            if dims is not None:
                if self.dimensions not in dims:
                    raise ValueError(matryoshka_dimension_unsupported(name, dims))
            elif self.dimensions < 1:
                raise ValueError("Dimensions must be greater than 0")
            if self.dimensions > model_config.embedding_dim:
                raise ValueError(
                    f"Dimensions must be at most the model's embedding size ({model_config.embedding_dim})"
                )

    def resolve(self, method: str, model_config: ModelConfig) -> HeadOptions:
        """Check these params for ``method`` (``ValueError`` otherwise) and merge them over the pooler's defaults."""
        self.verify(method, model_config)
        pooler: PoolerConfig = model_config.pooler_config
        output = self.output or model_config.default_output
        if output != "dense":
            return HeadOptions(normalize=False, activation=False, dimensions=None, output=output,
                               max_active_dims=self.max_active_dims)
        return HeadOptions(
            normalize=bool(pooler.normalize if self.normalize is None else self.normalize),
            activation=bool(pooler.activation if self.activation is None else self.activation),
            dimensions=self.dimensions if self.dimensions is not None else pooler.dimensions,
        )


def check_truncate_prompt_tokens(value: int | None) -> None:
    """``None`` (never cut), ``-1`` (the model's limit) or a positive number of tokens; ``ValueError`` otherwise.

    The model-independent half of the check (used when a front-end is configured); the engine also
    checks the value against the model's limit per request.
    """
    if value is None or value == -1:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("truncate_prompt_tokens must be -1 (the model's limit) or a positive number of tokens")
