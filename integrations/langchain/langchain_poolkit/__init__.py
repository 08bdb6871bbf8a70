"""LangChain integration for poolkit: ``PoolkitEmbeddings``, ``PoolkitReranker``, ``PoolkitFAISS``, and
hybrid (dense + sparse) retrieval with ``PoolkitHybridRetriever`` / ``PoolkitSparseEmbeddings``.

Importing this package loads no model and does not import torch; engines are
loaded when a class is instantiated in-process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._backends import PoolkitBadRequestError, PoolkitServerError
from .embeddings import PoolkitEmbeddings
from .rerankers import PoolkitReranker

if TYPE_CHECKING:
    from .retrievers import PoolkitHybridRetriever, PoolkitSparseEmbeddings
    from .vectorstores import PoolkitFAISS

__version__ = "0.1.0"

__all__ = [
    "PoolkitBadRequestError",
    "PoolkitEmbeddings",
    "PoolkitFAISS",
    "PoolkitHybridRetriever",
    "PoolkitReranker",
    "PoolkitServerError",
    "PoolkitSparseEmbeddings",
]


def __getattr__(name: str) -> Any:
    # The vector store needs faiss; import it only when asked for.
    if name == "PoolkitFAISS":
        from .vectorstores import PoolkitFAISS

        return PoolkitFAISS
    if name in ("PoolkitHybridRetriever", "PoolkitSparseEmbeddings"):  # also need faiss (and scipy)
        from . import retrievers

        return getattr(retrievers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
