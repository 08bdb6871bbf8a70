"""``SparseIndex``: exact top-k search over sparse (SPLADE-style) vectors, on ``scipy.sparse``.

Sparse vectors are vocabulary-size vectors with few non-zeros (a SPLADE model
gives each text a weight for a few dozen of its ~30k vocabulary tokens). The
index keeps the documents as rows of a CSR matrix and, for searching, its
transpose as a CSR matrix too: row ``t`` of the transpose lists the documents
that have token ``t`` and their weights, i.e. the posting lists of an inverted
index, built and multiplied by scipy's sparse kernels rather than by hand. A
query's scores are ``queries @ inverted`` (sparse x sparse: only documents that
share a dimension with the query are touched), and the best ``k`` of each row
come from ``np.argpartition``.

Vector forms
    Anywhere a vector is expected, any of these is accepted:
    a ``poolkit.outputs.SparseEmbeddingOutput`` (``indices``, ``values``, ``dim``),
    anything whose ``.outputs`` is one (an ``LLM.embed`` result), an
    ``(indices, values)`` pair or ``(indices, values, dim)`` triple, an
    ``{index: value}`` dict, a one-row scipy sparse matrix/array, or a dense
    1-D numpy array. Batches (``add``, ``search_batch``) are a sequence of those,
    a 2-D scipy sparse matrix, or a 2-D numpy array. (A lone ``(indices, values)``
    pair passed as a batch would read as two vectors: wrap it in a list.)
    Indices must be unique and within ``[0, dim)``; values finite; explicit
    zeros are dropped.

Dimension
    ``dim`` (the vocabulary size) is given to the constructor or taken from the
    first vector that carries one (an output's ``dim``, a scipy row's width, a
    dense array's length); every later vector that carries one must agree
    (``ValueError`` otherwise). Pairs and dicts carry none, so adding them to an
    index without a dimension is an error that says to pass ``dim=``.

Ids and updates
    As in :class:`~poolkit_faiss.store.VectorIndex`: int ids (``0 <= id < 2**63``,
    generated from a counter when not given) or string ids (``id_type="str"``,
    UUIDs when not given). ``add`` refuses ids already present; ``upsert`` is
    ``delete`` then ``add``; ``delete`` ignores missing ids. Added rows are
    buffered and stacked, and the posting lists rebuilt (O(non-zeros)), once, by
    the first search after a write: build in batches, then search.

Results
    ``search`` / ``search_batch`` return the dense store's
    :class:`~poolkit_faiss.store.SearchResult`: ids ``-1`` (int ids) or ``None``
    (string ids) and score ``-inf`` where fewer than ``k`` documents matched.
    Scores are dot products. Only documents with a non-zero score are results:
    a document sharing no dimension with the query is not retrieved, as in any
    inverted index. Equal scores are ordered by id ascending (ints numerically,
    strings lexicographically), and a tie at the ``k``-th place is resolved the
    same way, so results never depend on insertion order or on argpartition.

On disk (``save(dir)`` / ``SparseIndex.load(dir)``)
    ``sparse_manifest.json`` (format, dimension, id type, counts, model name),
    ``sparse_matrix.npz`` (``scipy.sparse.save_npz`` of the document rows) and
    ``sparse_ids.npz`` (the row ids; read with ``allow_pickle=False``). No
    pickle anywhere. The names differ from the dense store's, so both can share
    a folder. Each file is written to a temporary name and renamed into place.

Not thread-safe: one writer at a time, and no searches during writes.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from .embedding import DEFAULT_BATCH_SIZE, batches
from .manifest import read_manifest
from .store import MAX_ID, Key, SearchResult

logger = logging.getLogger(__name__)

FORMAT_NAME = "poolkit-sparse"
FORMAT_VERSION = 1
MANIFEST_FILE = "sparse_manifest.json"
MATRIX_FILE = "sparse_matrix.npz"
IDS_FILE = "sparse_ids.npz"

IdType = Literal["int", "str"]

# Queries multiplied at once in search_batch: the product is (queries x matching documents),
# so this bounds its size for broad queries over large corpora.
QUERY_CHUNK = 256


# -- converting inputs ----------------------------------------------------------


def _is_sparse_output(obj: Any) -> bool:
    """Duck-typed ``SparseEmbeddingOutput`` (so this module never imports the engine or torch)."""
    return all(hasattr(obj, name) for name in ("indices", "values", "dim")) and not isinstance(obj, np.ndarray)


def _is_single(obj: Any) -> bool:
    """Whether ``obj`` is unambiguously one vector (not a batch) in a batch context."""
    if _is_sparse_output(obj) or isinstance(obj, Mapping):
        return True
    inner = getattr(obj, "outputs", None)
    return inner is not None and _is_sparse_output(inner)


def _row(vector: Any) -> tuple[np.ndarray, np.ndarray, int | None]:
    """One vector in any accepted form → ``(indices int64, values float32, dim or None)``, unchecked."""
    inner = getattr(vector, "outputs", None)
    if inner is not None and _is_sparse_output(inner):  # an LLM.embed request output
        vector = inner
    if _is_sparse_output(vector):
        dim = getattr(vector, "dim", None)
        return (np.asarray(vector.indices, dtype=np.int64).ravel(),
                np.asarray(vector.values, dtype=np.float32).ravel(), None if dim is None else int(dim))
    if sp.issparse(vector):
        if vector.ndim == 1:
            vector = sp.csr_matrix(vector.reshape(1, -1))
        if vector.shape[0] != 1:
            raise ValueError(f"expected one sparse row, got a {vector.shape[0]} x {vector.shape[1]} matrix")
        row = sp.csr_matrix(vector)
        row.sum_duplicates()  # COO input may repeat an index; scipy's own semantics are to add them
        return row.indices.astype(np.int64), row.data.astype(np.float32), int(row.shape[1])
    if isinstance(vector, Mapping):
        indices = np.fromiter((_index(k) for k in vector), dtype=np.int64, count=len(vector))
        values = np.fromiter((float(v) for v in vector.values()), dtype=np.float64, count=len(vector))
        return indices, values.astype(np.float32), None
    if isinstance(vector, tuple) and len(vector) in (2, 3):
        indices = np.asarray(vector[0])
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"sparse indices must be integers, got {indices.dtype}")
        dim = None if len(vector) == 2 or vector[2] is None else int(vector[2])
        return (indices.astype(np.int64).ravel(), np.asarray(vector[1], dtype=np.float32).ravel(), dim)
    dense = np.asarray(vector)
    if dense.ndim != 1 or not (np.issubdtype(dense.dtype, np.number) or dense.dtype == bool):
        raise TypeError(
            f"cannot read a sparse vector from {type(vector).__name__} (shape {getattr(dense, 'shape', None)}): "
            "pass a SparseEmbeddingOutput, an (indices, values) pair, an {index: value} dict, "
            "a one-row scipy sparse matrix or a dense 1-D array"
        )
    (indices,) = np.nonzero(dense)
    return indices.astype(np.int64), dense[indices].astype(np.float32), int(dense.shape[0])


def _index(key: Any) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"sparse indices must be integers, got {key!r}")
    return int(key)


def _rows(vectors: Any) -> tuple[list[tuple[np.ndarray, np.ndarray, int | None]] | sp.csr_matrix, int | None]:
    """A batch → either a CSR matrix (2-D inputs, fast path) or a list of rows; plus the batch's dim."""
    if sp.issparse(vectors) and vectors.ndim == 2:
        matrix = sp.csr_matrix(vectors, dtype=np.float32)
        return matrix, int(matrix.shape[1])
    if isinstance(vectors, np.ndarray):
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2:
            raise ValueError(f"expected a 1-D vector or a 2-D batch, got shape {vectors.shape}")
        if not (np.issubdtype(vectors.dtype, np.number) or vectors.dtype == bool):
            raise TypeError(f"dense vectors must be numeric, got an array of {vectors.dtype}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinity")
        matrix = sp.csr_matrix(vectors.astype(np.float32, copy=False))
        return matrix, int(matrix.shape[1])
    if _is_single(vectors) or (sp.issparse(vectors) and vectors.ndim == 1):
        vectors = [vectors]
    if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Iterable):
        raise TypeError(f"expected a batch of sparse vectors, got {type(vectors).__name__}")
    rows = [_row(v) for v in vectors]
    dims = {d for _, _, d in rows if d is not None}
    if len(dims) > 1:
        raise ValueError(f"vectors of different dimensions in one batch: {sorted(dims)}")
    return rows, (dims.pop() if dims else None)


