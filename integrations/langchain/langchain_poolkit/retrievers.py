"""Hybrid (dense + sparse) retrieval: ``PoolkitHybridRetriever`` and ``PoolkitSparseEmbeddings``.

Dense embeddings find passages that mean the same thing; sparse (SPLADE-style)
embeddings weigh the query's own tokens and their expansions, and catch exact
names, codes and rare words that dense vectors blur. The retriever searches a
``PoolkitFAISS`` store and a ``poolkit_faiss.SparseIndex`` over the same
documents (same ids), and fuses the two rankings with reciprocal rank fusion
(default) or a weighted sum of min-max normalized scores.

Nothing here imports torch: the sparse model runs in a ``poolkit.LLM`` behind
the backend layer, or in a ``poolkit serve`` process reached over HTTP
(TEI's ``POST /embed_sparse``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from poolkit_faiss import SparseIndex, reciprocal_rank_fusion, weighted_score_fusion
from poolkit_faiss.manifest import read_manifest

from ._backends import LocalBackend, SparseVector, is_llm
from ._base import PoolkitClientBase
from ._prompts import Role, model_prompt
from .vectorstores import PoolkitFAISS

logger = logging.getLogger("langchain_poolkit")

FORMAT_NAME = "langchain-poolkit-hybrid"
FORMAT_VERSION = 1
MANIFEST_FILE = "hybrid_retriever.json"
DENSE_DIR = "dense"
SPARSE_DIR = "sparse"


class PoolkitSparseEmbeddings(PoolkitClientBase):
    """Sparse (SPLADE / BGE-M3 lexical) embeddings from poolkit, in-process or through ``poolkit serve``.

    Built like ``PoolkitEmbeddings``: ``PoolkitSparseEmbeddings(model="path/to/splade")``,
    ``PoolkitSparseEmbeddings(llm=engine)`` or ``PoolkitSparseEmbeddings(base_url="http://host:port")``
    (the server's TEI-compatible ``/embed_sparse``). Each text becomes a
    :class:`~langchain_poolkit._backends.SparseVector` ``(indices, values, dim)``, which
    ``poolkit_faiss.SparseIndex`` accepts as it is.

    Queries and documents get the model's Sentence-Transformers ``"query"`` /
    ``"document"`` prompts when it has them (as ``SparseEncoder.encode_query`` /
    ``encode_document``), or the prompt named by ``query_prompt_name`` /
    ``document_prompt_name``. Over-long texts are cut at the model's limit by default
    (``truncate_prompt_tokens=-1``); a server can only cut there (TEI's ``truncate``).
    """

    dim: int | None = None
    """The vocabulary size. In-process the engine reports it; a server's ``/embed_sparse`` answer does
    not, so set it in server mode (the index needs a fixed dimension)."""

    query_prompt_name: str | None = None
    """Name of the model's prompt for queries (default: its ``"query"`` prompt, if any)."""

    document_prompt_name: str | None = None
    """Name of the model's prompt for documents (default: its ``"document"`` prompt, if any)."""

    chunk_size: int = Field(default=256, gt=0)
    """Texts per engine call or HTTP request."""

    @model_validator(mode="after")
    def _check_sparse(self) -> PoolkitSparseEmbeddings:
        if isinstance(self.backend, LocalBackend):
            supported = getattr(self.backend.llm.model_config, "outputs", None)
            if supported is not None and "sparse" not in supported:
                raise ValueError(
                    f"Model {self.model_name!r} gives no sparse embeddings (its outputs: {', '.join(supported)}): "
                    "use a sparse (SPLADE / BGE-M3) model"
                )
        elif self.truncate_prompt_tokens not in (None, -1):
            raise ValueError("in server mode truncate_prompt_tokens must be -1 or None (TEI's /embed_sparse "
                             "can only cut inputs at the model's limit)")
        return self

    # -- prompts ------------------------------------------------------------

    def _prompt_name(self, role: Role) -> str | None:
        explicit = self.query_prompt_name if role == "query" else self.document_prompt_name
        if explicit is not None:
            return explicit
        source = self.backend.prompt_source()
        if not source.prompts:
            return None  # nothing to choose from; no need to resolve anything
        return model_prompt(source, role, None, None).prompt_name

    async def _aprompt_name(self, role: Role) -> str | None:
        explicit = self.query_prompt_name if role == "query" else self.document_prompt_name
        if explicit is not None:
            return explicit
        source = await self.backend.aprompt_source()
        if not source.prompts:
            return None
        return model_prompt(source, role, None, None).prompt_name

    # -- embedding ----------------------------------------------------------

    def _with_dim(self, vectors: list[SparseVector]) -> list[SparseVector]:
        if self.dim is None:
            return vectors
        for v in vectors:
            if v.dim is not None and v.dim != self.dim:
                raise ValueError(f"the model's sparse vectors have dimension {v.dim}, not dim={self.dim}")
        return [v if v.dim is not None else v._replace(dim=self.dim) for v in vectors]

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """Sparse vectors of ``texts`` (with the document prompt), in input order."""
        texts = list(texts)
        if not texts:
            return []
        name = self._prompt_name("document")
        out: list[SparseVector] = []
        for start in range(0, len(texts), self.chunk_size):
            out += self.backend.embed_sparse(texts[start : start + self.chunk_size],
                                             truncate_prompt_tokens=self.truncate_prompt_tokens, prompt_name=name)
        return self._with_dim(out)

    def embed_query(self, text: str) -> SparseVector:
        """The sparse vector of one query (with the query prompt)."""
        (vector,) = self.backend.embed_sparse([text], truncate_prompt_tokens=self.truncate_prompt_tokens,
                                              prompt_name=self._prompt_name("query"))
        return self._with_dim([vector])[0]

    async def aembed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """Async ``embed_documents``: never blocks the event loop."""
        texts = list(texts)
        if not texts:
            return []
        name = await self._aprompt_name("document")
        out: list[SparseVector] = []
        for start in range(0, len(texts), self.chunk_size):
            out += await self.backend.aembed_sparse(texts[start : start + self.chunk_size],
                                                    truncate_prompt_tokens=self.truncate_prompt_tokens,
                                                    prompt_name=name)
        return self._with_dim(out)

    async def aembed_query(self, text: str) -> SparseVector:
        """Async ``embed_query``."""
        (vector,) = await self.backend.aembed_sparse([text], truncate_prompt_tokens=self.truncate_prompt_tokens,
                                                     prompt_name=await self._aprompt_name("query"))
        return self._with_dim([vector])[0]


def _as_sparse_embeddings(value: Any) -> Any:
    """``sparse_embeddings=`` may be a ``poolkit.LLM``, a server URL or a model path, not only the class."""
    if isinstance(value, PoolkitSparseEmbeddings):
        return value
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            return PoolkitSparseEmbeddings(base_url=value)
        return PoolkitSparseEmbeddings(model=value)
    if is_llm(value):
        return PoolkitSparseEmbeddings(llm=value)
    return value  # pydantic reports the type error


Fusion = Literal["rrf", "weighted"]


class PoolkitHybridRetriever(BaseRetriever):
    """Dense + sparse retrieval over the same documents, fused into one ranking.

    Example::

        from langchain_poolkit import PoolkitEmbeddings, PoolkitFAISS, PoolkitHybridRetriever

        retriever = PoolkitHybridRetriever.from_texts(
            texts, PoolkitEmbeddings(), sparse_embeddings="path/to/splade", metadatas=metas, k=5)
        retriever.invoke("what is reciprocal rank fusion?")
        retriever.save_local("hybrid")
        retriever = PoolkitHybridRetriever.load_local("hybrid", PoolkitEmbeddings(), "path/to/splade")

    Each search takes the ``fetch_k`` best documents from the dense store (cosine
    similarity) and from the sparse index (dot product), fuses them, and returns
    the ``k`` best as new ``Document`` objects whose metadata gains
    ``fusion_score``, ``dense_rank`` / ``sparse_rank`` (1-based place in each list,
    ``None`` when the document was not in that list's ``fetch_k``) and
    ``dense_score`` / ``sparse_score`` (likewise ``None``).

    Fusion (see ``poolkit_faiss.fusion``):

    - ``"rrf"`` (default): ``sum_i w_i / (rrf_k + rank_i)``, ranks from 1; only ranks
      count, so the two score scales never need reconciling.
    - ``"weighted"``: ``sum_i w_i * minmax_i(score_i)`` (``normalize=None``: raw scores).

    ``weights`` is ``(dense, sparse)``. Ties keep first-seen order, dense list first.
    ``k`` and ``fetch_k`` can also be passed per call (``invoke(query, k=3)``).

    Writes (``add_texts`` / ``add_documents`` / ``delete``) go to both indexes under
    one lock, with the same ids; an id already present is replaced in both (upsert),
    as ``PoolkitFAISS`` does. Embedding happens outside the lock.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    vectorstore: PoolkitFAISS
    """The dense store; it also keeps the documents."""

    sparse_embeddings: PoolkitSparseEmbeddings
    """The sparse model (a ``PoolkitSparseEmbeddings``; a ``poolkit.LLM``, server URL or model path is wrapped)."""

    sparse_index: SparseIndex | None = None
    """The sparse vectors, keyed by document id (string ids). ``None``: a new one, filled from the
    documents already in ``vectorstore``."""

    k: int = Field(default=4, ge=1)
    """Documents returned."""

    fetch_k: int = Field(default=20, ge=1)
    """Candidates taken from each of the two indexes before fusing."""

    fusion: Fusion = "rrf"
    """``"rrf"`` (reciprocal rank fusion) or ``"weighted"`` (weighted sum of normalized scores)."""

    rrf_k: float = Field(default=60.0, ge=0)
    """RRF's rank constant."""

    weights: tuple[float, float] = (1.0, 1.0)
    """``(dense, sparse)`` weights, for either fusion."""

    normalize: Literal["minmax", "none"] | None = "minmax"
    """Weighted fusion: how each list's scores are scaled before weighting."""

    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)

    @field_validator("sparse_embeddings", mode="before")
    @classmethod
    def _wrap_sparse_embeddings(cls, value: Any) -> Any:
        return _as_sparse_embeddings(value)

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, value: tuple[float, float]) -> tuple[float, float]:
        if any(w < 0 for w in value) or not any(w > 0 for w in value):
            raise ValueError(f"weights must be >= 0 and not both 0, got {value}")
        return value

    @model_validator(mode="after")
    def _check_indexes(self) -> PoolkitHybridRetriever:
        if self.sparse_index is None:
            self.sparse_index = SparseIndex(self.sparse_embeddings.dim, id_type="str",
                                            model_name=self.sparse_embeddings.model_name)
            documents = self._stored_documents()
            if documents:  # index what the dense store already holds
                logger.info("Embedding %d stored documents for the sparse index", len(documents))
                vectors = self.sparse_embeddings.embed_documents([d.page_content for d in documents])
                self.sparse_index.add(vectors, [str(d.id) for d in documents])
            return self
        if self.sparse_index.id_type != "str":
            raise ValueError("sparse_index must have string ids (id_type='str'), as the vector store's documents")
        index = self.vectorstore.index
        dense_ids = {str(i) for i in index.ids()} if index is not None else set()
        sparse_ids = set(self.sparse_index.ids())
        if dense_ids != sparse_ids:
            diff = sorted(dense_ids ^ sparse_ids)
            raise ValueError(
                f"the vector store and the sparse index disagree on {len(diff)} document ids, e.g. {diff[:3]}"
            )
        return self

    def _stored_documents(self) -> list[Document]:
        index = self.vectorstore.index
        if index is None or len(index) == 0:
            return []
        return self.vectorstore.get_by_ids([str(i) for i in index.ids()])

    def __len__(self) -> int:
        return len(self.vectorstore)

    def __repr__(self) -> str:
        fusion = f"rrf(k={self.rrf_k:g})" if self.fusion == "rrf" else f"weighted(normalize={self.normalize!r})"
        return (f"PoolkitHybridRetriever(n={len(self)}, k={self.k}, fetch_k={self.fetch_k}, fusion={fusion}, "
                f"weights={self.weights}, dense={self.vectorstore!r}, sparse={self.sparse_index!r})")

    @property
    def _sparse(self) -> SparseIndex:
        assert self.sparse_index is not None  # set by the validator
        return self.sparse_index

    # -- writing ------------------------------------------------------------

    def _write(self, texts: list[str], metas: list[dict], keys: list[str], dense: list[list[float]],
               sparse: list[SparseVector]) -> list[str]:
        if not texts:
            return []
        # A repeated id within one call: the last occurrence wins, as in PoolkitFAISS.
        last = {key: pos for pos, key in enumerate(keys)}
        keep = sorted(last.values())
        try:
            matrix = self._sparse.prepare([sparse[i] for i in keep])  # validate before writing anything
        except ValueError as exc:
            if self._sparse.dim is None and "no dimension" in str(exc):
                raise ValueError(f"{exc}; with a server, set PoolkitSparseEmbeddings(dim=<vocabulary size>)") from exc
            raise
        with self._lock:
            self.vectorstore.add_embeddings(zip(texts, dense), metas, ids=keys)
            self._sparse.upsert(matrix, [keys[i] for i in keep])
        return keys

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Embed texts with both models and store them in both indexes; returns the ids (upsert semantics)."""
        texts, metas, keys = PoolkitFAISS._normalize_inputs(texts, metadatas, ids)  # ids made here: both indexes share them
        if not texts:
            return []
        sparse = self.sparse_embeddings.embed_documents(texts)
        dense = self.vectorstore.embeddings.embed_documents(texts)
        return self._write(texts, metas, keys, dense, sparse)

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Async ``add_texts``: both models embed concurrently; the indexes are written in a worker thread."""
        texts, metas, keys = PoolkitFAISS._normalize_inputs(texts, metadatas, ids)  # ids made here: both indexes share them
        if not texts:
            return []
        dense, sparse = await asyncio.gather(self.vectorstore.embeddings.aembed_documents(texts),
                                             self.sparse_embeddings.aembed_documents(texts))
        return await asyncio.to_thread(self._write, texts, metas, keys, dense, sparse)

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Store documents; ids come from ``ids=`` or each ``Document.id`` (else new UUIDs)."""
        ids = kwargs.pop("ids", None) or [d.id for d in documents]
        return self.add_texts([d.page_content for d in documents], [d.metadata for d in documents], ids=ids)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None) or [d.id for d in documents]
        return await self.aadd_texts([d.page_content for d in documents], [d.metadata for d in documents], ids=ids)

    def delete(self, ids: list[str] | None = None) -> bool:
        """Delete these ids from both indexes (missing ones are ignored); ``None`` deletes everything."""
        with self._lock:
            keys = [str(i) for i in (self._sparse.ids() if ids is None else ids)]
            self.vectorstore.delete(None if ids is None else keys)
            self._sparse.delete(keys)
        return True

    async def adelete(self, ids: list[str] | None = None) -> bool:
        return await asyncio.to_thread(self.delete, ids)

    # -- searching ----------------------------------------------------------

    def _limits(self, kwargs: dict[str, Any]) -> tuple[int, int]:
        k = int(kwargs.get("k", self.k))
        fetch_k = max(int(kwargs.get("fetch_k", self.fetch_k)), k)  # fewer candidates than results is pointless
        if k < 1:
            raise ValueError("k must be >= 1")
        return k, fetch_k

    def _sparse_search(self, vector: SparseVector, fetch_k: int) -> list[tuple[str, float]]:
        with self._lock:
            if len(self._sparse) == 0:
                return []
            return [(str(key), score) for key, score in self._sparse.search(vector, fetch_k).rows()[0]]

    def _fuse(self, dense: list[tuple[Document, float]], sparse: list[tuple[str, float]], k: int) -> list[Document]:
        dense_list = [(str(doc.id), float(score)) for doc, score in dense]
        if self.fusion == "rrf":
            fused = reciprocal_rank_fusion([dense_list, sparse], k=self.rrf_k, weights=self.weights, limit=k)
        else:
            fused = weighted_score_fusion([dense_list, sparse], self.weights, normalize=self.normalize, limit=k)
        dense_at = {key: (rank, score) for rank, (key, score) in enumerate(dense_list, start=1)}
        sparse_at = {key: (rank, score) for rank, (key, score) in enumerate(sparse, start=1)}
        docs = {str(doc.id): doc for doc, _ in dense}
        missing = [str(key) for key, _ in fused if str(key) not in docs]
        if missing:  # sparse-only hits: their documents come from the store
            docs.update({str(d.id): d for d in self.vectorstore.get_by_ids(missing)})
        out = []
        for key, score in fused:
            doc = docs.get(str(key))
            if doc is None:  # written to one index but not yet the other: not a result
                logger.warning("document %r is in the sparse index but not in the vector store; skipped", key)
                continue
            d_rank, d_score = dense_at.get(str(key), (None, None))
            s_rank, s_score = sparse_at.get(str(key), (None, None))
            metadata = {**doc.metadata, "fusion_score": float(score), "dense_rank": d_rank, "sparse_rank": s_rank,
                        "dense_score": d_score, "sparse_score": s_score}
            out.append(Document(id=doc.id, page_content=doc.page_content, metadata=metadata))
        return out

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, fetch_k = self._limits(kwargs)
        dense = self.vectorstore.similarity_search_with_score(query, k=fetch_k)
        sparse = self._sparse_search(self.sparse_embeddings.embed_query(query), fetch_k)
        return self._fuse(dense, sparse, k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, fetch_k = self._limits(kwargs)
        dense, vector = await asyncio.gather(self.vectorstore.asimilarity_search_with_score(query, k=fetch_k),
                                             self.sparse_embeddings.aembed_query(query))
        sparse = await asyncio.to_thread(self._sparse_search, vector, fetch_k)
        return self._fuse(dense, sparse, k)

    # -- construction -------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        sparse_embeddings: Any,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        vectorstore_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> PoolkitHybridRetriever:
        """A new retriever over ``texts``: an exact ``PoolkitFAISS`` (or one built with ``vectorstore_kwargs``,
        e.g. ``dimension=`` or a memory plan) and a new ``SparseIndex``. ``kwargs`` are retriever fields."""
        store = PoolkitFAISS(embedding, **(vectorstore_kwargs or {}))
        retriever = cls(vectorstore=store, sparse_embeddings=sparse_embeddings, **kwargs)
        retriever.add_texts(texts, metadatas, ids=ids)
        return retriever

    @classmethod
    def from_documents(cls, documents: list[Document], embedding: Embeddings, sparse_embeddings: Any,
                       **kwargs: Any) -> PoolkitHybridRetriever:
        """``from_texts`` over documents (their ``id`` is kept when set)."""
        ids = kwargs.pop("ids", None) or [d.id for d in documents]
        return cls.from_texts([d.page_content for d in documents], embedding, sparse_embeddings,
                              [d.metadata for d in documents], ids=ids, **kwargs)

    # -- persistence --------------------------------------------------------

    def save_local(self, folder_path: str | os.PathLike[str]) -> Path:
        """Write ``dense/`` (``PoolkitFAISS.save_local``: faiss index, JSON manifest, documents as JSON Lines),
        ``sparse/`` (``SparseIndex.save``: npz + JSON) and ``hybrid_retriever.json`` (the settings). No pickle."""
        folder = Path(folder_path)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:  # both halves from the same moment
            self.vectorstore.save_local(folder, index_name=DENSE_DIR)
            self._sparse.save(folder / SPARSE_DIR)
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "n_documents": len(self.vectorstore),
                "settings": {"k": self.k, "fetch_k": self.fetch_k, "fusion": self.fusion, "rrf_k": self.rrf_k,
                             "weights": list(self.weights), "normalize": self.normalize},
                "sparse_model": self.sparse_embeddings.model_name,
                "sparse_dim": self._sparse.dim,
                "dirs": {"dense": DENSE_DIR, "sparse": SPARSE_DIR},
            }
            tmp = folder / (MANIFEST_FILE + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, folder / MANIFEST_FILE)
        return folder

    @classmethod
    def load_local(cls, folder_path: str | os.PathLike[str], embeddings: Embeddings, sparse_embeddings: Any,
                   **kwargs: Any) -> PoolkitHybridRetriever:
        """Read a retriever written by ``save_local``; ``kwargs`` override the saved settings (``k``, ``fusion``...)."""
        folder = Path(folder_path)
        manifest = read_manifest(folder / MANIFEST_FILE, FORMAT_NAME, FORMAT_VERSION, "PoolkitHybridRetriever")
        sparse_embeddings = _as_sparse_embeddings(sparse_embeddings)
        if isinstance(sparse_embeddings, PoolkitSparseEmbeddings) and \
                sparse_embeddings.model_name != manifest.get("sparse_model"):
            logger.warning("the sparse index was built with %r; loading it with %r",
                           manifest.get("sparse_model"), sparse_embeddings.model_name)
        store = PoolkitFAISS.load_local(folder, embeddings, index_name=manifest["dirs"]["dense"])
        sparse = SparseIndex.load(folder / manifest["dirs"]["sparse"])
        settings = {**manifest["settings"], **kwargs}
        settings["weights"] = tuple(settings["weights"])
        return cls(vectorstore=store, sparse_embeddings=sparse_embeddings, sparse_index=sparse, **settings)


__all__ = ["PoolkitHybridRetriever", "PoolkitSparseEmbeddings", "SparseVector"]
