"""``VectorIndex``: a FAISS index built from an :class:`~poolkit_faiss.planning.IndexPlan`,
with ids, updates, search and a pickle-free on-disk format.

Ids
    Keys are either ints (``0 <= id < 2**63``, stored as the faiss ids
    themselves) or strings (``id_type="str"``, e.g. LangChain's UUIDs), which
    get int64 faiss ids from a counter and a side table. A sorted array of live
    faiss ids answers "is this id present" without touching faiss.

Updates
    ``add`` refuses ids already present; ``upsert`` is ``delete`` then ``add``;
    ``delete`` ignores missing ids. Flat and IVF indexes remove vectors with
    ``remove_ids`` (O(n) for IVF without a direct map, as in faiss). HNSW graphs
    cannot remove nodes: deleted vectors become tombstones, filtered out of
    every search by an ``IDSelectorBitmap`` over graph positions, and
    ``compact()`` rebuilds the graph from the live vectors (done automatically
    once tombstones pass ``hnsw_compact_threshold`` of the nodes).

On disk (``save(dir)`` / ``VectorIndex.load(dir)``)
    ``index.faiss`` (``faiss.write_index``, readable by plain faiss),
    ``manifest.json`` (the plan, dimension, metric, normalization, model name,
    id type, counts) and ``ids.npz`` (live ids, HNSW tombstone positions, the
    string-id table; loaded with ``allow_pickle=False``). No pickle anywhere.

Not thread-safe: one writer at a time, and no searches during writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss as _faiss
import numpy as np
from tqdm.auto import tqdm

from . import gpu
from .embedding import DEFAULT_BATCH_SIZE, batches, check_images, check_llm, embed_images, embed_texts, prepare_vectors
from .manifest import read_manifest
from .planning import IndexPlan, plan_index

# faiss-cpu's bundled stubs lack the HNSW attributes used below: treat the module as untyped.
faiss: Any = _faiss

logger = logging.getLogger(__name__)

FORMAT_NAME = "poolkit-faiss"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
IDS_FILE = "ids.npz"
MAX_ID = 2**63 - 1

IdType = Literal["int", "str"]
Key = int | str


@dataclass
class SearchResult:
    """Top-k neighbours of each query.

    ``ids``: ``(n_queries, k)``; int64 with ``-1`` where fewer than ``k``
    vectors matched (int ids), or an object array of ``str`` / ``None``
    (string ids). ``scores``: float32 cosine similarities (inner products of
    normalized vectors), ``-inf`` where there is no result.
    """

    ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> list[list[tuple[Key, float]]]:
        """Per query, ``(id, score)`` pairs best first, without the empty slots."""
        out = []
        for ids, scores in zip(self.ids, self.scores):
            out.append([(_py(i), float(s)) for i, s in zip(ids, scores) if i is not None and i != -1])
        return out


def _py(value: Any) -> Key:
    return int(value) if isinstance(value, (np.integer, int)) else str(value)


class VectorIndex:
    """A FAISS index for cosine search over (optionally Matryoshka-truncated) embeddings.

    Build one with :meth:`from_texts` (embeds through a ``poolkit.LLM``),
    :meth:`from_images` (an image-text model: CLIP, SigLIP), :meth:`from_vectors`,
    or ``VectorIndex(plan)`` then :meth:`train` / :meth:`add`. ``plan`` decides the faiss factory string, dimension and
    search parameters (see :func:`~poolkit_faiss.planning.plan_index`).

    Args:
        plan: what to build.
        id_type: ``"int"`` or ``"str"`` keys.
        llm: optional ``poolkit.LLM`` for the ``*_texts`` and ``*_images`` methods.
        use_gpu: ``None`` (default) searches on GPUs when faiss reports some
            and supports the family; ``False`` never.
        hnsw_compact_threshold: rebuild an HNSW graph when this fraction of
            its nodes are tombstones (``None``: only on :meth:`compact`).
    """

    def __init__(
        self,
        plan: IndexPlan,
        *,
        id_type: IdType = "int",
        llm: Any = None,
        use_gpu: bool | None = None,
        hnsw_compact_threshold: float | None = 0.25,
        _index: Any = None,
    ) -> None:
        if id_type not in ("int", "str"):
            raise ValueError("id_type must be 'int' or 'str'")
        if plan.metric != "inner_product":
            raise ValueError(f"unsupported metric {plan.metric!r}")
        self.plan = plan
        self.id_type: IdType = id_type
        self.llm = llm
        self.use_gpu = use_gpu
        self.hnsw_compact_threshold = hnsw_compact_threshold
        self.index = _index if _index is not None else self._new_index()
        self._apply_search_params(self.index)
        self._live = np.empty(0, dtype=np.int64)  # sorted faiss ids present
        self._next_id = 0
        self._key_to_fid: dict[str, int] = {}
        self._fid_to_key: dict[int, str] = {}
        self._dead = np.zeros(0, dtype=bool)  # HNSW: tombstoned graph positions
        self._bitmap: np.ndarray | None = None  # cached IDSelectorBitmap storage
        self._gpu_index: Any = None
        self._gpu_stale = True
        if llm is not None:
            check_llm(llm, plan.dimension)

    # -- construction ---------------------------------------------------------

    def _new_index(self) -> Any:
        plan = self.plan
        base = faiss.index_factory(plan.dimension, plan.factory, faiss.METRIC_INNER_PRODUCT)
        if plan.layout == "hnsw":
            base.hnsw.efConstruction = int(plan.build_params.get("efConstruction", 40))
        if plan.layout in ("flat", "hnsw"):
            return faiss.IndexIDMap2(base)
        return base

    def _apply_search_params(self, index: Any) -> None:
        """Store the plan's search parameters on the faiss objects (they persist in the file)."""
        params = self.plan.search_params
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        if "efSearch" in params and hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = int(params["efSearch"])
        if "nprobe" in params:
            ivf = faiss.extract_index_ivf(inner)
            ivf.nprobe = int(params["nprobe"])
            quantizer = faiss.downcast_index(ivf.quantizer)
            if hasattr(quantizer, "hnsw"):
                quantizer.hnsw.efSearch = max(int(params["nprobe"]) * 2, 64)
        if "qb" in params and hasattr(inner, "qb"):
            inner.qb = int(params["qb"])

    @classmethod
    def from_vectors(
        cls,
        vectors: Any,
        ids: Sequence[Key] | None = None,
        *,
        plan: IndexPlan | None = None,
        memory_budget_bytes: float | None = None,
        id_type: IdType | None = None,
        batch_size: int = 65_536,
        seed: int = 0,
        show_progress: bool | None = None,
        llm: Any = None,
        use_gpu: bool | None = None,
        **plan_kwargs: Any,
    ) -> VectorIndex:
        """Plan (unless ``plan`` is given), train on a sample, and add ``vectors``.

        Without a plan, ``memory_budget_bytes`` is required and ``plan_kwargs``
        go to :func:`plan_index` (``dimension`` defaults to the vectors' width;
        say ``matryoshka_dimensions=`` / ``is_matryoshka=True`` to allow
        truncation).
        """
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
        if plan is None:
            if memory_budget_bytes is None:
                raise ValueError("pass plan=... or memory_budget_bytes=...")
            plan_kwargs.setdefault("dimension", x.shape[1])
            plan = plan_index(len(x), memory_budget_bytes, llm=llm, **plan_kwargs)
        store = cls(plan, id_type=id_type or _infer_id_type(ids), llm=llm, use_gpu=use_gpu)
        fids = store._new_fids(ids, len(x))
        sample = store._training_rows(len(x), seed)
        if sample is not None:
            store.train(x[sample])
        with _progress(len(x), "Indexing", "vec", show_progress) as bar:
            for part in _chunks(np.arange(len(x)), batch_size):
                store._add_prepared(store._prepare(x[part]), fids[part])
                bar.update(len(part))
        store._commit_new(fids, ids)
        return store

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        llm: Any,
        ids: Sequence[Key] | None = None,
        *,
        plan: IndexPlan | None = None,
        memory_budget_bytes: float | None = None,
        id_type: IdType | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        truncate_prompt_tokens: int | None = -1,
        prompt_name: str | None = None,
        prompt: str | None = None,
        enable_chunked_processing: bool | None = None,
        seed: int = 0,
        show_progress: bool | None = None,
        use_gpu: bool | None = None,
        **plan_kwargs: Any,
    ) -> VectorIndex:
        """Embed ``texts`` with ``llm`` in batches (tqdm bar) and index them.

        Without a plan, the plan comes from :func:`plan_index` with ``llm``
        (Matryoshka support from the engine config), ``len(texts)`` and
        ``memory_budget_bytes``. Families that need training first embed a
        random sample of ``plan.train_size`` texts, train on it, and add it;
        the remaining texts then stream through in batches, so only one batch
        of full vectors is in memory at a time (plus the training sample).

        ``truncate_prompt_tokens=-1`` (default) cuts passages longer than the
        model limit instead of failing on them; ``enable_chunked_processing=True``
        embeds them whole instead, in chunks merged into one vector, and then
        ``truncate_prompt_tokens`` is not applied (see :func:`embed_texts`).
        ``prompt_name`` / ``prompt``: the
        Sentence-Transformers prompt the passages are embedded with, as in
        ``LLM.embed`` (e.g. ``prompt_name="document"``; default: the model's
        default prompt). Search with the matching query prompt
        (``search_texts(..., prompt_name="query")``).
        """
        if plan is None:
            if memory_budget_bytes is None:
                raise ValueError("pass plan=... or memory_budget_bytes=...")
            plan = plan_index(len(texts), memory_budget_bytes, llm=llm, **plan_kwargs)
        store = cls(plan, id_type=id_type or _infer_id_type(ids), llm=llm, use_gpu=use_gpu)
        texts = list(texts)

        def embed(rows: np.ndarray) -> np.ndarray:
            return store.embed(
                [texts[i] for i in rows],
                truncate_prompt_tokens=truncate_prompt_tokens,
                prompt_name=prompt_name,
                prompt=prompt,
                enable_chunked_processing=enable_chunked_processing,
            )

        store._fill(len(texts), embed, ids, batch_size=batch_size, seed=seed, show_progress=show_progress,
                    unit="text")
        return store

    @classmethod
    def from_images(
        cls,
        images: Sequence[Any],
        llm: Any,
        ids: Sequence[Key] | None = None,
        *,
        plan: IndexPlan | None = None,
        memory_budget_bytes: float | None = None,
        id_type: IdType | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        seed: int = 0,
        show_progress: bool | None = None,
        use_gpu: bool | None = None,
        **plan_kwargs: Any,
    ) -> VectorIndex:
        """Embed ``images`` with an image-text ``llm`` (CLIP, SigLIP) in batches (tqdm bar) and index them.

        The image counterpart of :meth:`from_texts` (planning, training on a sample and
        streaming work the same way); each image is what :func:`~poolkit_faiss.embed_images`
        takes (a ``PIL.Image``, array, encoded bytes, file path, or ``data:`` / ``http(s)`` URL).
        Search the index with texts (:meth:`search_texts`: the model's texts and images share
        one space) or images (:meth:`search_images`). A text-only model is refused before
        anything is embedded.
        """
        check_images(llm)
        if plan is None:
            if memory_budget_bytes is None:
                raise ValueError("pass plan=... or memory_budget_bytes=...")
            plan = plan_index(len(images), memory_budget_bytes, llm=llm, **plan_kwargs)
        store = cls(plan, id_type=id_type or _infer_id_type(ids), llm=llm, use_gpu=use_gpu)
        images = list(images)
        store._fill(len(images), lambda rows: store.embed_images([images[i] for i in rows]), ids,
                    batch_size=batch_size, seed=seed, show_progress=show_progress, unit="image")
        return store

    def _fill(self, n: int, embed: Any, ids: Sequence[Key] | None, *, batch_size: int, seed: int,
              show_progress: bool | None, unit: str) -> None:
        """Add ``n`` inputs, ``embed(rows)`` giving the vectors of those rows, to a new index.

        Families that need training first embed a random sample, train on it, and add it; the
        rest then streams through in batches, so only one batch of vectors is in memory at a time
        (plus the training sample).
        """
        fids = self._new_fids(ids, n)
        rest = np.arange(n)
        sample = self._training_rows(n, seed)
        with _progress(n, "Embedding", unit, show_progress) as bar:
            if sample is not None:  # embed the sample, train on it, then add it as it is
                parts = []
                for part in _chunks(sample, batch_size):
                    parts.append(embed(part))
                    bar.update(len(part))
                sample_vectors = np.concatenate(parts)
                self.train(sample_vectors)
                self._add_prepared(sample_vectors, fids[sample])
                rest = np.setdiff1d(rest, sample, assume_unique=True)
            for part in _chunks(rest, batch_size):
                self._add_prepared(embed(part), fids[part])
                bar.update(len(part))
        self._commit_new(fids, ids)

    def _training_rows(self, n: int, seed: int) -> np.ndarray | None:
        """Sorted random rows to train on (``plan.train_size`` of them), or None if no training is needed."""
        if self.index.is_trained or n == 0:
            return None
        size = min(max(self.plan.train_size, 1), n)
        return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))

    # -- properties -----------------------------------------------------------

    @property
    def dimension(self) -> int:
        return self.plan.dimension

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def ntotal(self) -> int:
        """Vectors stored by faiss, HNSW tombstones included."""
        return int(self.index.ntotal)

    @property
    def n_tombstones(self) -> int:
        return int(self._dead.sum())

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        fid = self._lookup([key])  # type: ignore[list-item]
        return bool(len(fid)) and bool(self._present(fid)[0])

    def ids(self) -> list[Key]:
        """The live ids (ints ascending; strings in faiss-id order, i.e. insertion order)."""
        return self._keys_of(self._live).tolist()

    def __repr__(self) -> str:
        extra = f", tombstones={self.n_tombstones}" if self.n_tombstones else ""
        return f"VectorIndex({self.plan.factory!r}, d={self.dimension}, n={len(self)}{extra}, id_type={self.id_type!r})"

    def serialized_size(self) -> int:
        """Bytes ``faiss.write_index`` produces for the index (what the plan's size model predicts)."""
        return int(faiss.serialize_index(self.index).nbytes)

    # -- writing --------------------------------------------------------------

    def train(self, vectors: Any) -> None:
        """Train the quantizers (IVF centroids, SQ ranges, PQ codebooks) on ``vectors``."""
        if self.index.is_trained:
            return
        x = self._prepare(vectors)
        if self.plan.nlist and len(x) < self.plan.nlist:
            raise ValueError(f"IVF{self.plan.nlist} needs at least {self.plan.nlist} training vectors, got {len(x)}")
        logger.info("training %s on %d vectors", self.plan.factory, len(x))
        self.index.train(x)
        self._apply_search_params(self.index)

    def add(self, vectors: Any, ids: Sequence[Key] | None = None) -> list[Key]:
        """Add vectors under new ids (generated when ``ids`` is None); return the ids.

        Raises ``ValueError`` if an id is already present (use :meth:`upsert`).
        An untrained index trains on these vectors first when there are enough.
        """
        x = self._prepare(vectors)
        fids = self._new_fids(ids, len(x))
        if not self.index.is_trained:
            self.train(x)
        self._add_prepared(x, fids)
        self._commit_new(fids, ids)
        return self._keys_of(fids).tolist()

    def upsert(self, vectors: Any, ids: Sequence[Key]) -> list[Key]:
        """Insert or replace: ``delete(ids)`` then ``add(vectors, ids)``."""
        if ids is None:
            raise ValueError("upsert needs ids")
        ids = list(ids)
        x = self._prepare(vectors)  # validate everything before deleting anything
        self._check_keys(ids, len(x))
        if not self.index.is_trained:
            self.train(x)
        self.delete(ids)
        return self.add(x, ids)

    def delete(self, ids: Iterable[Key]) -> int:
        """Remove these ids; missing ones are ignored. Returns how many were removed."""
        fids = self._lookup(list(ids))
        fids = np.unique(fids[self._present(fids)]) if len(fids) else fids
        if not len(fids):
            return 0
        if self.plan.layout == "hnsw":
            id_map = self._id_map()
            positions = np.flatnonzero(np.isin(id_map, fids) & ~self._dead)
            self._dead[positions] = True
            self._bitmap = None
            removed = len(positions)
        else:
            removed = int(self.index.remove_ids(faiss.IDSelectorBatch(fids)))
        if removed != len(fids):
            raise RuntimeError(f"faiss removed {removed} vectors for {len(fids)} present ids: inconsistent index")
        self._live = np.setdiff1d(self._live, fids, assume_unique=True)
        if self.id_type == "str":
            for fid in fids.tolist():
                self._key_to_fid.pop(self._fid_to_key.pop(fid), None)
        self._gpu_stale = True
        threshold = self.hnsw_compact_threshold
        if self.plan.layout == "hnsw" and threshold is not None and self.n_tombstones > threshold * max(self.ntotal, 1):
            logger.info("%d of %d HNSW nodes are tombstones; compacting", self.n_tombstones, self.ntotal)
            self.compact()
        return removed

    def compact(self, batch_size: int = 65_536) -> None:
        """Rebuild an HNSW graph without its tombstones (no-op for other layouts)."""
        if self.plan.layout != "hnsw" or not self._dead.any():
            return
        old = self.index
        inner = faiss.downcast_index(old.index)
        live_positions = np.flatnonzero(~self._dead)
        id_map = self._id_map().copy()
        new = self._new_index()
        self._apply_search_params(new)
        for part in _chunks(live_positions, batch_size):
            vectors = inner.reconstruct_batch(part.astype(np.int64))
            new.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), id_map[part])
        self.index = new
        self._dead = np.zeros(new.ntotal, dtype=bool)
        self._bitmap = None
        self._gpu_stale = True

    def reconstruct(self, ids: Sequence[Key]) -> np.ndarray:
        """The stored vectors of ``ids`` (decoded: approximate for quantized codecs).

        Flat and HNSW layouts only: IVF indexes would need a faiss direct map,
        which costs memory on every vector. Raises ``KeyError`` for missing ids.
        """
        if self.plan.layout == "ivf":
            raise NotImplementedError("IVF indexes keep no id -> vector map; re-embed the texts instead")
        keys = list(ids)
        fids = self._lookup(keys)
        if len(fids) != len(keys) or not self._present(fids).all():
            missing = [k for k in keys if k not in self]
            raise KeyError(f"ids not in the index: {missing[:5]}")
        if not len(fids):
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.plan.layout == "hnsw":  # the live graph position of each id (a tombstone may share the id)
            id_map = self._id_map()
            positions = np.flatnonzero(np.isin(id_map, fids) & ~self._dead)
            position_of = dict(zip(id_map[positions].tolist(), positions.tolist()))
            where = np.array([position_of[f] for f in fids.tolist()], dtype=np.int64)
            return faiss.downcast_index(self.index.index).reconstruct_batch(where)
        return np.stack([self.index.reconstruct(int(f)) for f in fids])

    # -- texts ----------------------------------------------------------------

    def _require_llm(self) -> Any:
        if self.llm is None:
            raise ValueError("this VectorIndex has no llm; pass llm= when building or loading it")
        return self.llm

    def embed(
        self,
        texts: Sequence[str],
        *,
        truncate_prompt_tokens: int | None = -1,
        prompt_name: str | None = None,
        prompt: str | None = None,
        enable_chunked_processing: bool | None = None,
    ) -> np.ndarray:
        """Embed texts with the index's model, at the index's dimension (see :func:`embed_texts` for prompts,
        truncation and ``enable_chunked_processing``: with chunking ``truncate_prompt_tokens`` is not applied)."""
        llm = self._require_llm()
        return embed_texts(
            llm,
            list(texts),
            self.dimension,
            truncate_prompt_tokens=truncate_prompt_tokens,
            prompt_name=prompt_name,
            prompt=prompt,
            enable_chunked_processing=enable_chunked_processing,
        )

    def add_texts(
        self,
        texts: Sequence[str],
        ids: Sequence[Key] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        prompt_name: str | None = None,
        prompt: str | None = None,
        enable_chunked_processing: bool | None = None,
    ) -> list[Key]:
        """Embed (in batches, with the given document prompt; long texts in chunks with
        ``enable_chunked_processing=True``, see :func:`embed_texts`) and :meth:`add` texts."""
        texts = list(texts)
        keys = None if ids is None else list(ids)
        if keys is not None:
            self._check_keys(keys, len(texts))
            self._new_fids(keys, len(texts))  # fail before embedding anything
        out: list[Key] = []
        for part in batches(len(texts), batch_size):
            vectors = self.embed(texts[part], prompt_name=prompt_name, prompt=prompt,
                                 enable_chunked_processing=enable_chunked_processing)
            out += self.add(vectors, None if keys is None else keys[part])
        return out

    def upsert_texts(
        self,
        texts: Sequence[str],
        ids: Sequence[Key],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        enable_chunked_processing: bool | None = None,
    ) -> list[Key]:
        """Embed (with the given document prompt; long texts in chunks with ``enable_chunked_processing=True``)
        and :meth:`upsert` texts."""
        vectors = self.embed(list(texts), prompt_name=prompt_name, prompt=prompt,
                             enable_chunked_processing=enable_chunked_processing)
        return self.upsert(vectors, ids)

    def search_texts(
        self,
        texts: Sequence[str] | str,
        k: int = 10,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        enable_chunked_processing: bool | None = None,
        **kwargs: Any,
    ) -> SearchResult:
        """Embed queries (with the given query prompt, e.g. ``prompt_name="query"``; long ones in chunks with
        ``enable_chunked_processing=True``) and :meth:`search`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        vectors = self.embed(texts, prompt_name=prompt_name, prompt=prompt,
                             enable_chunked_processing=enable_chunked_processing)
        return self.search(vectors, k, **kwargs)

    # -- images ---------------------------------------------------------------

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embed images with the index's (image-text) model, at the index's dimension (see
        :func:`~poolkit_faiss.embed_images` for what an image may be)."""
        return embed_images(self._require_llm(), list(images), self.dimension)

    def add_images(
        self,
        images: Sequence[Any],
        ids: Sequence[Key] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[Key]:
        """Embed (in batches) and :meth:`add` images; the image counterpart of :meth:`add_texts`."""
        check_images(self._require_llm())
        images = list(images)
        keys = None if ids is None else list(ids)
        if keys is not None:
            self._check_keys(keys, len(images))
            self._new_fids(keys, len(images))  # fail before embedding anything
        out: list[Key] = []
        for part in batches(len(images), batch_size):
            out += self.add(self.embed_images(images[part]), None if keys is None else keys[part])
        return out

    def upsert_images(self, images: Sequence[Any], ids: Sequence[Key]) -> list[Key]:
        """Embed and :meth:`upsert` images."""
        return self.upsert(self.embed_images(list(images)), ids)

    def search_images(self, images: Sequence[Any] | Any, k: int = 10, **kwargs: Any) -> SearchResult:
        """Embed query images (one, or a list) and :meth:`search`: image-to-image search, or
        image-to-text over an index of texts embedded by the same image-text model."""
        queries = list(images) if isinstance(images, (list, tuple)) else [images]
        return self.search(self.embed_images(queries), k, **kwargs)

    # -- search ---------------------------------------------------------------

    def search(
        self, queries: Any, k: int = 10, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> SearchResult:
        """Top-``k`` cosine neighbours of each query vector.

        Queries wider than the index are truncated (Matryoshka plans only) and
        normalized like stored vectors. ``nprobe`` / ``ef_search`` override the
        plan's search parameters for this call.
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        x = self._prepare(queries)
        if self.plan.layout == "hnsw" and self._dead.any():
            inner = faiss.downcast_index(self.index.index)
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ef_search or inner.hnsw.efSearch, k)
            params.sel = self._alive_selector()
            scores, positions = inner.search(x, k, params=params)
            id_map = self._id_map()
            fids = np.where(positions >= 0, id_map[np.maximum(positions, 0)], -1)
        else:
            index = self._search_index()
            params = self._params(k, nprobe, ef_search)
            scores, fids = index.search(x, k, params=params) if params is not None else index.search(x, k)
        scores = np.where(fids >= 0, scores, -np.inf).astype(np.float32)
        if self.id_type == "str":
            ids = np.empty(fids.shape, dtype=object)
            for pos, fid in np.ndenumerate(fids):
                ids[pos] = self._fid_to_key.get(int(fid)) if fid >= 0 else None
        else:
            ids = fids.astype(np.int64)
        return SearchResult(ids=ids, scores=scores)

    def _params(self, k: int, nprobe: int | None, ef_search: int | None) -> Any:
        plan = self.plan
        if plan.layout == "hnsw":
            if ef_search is None:
                return None
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(ef_search, k)
            return params
        if plan.layout == "ivf" and nprobe is not None:
            if plan.codec.startswith("rabitq"):
                params = faiss.IVFRaBitQSearchParameters()
                params.qb = int(plan.search_params.get("qb", 8))
            else:
                params = faiss.SearchParametersIVF()
            params.nprobe = nprobe
            return params
        return None

    def _search_index(self) -> Any:
        if self.use_gpu is False or not gpu.can_use_gpu(self.plan.layout, self.plan.codec):
            return self.index
        if self._gpu_index is None or self._gpu_stale:
            self._gpu_index = gpu.to_gpu(self.index, self.plan.layout, self.plan.codec)
            self._gpu_stale = False
        return self._gpu_index if self._gpu_index is not None else self.index

    def _alive_selector(self) -> Any:
        if self._bitmap is None:
            self._bitmap = np.packbits(~self._dead, bitorder="little")
        return faiss.IDSelectorBitmap(len(self._dead), faiss.swig_ptr(self._bitmap))

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss``, ``manifest.json`` and ``ids.npz`` into directory ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        keys = [self._fid_to_key[f] for f in self._live.tolist()] if self.id_type == "str" else []
        tmp_index = folder / (INDEX_FILE + ".tmp")
        faiss.write_index(self.index, str(tmp_index))
        tmp_ids = folder / (IDS_FILE + ".tmp.npz")
        np.savez(
            tmp_ids,
            live=self._live,
            dead_positions=np.flatnonzero(self._dead).astype(np.int64),
            str_keys=np.array(keys, dtype=np.str_),
        )
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "faiss_version": getattr(faiss, "__version__", "unknown"),
            "plan": self.plan.to_dict(),
            "dimension": self.dimension,
            "model_name": self.plan.model_name,
            "metric": self.plan.metric,
            "normalized": self.plan.normalize,
            "id_type": self.id_type,
            "n_vectors": len(self),
            "ntotal": self.ntotal,
            "next_id": self._next_id,
            "files": {"index": INDEX_FILE, "ids": IDS_FILE},
        }
        tmp_manifest = folder / (MANIFEST_FILE + ".tmp")
        tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp_index, folder / INDEX_FILE)
        os.replace(tmp_ids, folder / IDS_FILE)
        os.replace(tmp_manifest, folder / MANIFEST_FILE)
        return folder

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        llm: Any = None,
        use_gpu: bool | None = None,
        hnsw_compact_threshold: float | None = 0.25,
    ) -> VectorIndex:
        """Read an index written by :meth:`save`."""
        folder = Path(path)
        manifest = read_manifest(folder / MANIFEST_FILE, FORMAT_NAME, FORMAT_VERSION, "VectorIndex")
        plan = IndexPlan.from_dict(manifest["plan"])
        if llm is not None and plan.model_name and llm.model_config.served_model_name != plan.model_name:
            logger.warning(
                "index was built with %r; loading it with %r", plan.model_name, llm.model_config.served_model_name
            )
        index = faiss.read_index(str(folder / manifest["files"]["index"]))
        store = cls(
            plan,
            id_type=manifest["id_type"],
            llm=llm,
            use_gpu=use_gpu,
            hnsw_compact_threshold=hnsw_compact_threshold,
            _index=index,
        )
        with np.load(folder / manifest["files"]["ids"], allow_pickle=False) as data:
            live = data["live"].astype(np.int64)
            dead_positions = data["dead_positions"].astype(np.int64)
            keys = data["str_keys"].tolist()
        store._live = live
        store._next_id = int(manifest["next_id"])
        if store.id_type == "str":
            if len(keys) != len(live):
                raise ValueError(f"{folder}: {len(keys)} string ids for {len(live)} vectors")
            store._fid_to_key = dict(zip(live.tolist(), keys))
            store._key_to_fid = dict(zip(keys, live.tolist()))
        store._dead = np.zeros(index.ntotal, dtype=bool)
        store._dead[dead_positions] = True
        if index.ntotal != len(live) + len(dead_positions):
            raise ValueError(
                f"{folder}: faiss holds {index.ntotal} vectors but the id table has {len(live)} "
                f"(+{len(dead_positions)} tombstones)"
            )
        return store

    # -- ids ------------------------------------------------------------------

    def _prepare(self, vectors: Any) -> np.ndarray:
        return prepare_vectors(
            vectors, self.dimension, matryoshka=self.plan.matryoshka, model_name=self.plan.model_name
        )

    def _check_keys(self, ids: list[Key], n: int) -> None:
        """Count, uniqueness, type and range of keys (not whether they are present)."""
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} vectors")
        if len(set(ids)) != n:
            raise ValueError("duplicate ids in one call")
        if self.id_type == "str":
            if not all(isinstance(i, str) for i in ids):
                raise TypeError("this index has string ids")
            return
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
            raise TypeError("this index has int ids (pass id_type='str' for string ids)")
        if any(not 0 <= int(i) <= MAX_ID for i in ids):
            raise ValueError("int ids must be in [0, 2**63 - 1]")

    def _new_fids(self, ids: Sequence[Key] | None, n: int) -> np.ndarray:
        """Faiss ids for ``n`` new vectors; raise if any id is present or repeated. Registers nothing."""
        if ids is None:
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        ids = list(ids)
        self._check_keys(ids, n)
        if self.id_type == "str":
            present = [i for i in ids if i in self._key_to_fid]
        else:
            fids = np.array([int(i) for i in ids], dtype=np.int64)
            present = fids[self._present(fids)].tolist()
        if present:
            more = "..." if len(present) > 5 else ""
            raise ValueError(f"ids already present: {present[:5]}{more}; use upsert()")
        if self.id_type == "str":
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        return fids

    def _commit_new(self, fids: np.ndarray, ids: Sequence[Key] | None) -> None:
        """Record ids of vectors just added to faiss."""
        if not len(fids):
            return
        if self.id_type == "str":
            keys = [str(uuid.uuid4()) for _ in range(len(fids))] if ids is None else list(ids)
            for fid, key in zip(fids.tolist(), keys):
                self._key_to_fid[str(key)] = fid
                self._fid_to_key[fid] = str(key)
        new = np.sort(fids)
        self._live = np.insert(self._live, np.searchsorted(self._live, new), new)
        self._next_id = max(self._next_id, int(new[-1]) + 1)

    def _add_prepared(self, x: np.ndarray, fids: np.ndarray) -> None:
        if not len(x):
            return
        if not self.index.is_trained:
            raise ValueError(f"{self.plan.factory} must be trained first (train() or from_vectors/from_texts)")
        self.index.add_with_ids(x, np.ascontiguousarray(fids, dtype=np.int64))
        if self.plan.layout == "hnsw":
            self._dead = np.concatenate([self._dead, np.zeros(len(x), dtype=bool)])
            self._bitmap = None
        self._gpu_stale = True

    def _lookup(self, keys: list[Key]) -> np.ndarray:
        """Faiss ids of keys (unknown string keys are dropped)."""
        if self.id_type == "str":
            return np.array([self._key_to_fid[k] for k in keys if k in self._key_to_fid], dtype=np.int64)
        ints = [int(k) for k in keys if isinstance(k, (int, np.integer)) and 0 <= int(k) <= MAX_ID]
        return np.array(ints, dtype=np.int64)

    def _present(self, fids: np.ndarray) -> np.ndarray:
        if not len(self._live) or not len(fids):
            return np.zeros(len(fids), dtype=bool)
        pos = np.searchsorted(self._live, fids)
        pos = np.minimum(pos, len(self._live) - 1)
        return self._live[pos] == fids

    def _keys_of(self, fids: np.ndarray) -> np.ndarray:
        if self.id_type == "str":
            return np.array([self._fid_to_key[int(f)] for f in fids], dtype=object)
        return np.asarray(fids, dtype=np.int64)

    def _id_map(self) -> np.ndarray:
        """Zero-copy view of ``IndexIDMap2.id_map`` (graph position -> faiss id)."""
        id_map = self.index.id_map
        return faiss.rev_swig_ptr(id_map.data(), id_map.size()) if id_map.size() else np.empty(0, np.int64)


def _infer_id_type(ids: Sequence[Key] | None) -> IdType:
    if ids is None:
        return "int"
    for key in ids:
        return "str" if isinstance(key, str) else "int"
    return "int"


def _progress(total: int, desc: str, unit: str, show: bool | None) -> tqdm:
    """A tqdm bar; ``show=None`` lets tqdm decide (off when stderr is not a TTY)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None if show is None else not show)


def _chunks(order: np.ndarray, size: int) -> Iterable[np.ndarray]:
    for start in range(0, len(order), max(size, 1)):
        yield order[start : start + size]


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean |found[:, :k] & truth[:, :k]| / k over queries (10-recall@10 for k=10)."""
    hits = 0
    for a, b in zip(np.asarray(found)[:, :k], np.asarray(truth)[:, :k]):
        hits += len(set(a.tolist()) & set(b.tolist()) - {-1, None})
    return hits / (k * len(truth)) if len(truth) else math.nan
