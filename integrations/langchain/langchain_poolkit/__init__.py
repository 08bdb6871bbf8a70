"""LangChain integration for poolkit: ``PoolkitEmbeddings``, ``PoolkitReranker`` and ``PoolkitFAISS``.

Importing this package loads no model and does not import torch; engines are
loaded when a class is instantiated in-process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._backends import PoolkitBadRequestError, PoolkitServerError
from .embeddings import PoolkitEmbeddings
from .rerankers import PoolkitReranker

if TYPE_CHECKING:
    from .vectorstores import PoolkitFAISS

__version__ = "0.1.0"

__all__ = [
    "PoolkitBadRequestError",
    "PoolkitEmbeddings",
    "PoolkitFAISS",
    "PoolkitReranker",
    "PoolkitServerError",
]


def __getattr__(name: str) -> Any:
    # The vector store needs faiss; import it only when asked for.
    if name == "PoolkitFAISS":
        from .vectorstores import PoolkitFAISS

        return PoolkitFAISS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
