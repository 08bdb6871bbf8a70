"""poolkit: a fast engine for pooling models (embedders, rerankers, classifiers, reward models).

The public names are imported lazily (PEP 562), so that ``import poolkit.params`` or a
server-mode client does not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → the module that defines it
_EXPORTS = {
    "LLM": "engine",
    "EngineArgs": "settings",
    "PoolingParams": "params",
    "PoolerConfig": "config",
    "PoolingType": "config",
    "Tasks": "tasks",
    "PreparedRequest": "tasks",
    "DEFAULT_MODEL": "loader",
    "default_model_path": "loader",
    "PoolingOutput": "outputs",
    "PoolingRequestOutput": "outputs",
    "EmbeddingOutput": "outputs",
    "EmbeddingRequestOutput": "outputs",
    "ClassificationOutput": "outputs",
    "ClassificationRequestOutput": "outputs",
    "ScoringOutput": "outputs",
    "ScoringRequestOutput": "outputs",
    "SparseEmbeddingOutput": "outputs",
    "MultiVectorOutput": "outputs",
}

__all__ = [
    "DEFAULT_MODEL",
    "LLM",
    "ClassificationOutput",
    "ClassificationRequestOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "EngineArgs",
    "MultiVectorOutput",
    "PoolerConfig",
    "PoolingOutput",
    "PoolingParams",
    "PoolingRequestOutput",
    "PoolingType",
    "PreparedRequest",
    "ScoringOutput",
    "ScoringRequestOutput",
    "SparseEmbeddingOutput",
    "Tasks",
    "default_model_path",
]

if TYPE_CHECKING:
    from .config import PoolerConfig, PoolingType
    from .engine import LLM
    from .loader import DEFAULT_MODEL, default_model_path
    from .outputs import (
        ClassificationOutput,
        ClassificationRequestOutput,
        EmbeddingOutput,
        EmbeddingRequestOutput,
        MultiVectorOutput,
        PoolingOutput,
        PoolingRequestOutput,
        ScoringOutput,
        ScoringRequestOutput,
        SparseEmbeddingOutput,
    )
    from .params import PoolingParams
    from .settings import EngineArgs
    from .tasks import PreparedRequest, Tasks


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
