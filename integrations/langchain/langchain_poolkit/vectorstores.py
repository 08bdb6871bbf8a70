"""``PoolkitFAISS``: a LangChain ``VectorStore`` over ``poolkit_faiss.VectorIndex``.

Vectors live in a poolkit_faiss index (cosine similarity: inner product of
L2-normalized vectors; the index family and Matryoshka dimension may come from
a memory-budget plan); documents live in an in-memory docstore keyed by the
same string ids. ``save_local`` writes the faiss index (``faiss.write_index``),
the index's JSON manifest and npz id table, and the documents as JSON Lines:
nothing is pickled, so ``load_local`` needs no ``allow_dangerous_deserialization``.

Images (``add_images``, with an image-capable embedding such as ``PoolkitEmbeddings``
over CLIP / SigLIP) are stored like texts: a ``Document`` whose ``page_content`` is the
image's uri, found by text queries in the model's shared text-image space.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

logger = logging.getLogger("langchain_poolkit")

FORMAT_NAME = "langchain-poolkit-faiss"
FORMAT_VERSION = 1
MANIFEST_FILE = "langchain_poolkit.json"
DOCSTORE_FILE = "docstore.jsonl"

MetadataFilter = dict[str, Any] | Callable[[dict[str, Any]], bool]


def _cosine_to_relevance(score: float) -> float:
    """Cosine similarity in [-1, 1] → relevance in [0, 1]."""
    return min(1.0, max(0.0, (1.0 + score) / 2.0))


def _matches(metadata: dict[str, Any], flt: MetadataFilter | None) -> bool:
    if flt is None:
        return True
    if callable(flt):
        return bool(flt(metadata))
    for key, wanted in flt.items():
        value = metadata.get(key)
        if isinstance(wanted, (list, tuple, set)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True


def _engine_of(embedding: Embeddings) -> Any:
    """The in-process ``poolkit.LLM`` behind a ``PoolkitEmbeddings`` (else ``None``)."""
    from ._backends import LocalBackend
    from .embeddings import PoolkitEmbeddings

    if isinstance(embedding, PoolkitEmbeddings) and isinstance(embedding.backend, LocalBackend):
        return embedding.backend.llm
    return None


def _image_embedder(embedding: Embeddings) -> Callable[[list[str]], list[list[float]]]:
    """``embedding.embed_image`` (LangChain's name for it, as in ``OpenCLIPEmbeddings``), or a clear refusal."""
    embed_image = getattr(embedding, "embed_image", None)
    if not callable(embed_image):
        raise ValueError(
            f"{type(embedding).__name__} cannot embed images (it has no embed_image method): use an image-capable "
            "embedding, e.g. PoolkitEmbeddings over an image-text model (CLIP, SigLIP)"
        )
    return embed_image


def _model_name_of(embedding: Embeddings) -> str | None:
    from .embeddings import PoolkitEmbeddings

    return embedding.model_name if isinstance(embedding, PoolkitEmbeddings) else type(embedding).__name__


class PoolkitFAISS(VectorStore):
    """A FAISS vector store built on ``poolkit_faiss`` (cosine similarity, string ids, no pickle).

    Example::

        from langchain_poolkit import PoolkitEmbeddings, PoolkitFAISS

        emb = PoolkitEmbeddings()
        store = PoolkitFAISS.from_texts(texts, emb, metadatas=metas, ids=ids)
        store.similarity_search("how do I pool embeddings?", k=4)
        store.save_local("my_index")
        store = PoolkitFAISS.load_local("my_index", emb)

    The index is exact (``Flat``) unless a plan is given: ``plan=`` an
    ``IndexPlan``, or ``memory_budget_bytes=`` with ``n_vectors=`` (the expected
    corpus size), which asks ``poolkit_faiss.plan_index`` for the index family
    and Matryoshka dimension; ``dimension=`` alone stores Matryoshka-truncated
    vectors exactly. Plan arguments such as ``min_recall``, ``prefer``, ``exclude``
    or ``is_matryoshka`` are passed through. With an in-process
    ``PoolkitEmbeddings`` the planner reads Matryoshka support from the engine.

    All texts are embedded by ``embedding``: stored texts (and MMR candidates) with
    ``embed_documents``, searches with ``embed_query``, so a ``PoolkitEmbeddings``
    applies the model's document and query prompts (Sentence-Transformers
    ``encode_document`` / ``encode_query``) without anything set here.

    Images go in with ``add_images(uris)`` (as in langchain_chroma's ``Chroma``), embedded by
    ``embedding.embed_image``: each is a ``Document`` whose ``page_content`` is its uri (a file
    path or a ``data:`` / ``http(s)`` URL; Chroma stores the file's base64 there instead), so
    ``similarity_search("a red circle")`` returns the images whose vectors are closest to the
    text's. MMR re-embeds image candidates with ``embed_image``.

    Scores from ``similarity_search_with_score`` are cosine similarities (higher is
    closer); relevance scores map them to [0, 1] as ``(1 + cos) / 2``.
    ``add_texts``/``add_documents`` with an id already present replace that document
    (upsert); ``delete`` ignores missing ids. Thread-safe: index and docstore
    changes happen under one lock; embedding runs outside it.
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        plan: Any = None,
        memory_budget_bytes: float | None = None,
        n_vectors: int | None = None,
        dimension: int | None = None,
        relevance_score_fn: Callable[[float], float] | None = None,
        use_gpu: bool | None = None,
        index: Any = None,
        docstore: dict[str, Document] | None = None,
        image_ids: Iterable[str] | None = None,
        **plan_kwargs: Any,
    ) -> None:
        if not isinstance(embedding, Embeddings):
            raise TypeError(f"embedding must be a langchain Embeddings, got {type(embedding).__name__}")
        self.embedding = embedding
        self.relevance_score_fn = relevance_score_fn
        self.use_gpu = use_gpu
        self._lock = threading.RLock()
        self._index = index
        self._docs: dict[str, Document] = dict(docstore or {})
        # Ids whose page_content is an image uri (add_images): MMR must re-embed those as images, not as text.
        self._image_ids: set[str] = set(image_ids or ()) & set(self._docs)
        self._plan_request = {
            "memory_budget_bytes": memory_budget_bytes,
            "n_vectors": n_vectors,
            "dimension": dimension,
            **plan_kwargs,
        }
        if plan is not None and (memory_budget_bytes is not None or dimension is not None or plan_kwargs):
            raise ValueError(
                "Pass plan= or planning arguments (memory_budget_bytes, n_vectors, dimension, ...), not both"
            )
        if memory_budget_bytes is None and plan_kwargs:
            raise TypeError(
                f"Unexpected argument(s) {sorted(plan_kwargs)} (planning arguments need memory_budget_bytes=)"
            )
        self._plan = plan
        if self._index is None and self._plan is None and (memory_budget_bytes is not None or dimension is not None):
            self._plan = self._make_plan(n_vectors)
        if self._index is not None and len(self._index) != len(self._docs):
            raise ValueError(f"index holds {len(self._index)} vectors but the docstore {len(self._docs)} documents")

    # -- planning -----------------------------------------------------------

    def _make_plan(self, n_vectors: int | None, full_dimension: int | None = None) -> Any:
        """Plan from the construction arguments (budget and/or Matryoshka dimension)."""
        from poolkit_faiss import model_info, plan_for, plan_index

        request = dict(self._plan_request)
        budget = request.pop("memory_budget_bytes")
        request.pop("n_vectors")
        dimension = request.pop("dimension")
        llm = _engine_of(self.embedding)
        name = _model_name_of(self.embedding)
        if dimension is None:
            # Embeddings that already return Matryoshka-truncated vectors fix the index dimension.
            dimension = getattr(self.embedding, "dimensions", None)
        if budget is not None:
            if not n_vectors:
                raise ValueError("memory_budget_bytes= needs n_vectors= (the expected corpus size) to plan the index")
            if llm is None:
                full = full_dimension or self._probe_dimension()
                if dimension is not None and dimension != full:
                    raise ValueError(
                        "dimension= together with memory_budget_bytes= needs an in-process PoolkitEmbeddings "
                        "(the engine knows the Matryoshka dimensions); otherwise pass is_matryoshka=True or "
                        "matryoshka_dimensions=[...] and let the planner choose"
                    )
                request["dimension"] = full
                request.setdefault("model_name", name)
            elif dimension is not None:
                request["dimension"] = dimension
            plan = plan_index(n_vectors, budget, llm=llm, **request)
        else:
            if llm is not None:
                info = model_info(llm, dimension=dimension)
            else:
                full = full_dimension or self._probe_dimension()
                info = model_info(dimension=full, model_name=name)
                if dimension != full:
                    from poolkit.params import matryoshka_unsupported

                    raise ValueError(matryoshka_unsupported(name or "embeddings"))
            plan = plan_for(
                "flat",
                n_vectors or 0,
                dimension,
                model_dimension=info.dimension,
                matryoshka=dimension < info.dimension,
                model_name=info.name,
            )
        logger.info("PoolkitFAISS index plan:\n%s", plan.describe())
        return plan

    def _probe_dimension(self) -> int:
        return len(self.embedding.embed_query("dimension probe"))

    @property
    def plan(self) -> Any:
        """The ``poolkit_faiss.IndexPlan`` in use (``None`` until the first vectors, for the default)."""
        return self._index.plan if self._index is not None else self._plan

    @property
    def index(self) -> Any:
        """The underlying ``poolkit_faiss.VectorIndex`` (``None`` while empty and unplanned)."""
        return self._index

    def _ensure_index(self, vectors: np.ndarray) -> Any:
        """Create the index on first use, training it on ``vectors`` when the plan needs it."""
        from poolkit_faiss import VectorIndex, plan_for

        if self._index is not None:
            return self._index
        plan = self._plan
        if plan is None:
            plan = plan_for("flat", len(vectors), int(vectors.shape[1]), model_name=_model_name_of(self.embedding))
        self._index = VectorIndex(plan, id_type="str", use_gpu=self.use_gpu)
        return self._index

    # -- VectorStore: basics -------------------------------------------------

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    def __len__(self) -> int:
        return len(self._docs)

    def __repr__(self) -> str:
        plan = self.plan
        where = repr(plan) if plan is not None else "exact Flat, created on first add"
        return f"PoolkitFAISS(n={len(self)}, index={where}, embedding={self.embedding!r})"

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return self.relevance_score_fn or _cosine_to_relevance

    # -- writing ------------------------------------------------------------

    @staticmethod
    def _normalize_inputs(
        texts: Iterable[str], metadatas: list[dict] | None, ids: Sequence[str | None] | None
    ) -> tuple[list[str], list[dict], list[str]]:
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"Got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"Got {len(ids)} ids for {len(texts)} texts")
        metas = [dict(m or {}) for m in metadatas] if metadatas is not None else [{} for _ in texts]
        keys = [str(i) if i is not None else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
        return texts, metas, keys

    def _write(self, texts: list[str], metas: list[dict], keys: list[str], vectors: list[list[float]],
               *, images: bool = False) -> list[str]:
        """Upsert documents and their vectors; ``images``: the texts are image uris (see ``add_images``)."""
        if not texts:
            return []
        # A repeated id within one call: the last occurrence wins (as sequential upserts would).
        last = {key: pos for pos, key in enumerate(keys)}
        keep = sorted(last.values())
        x = np.asarray([vectors[i] for i in keep], dtype=np.float32)
        kept_keys = [keys[i] for i in keep]
        with self._lock:
            index = self._ensure_index(x)
            index.upsert(x, kept_keys)
            for i in keep:
                self._docs[keys[i]] = Document(id=keys[i], page_content=texts[i], metadata=copy.deepcopy(metas[i]))
            if images:
                self._image_ids.update(kept_keys)
            else:
                self._image_ids.difference_update(kept_keys)
        return keys

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store texts; an id already present is replaced (upsert). Returns the ids."""
        texts, metas, keys = self._normalize_inputs(texts, metadatas, ids)
        vectors = self.embedding.embed_documents(texts) if texts else []
        return self._write(texts, metas, keys, vectors)

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Async ``add_texts``: embeds with ``aembed_documents``, writes the index in a worker thread."""
        texts, metas, keys = self._normalize_inputs(texts, metadatas, ids)
        vectors = await self.embedding.aembed_documents(texts) if texts else []
        return await asyncio.to_thread(self._write, texts, metas, keys, vectors)

    def add_images(
        self,
        uris: list[str],
        metadatas: list[dict] | None = None,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed images with ``embedding.embed_image`` and store them; returns the ids.

        As langchain_chroma's ``Chroma.add_images``: ``uris`` are image file paths (here also ``data:`` /
        ``http(s)`` URLs, as ``PoolkitEmbeddings.embed_image`` takes them), each stored as a ``Document``
        whose ``page_content`` is the uri (Chroma stores the file's base64 instead) with its metadata.
        An id already present is replaced (upsert). Text queries (``similarity_search``) then find
        images by their shared text-image vectors.
        """
        uris = [os.fspath(uri) for uri in uris]
        embed_image = _image_embedder(self.embedding)
        uris, metas, keys = self._normalize_inputs(uris, metadatas, ids)
        vectors = embed_image(uris) if uris else []
        return self._write(uris, metas, keys, vectors, images=True)

    async def aadd_images(
        self,
        uris: list[str],
        metadatas: list[dict] | None = None,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Async ``add_images``: embeds with ``aembed_image`` when the embedding has it (else in a worker thread)."""
        uris = [os.fspath(uri) for uri in uris]
        embed_image = _image_embedder(self.embedding)
        uris, metas, keys = self._normalize_inputs(uris, metadatas, ids)
        if not uris:
            return []
        aembed_image = getattr(self.embedding, "aembed_image", None)
        vectors = await aembed_image(uris) if callable(aembed_image) else await asyncio.to_thread(embed_image, uris)
        return await asyncio.to_thread(self._write, uris, metas, keys, vectors, images=True)

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Store documents; ids come from ``ids=`` or each ``Document.id`` (else new UUIDs)."""
        ids = kwargs.pop("ids", None)
        if ids is None:
            ids = [doc.id for doc in documents]
        return self.add_texts([d.page_content for d in documents], [d.metadata for d in documents], ids=ids, **kwargs)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None)
        if ids is None:
            ids = [doc.id for doc in documents]
        return await self.aadd_texts(
            [d.page_content for d in documents], [d.metadata for d in documents], ids=ids, **kwargs
        )

    def add_embeddings(
        self,
        text_embeddings: Iterable[tuple[str, list[float]]],
        metadatas: list[dict] | None = None,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store texts with precomputed vectors (as langchain_community's FAISS)."""
        pairs = list(text_embeddings)
        texts, metas, keys = self._normalize_inputs([t for t, _ in pairs], metadatas, ids)
        return self._write(texts, metas, keys, [list(v) for _, v in pairs])

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete these ids (missing ones are ignored); ``ids=None`` deletes everything."""
        with self._lock:
            if ids is None:
                if self._index is not None:
                    self._index.delete(list(self._docs))
                self._docs.clear()
                self._image_ids.clear()
                return True
            keys = [str(i) for i in ids]
            if self._index is not None:
                self._index.delete(keys)
            for key in keys:
                self._docs.pop(key, None)
                self._image_ids.discard(key)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return await asyncio.to_thread(self.delete, ids, **kwargs)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents for the ids found, in the order asked; missing ids are skipped."""
        with self._lock:
            return [self._copy(self._docs[str(i)]) for i in ids if str(i) in self._docs]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return self.get_by_ids(ids)  # a dict lookup: no need for a thread

    @staticmethod
    def _copy(doc: Document) -> Document:
        return Document(id=doc.id, page_content=doc.page_content, metadata=copy.deepcopy(doc.metadata))

    # -- searching ----------------------------------------------------------

    def _search(
        self, vector: Sequence[float], k: int, filter: MetadataFilter | None = None, fetch_k: int = 20
    ) -> list[tuple[Document, float]]:
        if k < 1:
            return []
        with self._lock:
            index = self._index
            if index is None or len(index) == 0:
                return []
            total = len(index)
            want = min(k if filter is None else max(k, fetch_k), total)
            while True:
                rows = index.search(np.asarray([vector], dtype=np.float32), want).rows()[0]
                hits = [(self._docs[key], score) for key, score in rows if key in self._docs]
                hits = [(d, s) for d, s in hits if _matches(d.metadata, filter)]
                if len(hits) >= k or want >= total:
                    break
                want = min(want * 4, total)
            return [(self._copy(d), float(s)) for d, s in hits[:k]]

    def similarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: MetadataFilter | None = None,
        fetch_k: int = 20,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Top-k documents and their cosine similarity to ``embedding``.

        ``filter``: a dict of metadata values (a list value means "any of") or a
        callable on the metadata; ``fetch_k`` candidates are fetched first
        (more, if the filter leaves fewer than ``k``).
        """
        return self._search(embedding, k, filter, fetch_k)

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, fetch_k: int = 20, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Top-k documents for ``query`` with cosine similarities (higher is closer)."""
        return self._search(self.embedding.embed_query(query), k, filter, fetch_k)

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: MetadataFilter | None = None,
        fetch_k: int = 20,
        **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in self._search(embedding, k, filter, fetch_k)]

    def similarity_search(
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, fetch_k: int = 20, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents most similar to ``query``."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, fetch_k)]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, fetch_k: int = 20, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        vector = await self.embedding.aembed_query(query)
        return await asyncio.to_thread(self._search, vector, k, filter, fetch_k)

    async def asimilarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: MetadataFilter | None = None,
        fetch_k: int = 20,
        **kwargs: Any,
    ) -> list[Document]:
        return [doc for doc, _ in await asyncio.to_thread(self._search, embedding, k, filter, fetch_k)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: MetadataFilter | None = None, fetch_k: int = 20, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter, fetch_k)]

    # -- MMR ------------------------------------------------------------------

    def _prepare(self, vectors: Any) -> np.ndarray:
        """Vectors as the index compares them (Matryoshka-truncated, L2-normalized)."""
        from poolkit_faiss import prepare_vectors

        plan = self.plan
        x = np.asarray(vectors, dtype=np.float32)
        if plan is None:
            return prepare_vectors(x, x.shape[-1], matryoshka=False)
        return prepare_vectors(x, plan.dimension, matryoshka=plan.matryoshka, model_name=plan.model_name)

    def _split_candidates(self, candidates: list[tuple[Document, float]]) -> tuple[list[int], list[int]]:
        """Positions of the text candidates and of the image candidates (``add_images``)."""
        with self._lock:
            images = self._image_ids & {d.id for d, _ in candidates if d.id is not None}
        is_image = [d.id in images for d, _ in candidates]
        return [i for i, x in enumerate(is_image) if not x], [i for i, x in enumerate(is_image) if x]

    def _candidate_vectors(self, candidates: list[tuple[Document, float]]) -> list[list[float]]:
        """The candidates' vectors, recomputed: texts with ``embed_documents``, images with ``embed_image``."""
        texts, images = self._split_candidates(candidates)
        vectors: list[list[float]] = [[] for _ in candidates]
        if texts:
            for i, v in zip(texts, self.embedding.embed_documents([candidates[i][0].page_content for i in texts])):
                vectors[i] = v
        if images:
            embed_image = _image_embedder(self.embedding)
            for i, v in zip(images, embed_image([candidates[i][0].page_content for i in images])):
                vectors[i] = v
        return vectors

    async def _acandidate_vectors(self, candidates: list[tuple[Document, float]]) -> list[list[float]]:
        """Async ``_candidate_vectors``."""
        texts, images = self._split_candidates(candidates)
        vectors: list[list[float]] = [[] for _ in candidates]
        if texts:
            embedded = await self.embedding.aembed_documents([candidates[i][0].page_content for i in texts])
            for i, v in zip(texts, embedded):
                vectors[i] = v
        if images:
            embed_image = _image_embedder(self.embedding)
            aembed_image = getattr(self.embedding, "aembed_image", None)
            uris = [candidates[i][0].page_content for i in images]
            if callable(aembed_image):
                embedded = await aembed_image(uris)
            else:
                embedded = await asyncio.to_thread(embed_image, uris)
            for i, v in zip(images, embedded):
                vectors[i] = v
        return vectors

    def _mmr_select(
        self,
        query_vector: Sequence[float],
        candidates: list[tuple[Document, float]],
        vectors: list[list[float]],
        k: int,
        lambda_mult: float,
    ) -> list[Document]:
        if not candidates:
            return []
        chosen = maximal_marginal_relevance(
            self._prepare([query_vector])[0], self._prepare(vectors).tolist(), lambda_mult=lambda_mult, k=k
        )
        return [candidates[i][0] for i in chosen]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Maximal marginal relevance over the ``fetch_k`` nearest documents.

        The candidates' vectors are recomputed with ``embed_documents`` (images: ``embed_image``;
        the index may hold quantized codes, not the vectors).
        """
        candidates = self._search(embedding, fetch_k, filter, fetch_k)
        vectors = self._candidate_vectors(candidates) if candidates else []
        return self._mmr_select(embedding, candidates, vectors, k, lambda_mult)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Documents relevant to ``query`` yet diverse among themselves (``lambda_mult``: 1 = relevance only)."""
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, filter
        )

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        candidates = await asyncio.to_thread(self._search, embedding, fetch_k, filter, fetch_k)
        vectors = await self._acandidate_vectors(candidates) if candidates else []
        return self._mmr_select(embedding, candidates, vectors, k, lambda_mult)

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        vector = await self.embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> PoolkitFAISS:
        """Embed ``texts`` and build a store. Keyword arguments go to the constructor (plan, budget, ...).

        With ``memory_budget_bytes=`` and no ``n_vectors=``, the plan is sized for ``len(texts)``;
        families that need training train on a sample of these vectors.
        """
        texts, metas, keys = cls._normalize_inputs(texts, metadatas, ids)
        if kwargs.get("memory_budget_bytes") is not None and kwargs.get("n_vectors") is None:
            kwargs["n_vectors"] = max(len(texts), 1)
        store = cls(embedding, **kwargs)
        if texts:
            vectors = embedding.embed_documents(texts)
            store._build(texts, metas, keys, vectors)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> PoolkitFAISS:
        texts, metas, keys = cls._normalize_inputs(texts, metadatas, ids)
        if kwargs.get("memory_budget_bytes") is not None and kwargs.get("n_vectors") is None:
            kwargs["n_vectors"] = max(len(texts), 1)
        store = await asyncio.to_thread(lambda: cls(embedding, **kwargs))
        if texts:
            vectors = await embedding.aembed_documents(texts)
            await asyncio.to_thread(store._build, texts, metas, keys, vectors)
        return store

    def _build(self, texts: list[str], metas: list[dict], keys: list[str], vectors: list[list[float]]) -> None:
        """First bulk load: train on a sample when the plan needs it, then add everything."""
        from poolkit_faiss import VectorIndex

        with self._lock:
            if self._index is not None or self._plan is None or not self._plan.needs_training:
                self._write(texts, metas, keys, vectors)
                return
            last = {key: pos for pos, key in enumerate(keys)}
            keep = sorted(last.values())
            x = np.asarray([vectors[i] for i in keep], dtype=np.float32)
            self._index = VectorIndex.from_vectors(
                x,
                [keys[i] for i in keep],
                plan=self._plan,
                id_type="str",
                use_gpu=self.use_gpu,
            )
            for i in keep:
                self._docs[keys[i]] = Document(id=keys[i], page_content=texts[i], metadata=copy.deepcopy(metas[i]))

    # -- persistence ----------------------------------------------------------

    def save_local(self, folder_path: str | os.PathLike[str], index_name: str = "index") -> Path:
        """Write the store into ``folder_path/index_name/`` (faiss index, JSON manifest, JSONL docstore).

        Metadata must be JSON-serializable (tuples come back as lists).
        """
        folder = Path(folder_path) / index_name
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            docs = list(self._docs.values())
            lines = []
            for doc in docs:
                row: dict[str, Any] = {"id": doc.id, "page_content": doc.page_content, "metadata": doc.metadata}
                if doc.id in self._image_ids:
                    row["modality"] = "image"  # page_content is an image uri (readers that ignore it still work)
                try:
                    lines.append(json.dumps(row, ensure_ascii=False, allow_nan=True))
                except TypeError as exc:
                    raise TypeError(
                        f"Document {doc.id!r} has metadata that JSON cannot store ({exc}); PoolkitFAISS "
                        "saves without pickle, so metadata values must be str, int, float, bool, None, list or dict"
                    ) from exc
            tmp_docs = folder / (DOCSTORE_FILE + ".tmp")
            tmp_docs.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            if self._index is not None:
                self._index.save(folder)
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "n_documents": len(docs),
                "has_index": self._index is not None,
                "plan": self._plan.to_dict() if self._index is None and self._plan is not None else None,
                "embedding": {"class": type(self.embedding).__name__, "model": _model_name_of(self.embedding)},
                "files": {"docstore": DOCSTORE_FILE},
            }
            tmp_manifest = folder / (MANIFEST_FILE + ".tmp")
            tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp_docs, folder / DOCSTORE_FILE)
            os.replace(tmp_manifest, folder / MANIFEST_FILE)
        return folder

    @classmethod
    def load_local(
        cls,
        folder_path: str | os.PathLike[str],
        embeddings: Embeddings,
        index_name: str = "index",
        *,
        allow_dangerous_deserialization: bool = False,
        **kwargs: Any,
    ) -> PoolkitFAISS:
        """Read a store written by ``save_local``. Nothing is unpickled:
        ``allow_dangerous_deserialization`` is accepted for drop-in compatibility
        with langchain_community's FAISS and ignored."""
        from poolkit_faiss import IndexPlan, VectorIndex
        from poolkit_faiss.manifest import read_manifest

        folder = Path(folder_path) / index_name
        manifest = read_manifest(folder / MANIFEST_FILE, FORMAT_NAME, FORMAT_VERSION, "PoolkitFAISS")
        docs: dict[str, Document] = {}
        image_ids: set[str] = set()
        with open(folder / manifest["files"]["docstore"], encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    docs[row["id"]] = Document(id=row["id"], page_content=row["page_content"], metadata=row["metadata"])
                    if row.get("modality") == "image":
                        image_ids.add(row["id"])
        use_gpu = kwargs.pop("use_gpu", None)
        index = VectorIndex.load(folder, use_gpu=use_gpu) if manifest["has_index"] else None
        plan = IndexPlan.from_dict(manifest["plan"]) if manifest.get("plan") else None
        if index is not None:
            missing = set(index.ids()) ^ set(docs)
            if missing:
                raise ValueError(
                    f"{folder}: index and docstore disagree on {len(missing)} ids, e.g. {sorted(missing)[:3]}"
                )
        store = cls(embeddings, plan=plan, index=index, docstore=docs, image_ids=image_ids, use_gpu=use_gpu, **kwargs)
        logger.info("Loaded %r from %s", store, folder)
        return store
