"""Output objects returned by the offline API (shaped like vLLM's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


@dataclass
class PoolingOutput:
    """Raw pooler output: a vector, a (tokens × dim) matrix, or class scores."""

    data: torch.Tensor

    def __repr__(self) -> str:
        return f"PoolingOutput(data=tensor(shape={tuple(self.data.shape)}, dtype={self.data.dtype}))"


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)

    def __repr__(self) -> str:
        head = ", ".join(f"{x:.4f}" for x in self.embedding[:4])
        return f"EmbeddingOutput(hidden_size={self.hidden_size}, embedding=[{head}, ...])"


@dataclass
class ClassificationOutput:
    probs: list[float]

    @property
    def num_classes(self) -> int:
        return len(self.probs)

    def __repr__(self) -> str:
        return f"ClassificationOutput(num_classes={self.num_classes}, probs={[round(p, 4) for p in self.probs]})"


@dataclass
class ScoringOutput:
    score: float

    def __repr__(self) -> str:
        return f"ScoringOutput(score={self.score:.6f})"


@dataclass
class RequestOutput(Generic[T]):
    """One prompt's result: ``outputs`` holds the task-specific payload."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: T
    finished: bool = True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(request_id={self.request_id!r}, "
            f"prompt_tokens={len(self.prompt_token_ids)}, outputs={self.outputs!r})"
        )


class PoolingRequestOutput(RequestOutput[PoolingOutput]):
    pass


class EmbeddingRequestOutput(RequestOutput[EmbeddingOutput]):
    pass


class ClassificationRequestOutput(RequestOutput[ClassificationOutput]):
    pass


class ScoringRequestOutput(RequestOutput[ScoringOutput]):
    pass
