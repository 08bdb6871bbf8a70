"""Output objects of every front-end (shaped like vLLM's), backed by float32 NumPy arrays.

The task layer builds them; the offline API returns them as they are, and the
server and integrations read the arrays (``numpy()``) without ever touching
torch. vLLM's attributes are kept: ``EmbeddingOutput.embedding`` and
``ClassificationOutput.probs`` are lists of floats, ``PoolingOutput.data`` is a
``torch.Tensor`` (sharing the array's memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass(eq=False)
class PoolingOutput:
    """Raw pooler output: a vector, a (tokens × dim) matrix, or class scores."""

    array: np.ndarray

    @property
    def data(self) -> torch.Tensor:
        """The output as a tensor (vLLM's attribute; shares memory with :meth:`numpy`)."""
        import torch

        return torch.from_numpy(self.array)

    def numpy(self) -> np.ndarray:
        return self.array

    def __repr__(self) -> str:
        return f"PoolingOutput(data=array(shape={tuple(self.array.shape)}, dtype={self.array.dtype}))"


@dataclass(eq=False)
class EmbeddingOutput:
    """One embedding vector."""

    array: np.ndarray

    @cached_property
    def embedding(self) -> list[float]:
        return self.array.tolist()

    @property
    def hidden_size(self) -> int:
        return int(self.array.shape[-1])

    def numpy(self) -> np.ndarray:
        """The vector as float32 (no copy)."""
        return self.array

    def __repr__(self) -> str:
        head = ", ".join(f"{x:.4f}" for x in self.array[:4])
        return f"EmbeddingOutput(hidden_size={self.hidden_size}, embedding=[{head}, ...])"


@dataclass(eq=False)
class SparseEmbeddingOutput:
    """A sparse (SPLADE / lexical) embedding: the non-zero dimensions of a vocabulary-size vector.

    ``indices`` (int64, ascending) are token ids, ``values`` (float32) their weights, ``dim`` the vocabulary
    size; :meth:`to_dense` gives the full vector, ``embedding`` the ``{index: value}`` mapping.
    """

    indices: np.ndarray
    values: np.ndarray
    dim: int

    @classmethod
    def from_dense(cls, vector: np.ndarray) -> SparseEmbeddingOutput:
        (indices,) = np.nonzero(vector)
        return cls(indices.astype(np.int64), vector[indices].astype(np.float32), int(vector.shape[-1]))

    @cached_property
    def embedding(self) -> dict[int, float]:
        return dict(zip(self.indices.tolist(), self.values.tolist()))

    @property
    def num_active_dims(self) -> int:
        return int(self.indices.size)

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.dim, dtype=np.float32)
        dense[self.indices] = self.values
        return dense

    def numpy(self) -> np.ndarray:
        """The dense vocabulary-size vector (a new array)."""
        return self.to_dense()

    def __repr__(self) -> str:
        top = np.argsort(-self.values)[:4]
        head = ", ".join(f"{int(self.indices[i])}: {self.values[i]:.4f}" for i in top)
        return f"SparseEmbeddingOutput(dim={self.dim}, active={self.num_active_dims}, top={{{head}}})"


@dataclass(eq=False)
class MultiVectorOutput:
    """Per-token vectors of a late-interaction (ColBERT-style) model: a ``(tokens, dim)`` matrix."""

    array: np.ndarray

    @cached_property
    def embedding(self) -> list[list[float]]:
        return self.array.tolist()

    @property
    def num_vectors(self) -> int:
        return int(self.array.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.array.shape[-1])

    def numpy(self) -> np.ndarray:
        return self.array

    def __repr__(self) -> str:
        return f"MultiVectorOutput(num_vectors={self.num_vectors}, hidden_size={self.hidden_size})"


def embedding_output(array: np.ndarray, kind: str = "dense") -> EmbeddingOutput | SparseEmbeddingOutput | MultiVectorOutput:
    """The output object for an embedding of ``kind`` (``dense``, ``sparse``: a vocabulary-size array, or
    ``multi_vector``: a ``(tokens, dim)`` array)."""
    if kind == "sparse":
        return SparseEmbeddingOutput.from_dense(array)
    if kind == "multi_vector":
        return MultiVectorOutput(array)
    return EmbeddingOutput(array)


@dataclass(eq=False)
class ClassificationOutput:
    """Class probabilities (or raw logits when activation is off) and the best label."""

    array: np.ndarray
    label: str | None = None

    @cached_property
    def probs(self) -> list[float]:
        return self.array.tolist()

    @property
    def num_classes(self) -> int:
        return int(self.array.size)

    def numpy(self) -> np.ndarray:
        return self.array

    def __repr__(self) -> str:
        return (f"ClassificationOutput(num_classes={self.num_classes}, label={self.label!r}, "
                f"probs={[round(p, 4) for p in self.probs]})")


@dataclass
class ScoringOutput:
    score: float

    def __repr__(self) -> str:
        return f"ScoringOutput(score={self.score:.6f})"


@dataclass(eq=False)
class RequestOutput(Generic[T]):
    """One prompt's result: ``outputs`` holds the task-specific payload.

    ``prompt_token_ids`` are the prompt's tokens (after truncation);
    ``num_input_tokens`` counts them before truncation, so ``truncated`` tells
    whether it was cut without tokenizing again; ``num_processed_tokens`` counts
    what the model ran (more than the prompt when a long input was processed in
    chunks: special tokens re-added, overlaps).
    """

    request_id: str
    prompt_token_ids: list[int]
    outputs: T
    num_input_tokens: int = -1
    finished: bool = True
    num_processed_tokens: int = -1

    def __post_init__(self) -> None:
        if self.num_input_tokens < 0:
            self.num_input_tokens = len(self.prompt_token_ids)
        if self.num_processed_tokens < 0:
            self.num_processed_tokens = len(self.prompt_token_ids)

    @property
    def truncated(self) -> bool:
        return self.num_input_tokens > len(self.prompt_token_ids)

    def __repr__(self) -> str:
        cut = f", truncated from {self.num_input_tokens}" if self.truncated else ""
        return (
            f"{type(self).__name__}(request_id={self.request_id!r}, "
            f"prompt_tokens={len(self.prompt_token_ids)}{cut}, outputs={self.outputs!r})"
        )


class PoolingRequestOutput(RequestOutput[PoolingOutput]):
    pass


class EmbeddingRequestOutput(RequestOutput[EmbeddingOutput | SparseEmbeddingOutput | MultiVectorOutput]):
    """``outputs`` is an :class:`EmbeddingOutput` (dense), a :class:`SparseEmbeddingOutput` or a
    :class:`MultiVectorOutput`, as the model (and the request's ``PoolingParams.output``) says."""


class ClassificationRequestOutput(RequestOutput[ClassificationOutput]):
    pass


class ScoringRequestOutput(RequestOutput[ScoringOutput]):
    pass
