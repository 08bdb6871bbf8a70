"""poolkit: a fast engine for pooling models (embedders, rerankers, classifiers, reward models)."""

from .config import PoolerConfig, PoolingType
from .engine import LLM
from .loader import DEFAULT_MODEL, default_model_path
from .outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from .params import PoolingParams

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "PoolingParams",
    "PoolerConfig",
    "PoolingType",
    "DEFAULT_MODEL",
    "default_model_path",
    "PoolingOutput",
    "PoolingRequestOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "ClassificationOutput",
    "ClassificationRequestOutput",
    "ScoringOutput",
    "ScoringRequestOutput",
]