def _build_csr(rows: list[tuple[np.ndarray, np.ndarray, int | None]], dim: int) -> sp.csr_matrix:
    """Stack rows into a CSR matrix with sorted indices, checking indices, duplicates and values."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    parts_i: list[np.ndarray] = []
    parts_v: list[np.ndarray] = []
    for n, (indices, values, _) in enumerate(rows):
        if indices.shape != values.shape:
            raise ValueError(f"vector {n}: {indices.size} indices but {values.size} values")
        if indices.size:
            if indices.min() < 0 or indices.max() >= dim:
                bad = indices[(indices < 0) | (indices >= dim)][0]
                raise ValueError(f"vector {n}: index {int(bad)} is outside [0, {dim})")
            order = np.argsort(indices, kind="stable")
            indices, values = indices[order], values[order]
            repeated = indices[1:][np.diff(indices) == 0]
            if repeated.size:
                raise ValueError(f"vector {n}: index {int(repeated[0])} appears more than once")
        parts_i.append(indices)
        parts_v.append(values)
        indptr[n + 1] = indptr[n] + indices.size
    data = np.concatenate(parts_v) if parts_v else np.zeros(0, np.float32)
    cols = np.concatenate(parts_i) if parts_i else np.zeros(0, np.int64)
    if not np.isfinite(data).all():
        raise ValueError("vectors contain NaN or infinity")
    matrix = sp.csr_matrix((data.astype(np.float32), cols, indptr), shape=(len(rows), dim))
    matrix.eliminate_zeros()
    return matrix


def _check_matrix(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Canonical form for a CSR batch given as a matrix: float32, sorted unique indices, finite, no zeros."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    matrix.sum_duplicates()  # also sorts the indices
    if not np.isfinite(matrix.data).all():
        raise ValueError("vectors contain NaN or infinity")
    matrix.eliminate_zeros()
    return matrix


class SparseIndex:
    """Exact dot-product search over sparse vectors (SPLADE and other lexical/learned-sparse models).

    Build one with :meth:`from_texts` (embeds through a ``poolkit.LLM`` of a sparse
    model), :meth:`from_vectors`, or ``SparseIndex(dim)`` then :meth:`add`.

    Args:
        dim: the vocabulary size; ``None``: taken from the first vector that has one.
        id_type: ``"int"`` or ``"str"`` keys (as :class:`~poolkit_faiss.store.VectorIndex`).
        llm: optional ``poolkit.LLM`` of a sparse model, for the ``*_texts`` methods.
        model_name: recorded in the manifest (default: the llm's served name).
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        id_type: IdType = "int",
        llm: Any = None,
        model_name: str | None = None,
    ) -> None:
        if id_type not in ("int", "str"):
            raise ValueError("id_type must be 'int' or 'str'")
        if dim is not None and (isinstance(dim, bool) or int(dim) < 1):
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._dim: int | None = None if dim is None else int(dim)
        self.id_type: IdType = id_type
        self.llm = llm
        self.model_name = model_name or (str(llm.model_config.served_model_name) if llm is not None else None)
        self._matrix = sp.csr_matrix((0, self._dim or 0), dtype=np.float32)  # consolidated document rows
        self._keys = np.empty(0, dtype=np.int64 if id_type == "int" else object)  # id of each row
        # Rows added since the last consolidation: vstack-ing on every add would make building an
        # index in many small batches quadratic; they are stacked once, before the next search.
        self._pending: list[sp.csr_matrix] = []
        self._pending_keys: list[np.ndarray] = []
        self._row_of: dict[Key, int] = {}  # id -> row in (consolidated + pending) order
        self._next_id = 0
        self._inverted: sp.csr_matrix | None = None  # (dim, n) transpose; None = stale

    # -- construction -------------------------------------------------------

    @classmethod
    def from_vectors(
        cls, vectors: Any, ids: Sequence[Key] | None = None, *, dim: int | None = None,
        id_type: IdType | None = None, llm: Any = None, model_name: str | None = None,
    ) -> SparseIndex:
        """A new index holding ``vectors`` (any batch form) under ``ids``."""
        index = cls(dim, id_type=id_type or _infer_id_type(ids), llm=llm, model_name=model_name)
        index.add(vectors, ids)
        return index

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        llm: Any,
        ids: Sequence[Key] | None = None,
        *,
        id_type: IdType | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        truncate_prompt_tokens: int | None = -1,
        prompt_name: str | None = None,
        prompt: str | None = None,
        show_progress: bool | None = None,
    ) -> SparseIndex:
        """Embed ``texts`` with a sparse model's ``llm.embed`` in batches (tqdm bar) and index them.

        ``truncate_prompt_tokens=-1`` (default) cuts passages longer than the model
        limit instead of failing on them, as :meth:`VectorIndex.from_texts` does.
        ``prompt_name`` / ``prompt`` are passed to ``LLM.embed`` when given.
        """
        index = cls(id_type=id_type or _infer_id_type(ids), llm=llm)
        index.add_texts(texts, ids, batch_size=batch_size, truncate_prompt_tokens=truncate_prompt_tokens,
                        prompt_name=prompt_name, prompt=prompt, show_progress=show_progress)
        return index

    # -- properties ---------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """The vocabulary size (``None`` until fixed by the constructor or the first vector)."""
        return self._dim

    @property
    def nnz(self) -> int:
        """Stored non-zero weights."""
        return int(self._matrix.nnz + sum(m.nnz for m in self._pending))

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, key: object) -> bool:
        return self._norm_key(key) in self._row_of

    def ids(self) -> list[Key]:
        """The ids in row order (insertion order; an upserted vector counts as newly added)."""
        self._consolidate()
        return [_py(k) for k in self._keys.tolist()]

    def __repr__(self) -> str:
        n = len(self)
        active = f"{self.nnz / n:.1f}" if n else "0"
        model = f", model={self.model_name!r}" if self.model_name else ""
        return f"SparseIndex(dim={self._dim}, n={n}, nnz={self.nnz}, avg_active={active}, id_type={self.id_type!r}{model})"

    # -- writing ------------------------------------------------------------

    def prepare(self, vectors: Any) -> sp.csr_matrix:
        """A batch in any accepted form → a checked float32 CSR matrix ``(n, dim)``.

        Validates everything (dimension, indices, values) without changing the index;
        an index without a dimension takes the matrix's width when the rows are added.
        """
        rows, dim = _rows(vectors)
        if isinstance(rows, list) and not rows and dim is None:  # an empty batch: nothing to check
            return sp.csr_matrix((0, self._dim or 0), dtype=np.float32)
        dim = self._settle_dim(dim)
        if isinstance(rows, sp.csr_matrix):
            return _check_matrix(rows)
        return _build_csr(rows, dim)

    def _settle_dim(self, dim: int | None) -> int:
        if dim is not None and self._dim is not None and dim != self._dim:
            raise ValueError(f"vectors have dimension {dim}; this index has dimension {self._dim}")
        resolved = self._dim if self._dim is not None else dim
        if resolved is None:
            raise ValueError(
                "the index has no dimension yet and these vectors carry none ((indices, values) pairs and dicts "
                "do not): pass dim= (the model's vocabulary size) to SparseIndex(...)"
            )
        return resolved

    def add(self, vectors: Any, ids: Sequence[Key] | None = None) -> list[Key]:
        """Add vectors under new ids (generated when ``ids`` is None); return the ids.

        Raises ``ValueError`` if an id is already present or repeated (use :meth:`upsert`).
        """
        matrix = self.prepare(vectors)
        keys = self._new_keys(ids, matrix.shape[0])
        self._append(matrix, keys)
        return [_py(k) for k in keys.tolist()]

    def upsert(self, vectors: Any, ids: Sequence[Key]) -> list[Key]:
        """Insert or replace: ``delete(ids)`` then ``add(vectors, ids)`` (all checks happen first)."""
        if ids is None:
            raise ValueError("upsert needs ids")
        ids = list(ids)
        matrix = self.prepare(vectors)  # validate everything before deleting anything
        self._check_keys(ids, matrix.shape[0])
        self.delete(ids)
        return self.add(matrix, ids)

    def delete(self, ids: Iterable[Key]) -> int:
        """Remove these ids; missing ones are ignored. Returns how many were removed."""
        doomed = {self._row_of[k] for k in (self._norm_key(i) for i in ids) if k in self._row_of}
        if not doomed:
            return 0
        self._consolidate()
        keep = np.ones(self._matrix.shape[0], dtype=bool)
        keep[np.fromiter(doomed, dtype=np.int64, count=len(doomed))] = False
        self._matrix = self._matrix[keep]
        self._keys = self._keys[keep]
        self._row_of = {k: r for r, k in enumerate(self._keys.tolist())}
        self._inverted = None
        return len(doomed)

    def reconstruct(self, ids: Sequence[Key]) -> sp.csr_matrix:
        """The stored vectors of ``ids`` as CSR rows, in the order asked. ``KeyError`` for missing ids."""
        keys = [self._norm_key(i) for i in ids]
        missing = [k for k in keys if k not in self._row_of]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        self._consolidate()
        rows = np.array([self._row_of[k] for k in keys], dtype=np.int64)
        return self._matrix[rows] if len(rows) else sp.csr_matrix((0, self._dim or 0), dtype=np.float32)

    def _append(self, matrix: sp.csr_matrix, keys: np.ndarray) -> None:
        if not matrix.shape[0]:
            return
        if self._dim is None:  # the first vectors fix the dimension
            self._dim = int(matrix.shape[1])
            self._matrix = sp.csr_matrix((0, self._dim), dtype=np.float32)
        start = len(self._row_of)
        for offset, key in enumerate(keys.tolist()):
            self._row_of[key] = start + offset
        self._pending.append(matrix)
        self._pending_keys.append(keys)
        if self.id_type == "int":
            self._next_id = max(self._next_id, int(keys.max()) + 1)
        self._inverted = None

    def _consolidate(self) -> None:
        if not self._pending:
            return
        self._matrix = sp.csr_matrix(sp.vstack([self._matrix, *self._pending], format="csr"), dtype=np.float32)
        self._keys = np.concatenate([self._keys, *self._pending_keys])
        self._pending.clear()
        self._pending_keys.clear()

    # -- ids ----------------------------------------------------------------

    def _norm_key(self, key: Any) -> Any:
        """A key as stored in ``_row_of`` (Python int / str); unusable keys map to a sentinel that is never present."""
        if self.id_type == "str":
            return key if isinstance(key, str) else _ABSENT
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return int(key)
        return _ABSENT

    def _check_keys(self, ids: list[Key], n: int) -> None:
        """Count, uniqueness, type and range of keys (not whether they are present)."""
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} vectors")
        if self.id_type == "str":
            if not all(isinstance(i, str) for i in ids):
                raise TypeError("this index has string ids")
        else:
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
                raise TypeError("this index has int ids (pass id_type='str' for string ids)")
            if any(not 0 <= int(i) <= MAX_ID for i in ids):
                raise ValueError("int ids must be in [0, 2**63 - 1]")
        if len({self._norm_key(i) for i in ids}) != n:
            raise ValueError("duplicate ids in one call")

    def _new_keys(self, ids: Sequence[Key] | None, n: int) -> np.ndarray:
        """Keys for ``n`` new rows; raise if any is present or repeated. Registers nothing."""
        if ids is None:
            if self.id_type == "str":
                return np.array([str(uuid.uuid4()) for _ in range(n)], dtype=object)
            return np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        ids = list(ids)
        self._check_keys(ids, n)
        present = [i for i in ids if self._norm_key(i) in self._row_of]
        if present:
            more = "..." if len(present) > 5 else ""
            raise ValueError(f"ids already present: {[_py(i) for i in present[:5]]}{more}; use upsert()")
        if self.id_type == "str":
            return np.array(ids, dtype=object)
        return np.array([int(i) for i in ids], dtype=np.int64)

    # -- search -------------------------------------------------------------

    def _inverted_index(self) -> sp.csr_matrix:
        """The ``(dim, n)`` transpose in CSR form: row ``t`` is the posting list of dimension ``t``."""
        self._consolidate()
        if self._inverted is None:
            self._inverted = sp.csr_matrix(self._matrix.T.tocsr(), dtype=np.float32)
        return self._inverted

    def search(self, query: Any, k: int = 10) -> SearchResult:
        """Top-``k`` documents for one query vector (any accepted form); a one-row :class:`SearchResult`."""
        if sp.issparse(query):
            if query.ndim == 2 and query.shape[0] != 1:
                raise ValueError(f"search takes one query (use search_batch for several), got {query.shape[0]} rows")
            return self.search_batch([query], k)
        if _is_single(query) or isinstance(query, tuple):
            return self.search_batch([query], k)
        dense = np.asarray(query) if not isinstance(query, list) else np.asarray(query, dtype=object)
        if dense.ndim != 1 or (dense.dtype == object and not all(isinstance(x, (int, float, np.number)) for x in dense)):
            raise ValueError(f"search takes one query (use search_batch for several), got {type(query).__name__} "
                             f"of shape {dense.shape}")
        if dense.dtype == object:
            dense = dense.astype(np.float64)
        return self.search_batch(dense[None, :], k)

    def search_batch(self, queries: Any, k: int = 10) -> SearchResult:
        """Top-``k`` documents (by dot product) for each query: :class:`SearchResult` of shape ``(n_queries, k)``.

        Documents with score 0 are not results; ties are ordered by id ascending
        (see the module docstring).
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        if self._dim is None:  # nothing added yet and no dimension to check queries against
            rows, _ = _rows(queries)
            return self._empty(rows.shape[0] if isinstance(rows, sp.csr_matrix) else len(rows), k)
        q = self._prepare_queries(queries)
        result = self._empty(q.shape[0], k)
        if len(self) == 0:
            return result
        inverted = self._inverted_index()
        keys = self._keys
        for start in range(0, q.shape[0], QUERY_CHUNK):
            scores = sp.csr_matrix(q[start : start + QUERY_CHUNK] @ inverted)
            for offset in range(scores.shape[0]):
                lo, hi = scores.indptr[offset], scores.indptr[offset + 1]
                rows, order_scores = self._top_k(scores.indices[lo:hi], scores.data[lo:hi], k, keys)
                result.ids[start + offset, : len(rows)] = keys[rows]
                result.scores[start + offset, : len(rows)] = order_scores
        return result

    def _prepare_queries(self, queries: Any) -> sp.csr_matrix:
        rows, dim = _rows(queries)
        if dim is not None and dim != self._dim:
            raise ValueError(f"queries have dimension {dim}; this index has dimension {self._dim}")
        assert self._dim is not None
        return _check_matrix(rows) if isinstance(rows, sp.csr_matrix) else _build_csr(rows, self._dim)

    def _empty(self, n: int, k: int) -> SearchResult:
        if self.id_type == "str":
            ids = np.full((n, k), None, dtype=object)
        else:
            ids = np.full((n, k), -1, dtype=np.int64)
        return SearchResult(ids=ids, scores=np.full((n, k), -np.inf, dtype=np.float32))

    @staticmethod
    def _top_k(rows: np.ndarray, scores: np.ndarray, k: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of one query's matches, by score descending then id ascending."""
        nonzero = scores != 0  # scipy may keep entries whose products cancelled out
        rows, scores = rows[nonzero], scores[nonzero]
        if len(scores) > k:
            # argpartition finds the k-th best score in O(n); every match scoring at least that much
            # is kept, so a tie straddling the k-th place is settled by id below, not by argpartition.
            kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
            keep = scores >= kth
            rows, scores = rows[keep], scores[keep]
        tie_keys = keys[rows]
        if tie_keys.dtype == object:  # string ids: lexsort needs a numpy string array
            tie_keys = tie_keys.astype(np.str_)
        order = np.lexsort((tie_keys, -scores))[:k]
        return rows[order], scores[order]

    # -- texts --------------------------------------------------------------

    def _require_llm(self) -> Any:
        if self.llm is None:
            raise ValueError("this SparseIndex has no llm; pass llm= when building or loading it")
        return self.llm

    def embed(
        self,
        texts: Sequence[str],
        *,
        truncate_prompt_tokens: int | None = -1,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> sp.csr_matrix:
        """Sparse vectors of ``texts`` from the index's model, as a CSR matrix ``(len(texts), dim)``."""
        llm = self._require_llm()
        texts = list(texts)
        if not texts:
            return sp.csr_matrix((0, self._dim or 0), dtype=np.float32)
        extra = {key: value for key, value in (("prompt_name", prompt_name), ("prompt", prompt)) if value is not None}
        outputs = llm.embed(texts, truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=False, **extra)
        for out in outputs:
            if not _is_sparse_output(out.outputs):
                name = getattr(llm.model_config, "served_model_name", "the model")
                raise ValueError(
                    f"{name!r} gives dense embeddings ({type(out.outputs).__name__}); a SparseIndex needs a "
                    "sparse (SPLADE) model, whose LLM.embed outputs are SparseEmbeddingOutput"
                )
        truncated = sum(bool(getattr(o, "truncated", False)) for o in outputs)
        if truncated:
            logger.warning("%d of %d texts were longer than the model's limit and were truncated "
                           "(truncate_prompt_tokens=%s)", truncated, len(outputs), truncate_prompt_tokens)
        return self.prepare([o.outputs for o in outputs])

    def add_texts(
        self,
        texts: Sequence[str],
        ids: Sequence[Key] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        truncate_prompt_tokens: int | None = -1,
        prompt_name: str | None = None,
        prompt: str | None = None,
        show_progress: bool | None = None,
    ) -> list[Key]:
        """Embed texts in batches and :meth:`add` them; a bad or present id fails before any embedding."""
        texts = list(texts)
        keys = None if ids is None else list(ids)
        if keys is not None:
            self._new_keys(keys, len(texts))  # fail before embedding anything
        out: list[Key] = []
        with tqdm(total=len(texts), desc="Embedding", unit="text",
                  disable=None if show_progress is None else not show_progress) as bar:
            for part in batches(len(texts), batch_size):
                vectors = self.embed(texts[part], truncate_prompt_tokens=truncate_prompt_tokens,
                                     prompt_name=prompt_name, prompt=prompt)
                out += self.add(vectors, None if keys is None else keys[part])
                bar.update(vectors.shape[0])
        return out

    def search_texts(
        self, texts: Sequence[str] | str, k: int = 10, *, prompt_name: str | None = None, prompt: str | None = None,
    ) -> SearchResult:
        """Embed queries with the index's model and :meth:`search_batch`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.search_batch(self.embed(texts, prompt_name=prompt_name, prompt=prompt), k)

    # -- persistence --------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``sparse_manifest.json``, ``sparse_matrix.npz`` and ``sparse_ids.npz`` into directory ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self._consolidate()
        tmp_matrix = folder / (MATRIX_FILE + ".tmp.npz")  # save_npz appends .npz to other names
        sp.save_npz(tmp_matrix, self._matrix, compressed=False)
        tmp_ids = folder / (IDS_FILE + ".tmp.npz")
        if self.id_type == "str":
            np.savez(tmp_ids, str_keys=np.array(self._keys.tolist(), dtype=np.str_))
        else:
            np.savez(tmp_ids, int_keys=self._keys.astype(np.int64))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dim": self._dim,
            "id_type": self.id_type,
            "n_vectors": len(self),
            "nnz": self.nnz,
            "next_id": self._next_id,
            "model_name": self.model_name,
            "dtype": "float32",
            "files": {"matrix": MATRIX_FILE, "ids": IDS_FILE},
        }
        tmp_manifest = folder / (MANIFEST_FILE + ".tmp")
        tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # The manifest goes last: a reader that sees the new manifest sees the new data files too.
        os.replace(tmp_matrix, folder / MATRIX_FILE)
        os.replace(tmp_ids, folder / IDS_FILE)
        os.replace(tmp_manifest, folder / MANIFEST_FILE)
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, llm: Any = None) -> SparseIndex:
        """Read an index written by :meth:`save` (nothing is unpickled)."""
        folder = Path(path)
        manifest = read_manifest(folder / MANIFEST_FILE, FORMAT_NAME, FORMAT_VERSION, "SparseIndex")
        if llm is not None and manifest.get("model_name") and llm.model_config.served_model_name != manifest["model_name"]:
            logger.warning("sparse index was built with %r; loading it with %r",
                           manifest["model_name"], llm.model_config.served_model_name)
        index = cls(manifest["dim"], id_type=manifest["id_type"], llm=llm, model_name=manifest.get("model_name"))
        matrix = sp.csr_matrix(sp.load_npz(folder / manifest["files"]["matrix"]), dtype=np.float32)
        with np.load(folder / manifest["files"]["ids"], allow_pickle=False) as data:
            if index.id_type == "str":
                keys = np.array(data["str_keys"].tolist(), dtype=object)
            else:
                keys = data["int_keys"].astype(np.int64)
        if matrix.shape[0] != len(keys) or (manifest["dim"] is not None and matrix.shape[1] != manifest["dim"]):
            raise ValueError(f"{folder}: matrix of shape {matrix.shape} for {len(keys)} ids and dim {manifest['dim']}")
        index._matrix = matrix
        index._keys = keys
        index._row_of = {k: r for r, k in enumerate(keys.tolist())}
        if len(index._row_of) != len(keys):
            raise ValueError(f"{folder}: repeated ids in {manifest['files']['ids']}")
        index._next_id = int(manifest["next_id"])
        return index


class _Absent:
    """A key that is never in an index (for ids of the wrong type in ``delete`` / ``in``)."""

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _py(value: Any) -> Key:
    return int(value) if isinstance(value, (np.integer, int)) else str(value)


def _infer_id_type(ids: Sequence[Key] | None) -> IdType:
    if ids is None:
        return "int"
    for key in ids:
        return "str" if isinstance(key, str) else "int"
    return "int"

