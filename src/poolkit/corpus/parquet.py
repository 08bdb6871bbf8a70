"""Parquet helpers shared by the corpus job and the integrations' writers.

pyarrow is imported lazily: it is the ``corpus`` extra (and comes with
poolkit-ray / poolkit-lightning), not a dependency of poolkit's core.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


def require_pyarrow() -> Any:
    """The ``pyarrow`` module, or an ``ImportError`` that says how to get it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - pyarrow ships with both integrations
        raise ImportError(
            "Corpus embedding reads and writes Parquet and needs pyarrow: pip install pyarrow "
            "(it comes with poolkit-ray and poolkit-lightning)"
        ) from exc
    import pyarrow as pa

    return pa


def embeddings_table(
    ids: Sequence[Any] | np.ndarray,
    vectors: np.ndarray,
    *,
    num_tokens: np.ndarray | None = None,
    truncated: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
    metadata: dict[bytes, bytes] | None = None,
) -> pa.Table:
    """An Arrow table with ``id`` and ``embedding`` (fixed-size list of float32) columns."""
    pa = require_pyarrow()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape if vectors.ndim == 2 else (len(ids), 0)
    columns: dict[str, Any] = {}
    columns.update(extra or {})
    columns["id"] = pa.array(ids.tolist() if isinstance(ids, np.ndarray) else list(ids))
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    if num_tokens is not None:
        columns["num_tokens"] = pa.array(np.asarray(num_tokens, dtype=np.int32))
    if truncated is not None:
        columns["truncated"] = pa.array(np.asarray(truncated, dtype=bool))
    table = pa.table(columns)
    if len(table) != n:
        raise ValueError(f"{len(table)} ids for {n} vectors")
    return table.replace_schema_metadata(metadata) if metadata else table


def write_table_atomic(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` to ``path`` via a temporary file and a rename: readers never see half a file."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def embedding_matrix(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """The embedding column of an Arrow table as a float32 [n, dim] array (no copy when possible)."""
    pa = require_pyarrow()
    col = table.column(column).combine_chunks() if isinstance(table, pa.Table) else table
    if len(col) == 0:
        size = col.type.list_size if pa.types.is_fixed_size_list(col.type) else 0
        return np.zeros((0, size), dtype=np.float32)
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(
            np.float32, copy=False)
    return np.asarray(col.to_pylist(), dtype=np.float32)
