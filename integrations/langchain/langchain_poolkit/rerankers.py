"""``PoolkitReranker``: a LangChain document compressor that reorders documents by relevance."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import Field, model_validator

from ._backends import LocalBackend
from ._base import PoolkitClientBase

logger = logging.getLogger("langchain_poolkit")


class PoolkitReranker(PoolkitClientBase, BaseDocumentCompressor):
    """Rerank documents against a query with a poolkit cross-encoder (or cosine, with an embedding model).

    Build it like ``PoolkitEmbeddings``: ``PoolkitReranker(model="path/to/cross-encoder")``,
    ``PoolkitReranker(llm=engine)`` or ``PoolkitReranker(base_url="http://host:port")``
    (uses the server's ``/rerank`` endpoint). With an in-process engine the scores are
    exactly ``LLM.score(query, texts)``.

    ``compress_documents`` returns the ``top_n`` best documents, best first, as new
    ``Document`` objects (same ``id`` and ``page_content``) whose metadata gains
    ``relevance_score``; the input documents are never mutated. Ties keep the input
    order. Use it inside ``ContextualCompressionRetriever``.
    """

    top_n: int | None = Field(default=3)
    """How many documents to keep (``None``: all of them, reordered)."""

    score_threshold: float | None = None
    """Drop documents scoring below this (applied before ``top_n``)."""

    dimensions: int | None = None
    """Embedding models: score by the cosine of vectors cut to this Matryoshka size (the model must support it)."""

    @model_validator(mode="after")
    def _check_scoring(self) -> PoolkitReranker:
        if self.top_n is not None and self.top_n < 0:
            raise ValueError("top_n must be >= 0 or None")
        if isinstance(self.backend, LocalBackend):
            mc = self.backend.llm.model_config
            if "score" not in mc.supported_methods:
                raise ValueError(
                    f"Model {mc.served_model_name!r} (task={mc.task!r}) cannot score query-document pairs: "
                    "use a cross-encoder (one-label sequence classifier) or an embedding model"
                )
            if self.dimensions is not None:
                from poolkit import PoolingParams

                PoolingParams(dimensions=self.dimensions).verify("embed", mc)  # fail at construction, not per call
        return self

    # -- scoring ------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """Relevance score of each text for ``query``, in input order."""
        return self.backend.score(query, list(texts), truncate_prompt_tokens=self.truncate_prompt_tokens,
                                  dimensions=self.dimensions)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        """Async ``score``: never blocks the event loop."""
        return await self.backend.ascore(query, list(texts), truncate_prompt_tokens=self.truncate_prompt_tokens,
                                         dimensions=self.dimensions)

    def rank(self, query: str, texts: Sequence[str]) -> list[tuple[int, float]]:
        """``(index, score)`` pairs, best first, after ``score_threshold`` and ``top_n``."""
        return self._select(self.score(query, texts))

    async def arank(self, query: str, texts: Sequence[str]) -> list[tuple[int, float]]:
        """Async ``rank``."""
        return self._select(await self.ascore(query, texts))

    def _select(self, scores: list[float]) -> list[tuple[int, float]]:
        # sorted() is stable: equal scores keep their input order.
        ranked = sorted(enumerate(scores), key=lambda pair: pair[1], reverse=True)
        if self.score_threshold is not None:
            ranked = [(i, s) for i, s in ranked if s >= self.score_threshold]
        return ranked if self.top_n is None else ranked[: self.top_n]

    @staticmethod
    def _build(documents: Sequence[Document], ranked: list[tuple[int, float]]) -> list[Document]:
        out = []
        for index, score in ranked:
            doc = documents[index]
            out.append(
                Document(
                    page_content=doc.page_content,
                    metadata={**doc.metadata, "relevance_score": float(score)},
                    id=doc.id,
                )
            )
        return out

    # -- BaseDocumentCompressor ---------------------------------------------

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """The ``top_n`` most relevant documents, best first, with ``relevance_score`` in metadata."""
        if not documents:
            return []
        return self._build(documents, self.rank(query, [d.page_content for d in documents]))

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async ``compress_documents``: never blocks the event loop."""
        if not documents:
            return []
        return self._build(documents, await self.arank(query, [d.page_content for d in documents]))

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields["top_n"] = self.top_n
        if self.dimensions is not None:
            fields["dimensions"] = self.dimensions
        if self.score_threshold is not None:
            fields["score_threshold"] = self.score_threshold
        return fields
