"""Embedding a Ray Dataset with poolkit: an actor pool, one model per actor, streaming."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from poolkit.corpus import Embedder, EmbedOptions, embedding_matrix

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 512


class PoolkitEmbedder:
    """Ray Data callable class: loads one poolkit model per actor and embeds a text column.

    Used by :func:`embed_dataset` through ``Dataset.map_batches`` with
    ``batch_format="pyarrow"``. Subclass it (and pass ``embedder_cls=``) to
    pre- or post-process batches.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        text_column: str = "text",
        output_column: str = "embedding",
        dimensions: int | None = None,
        truncate: int | None = -1,
        prompt_name: str | None = None,
        prompt: str | None = None,
        num_tokens_column: str | None = None,
        truncated_column: str | None = None,
        use_gpu: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        kwargs = dict(engine_kwargs or {})
        # Ray hides the GPUs an actor did not ask for; be explicit either way.
        kwargs.setdefault("device", "cuda" if use_gpu else "cpu")
        options = EmbedOptions(dimensions=dimensions, truncate=truncate, prompt_name=prompt_name, prompt=prompt)
        self.embedder = Embedder.from_model(model, options, **kwargs)
        self.text_column = text_column
        self.output_column = output_column
        self.num_tokens_column = num_tokens_column
        self.truncated_column = truncated_column
        logger.info("poolkit actor pid %d ready: %r", os.getpid(), self.embedder.llm)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(self.text_column).to_pylist()
        embedded = self.embedder.embed(texts)
        vectors = pa.FixedSizeListArray.from_arrays(
            pa.array(embedded.vectors.reshape(-1), pa.float32()), self.embedder.dim)
        batch = _put_column(batch, self.output_column, vectors)
        if self.num_tokens_column:
            batch = _put_column(batch, self.num_tokens_column, pa.array(embedded.num_tokens))
        if self.truncated_column:
            batch = _put_column(batch, self.truncated_column, pa.array(embedded.truncated))
        return batch


def _put_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, values) if index >= 0 else table.append_column(name, values)


def _cluster_resources() -> dict[str, float]:
    import ray

    if not ray.is_initialized():
        ray.init()
    return ray.cluster_resources()


def plan_workers(
    workers: int | tuple[int, int] | None,
    num_gpus_per_worker: float | None,
    num_cpus_per_worker: float | None = None,
) -> tuple[Any, float, float | None]:
    """The actor pool (an ``ActorPoolStrategy``), GPUs per actor and CPUs per actor.

    Defaults: one GPU per actor when the cluster has GPUs (as many actors as
    GPUs allow), else CPU actors (as many as the cluster's CPUs allow).
    """
    from ray.data import ActorPoolStrategy

    resources: dict[str, float] | None = None
    if num_gpus_per_worker is None:
        resources = _cluster_resources()
        num_gpus_per_worker = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if num_gpus_per_worker < 0:
        raise ValueError("num_gpus_per_worker must be >= 0")
    if workers is None:
        resources = resources or _cluster_resources()
        if num_gpus_per_worker > 0:
            limit = int(resources.get("GPU", 0) // num_gpus_per_worker)
        else:
            limit = int(resources.get("CPU", 1) // (num_cpus_per_worker or 1))
        workers = (1, max(1, limit))
    if isinstance(workers, int):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        compute = ActorPoolStrategy(size=workers)
    else:
        low, high = workers
        compute = ActorPoolStrategy(min_size=low, max_size=high)
    return compute, float(num_gpus_per_worker), num_cpus_per_worker


def embed_dataset(
    ds: Any,
    model: str | None = None,
    *,
    text_column: str = "text",
    output_column: str = "embedding",
    dimensions: int | None = None,
    truncate: int | None = -1,
    prompt_name: str | None = None,
    prompt: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_gpus_per_worker: float | None = None,
    num_cpus_per_worker: float | None = None,
    workers: int | tuple[int, int] | None = None,
    num_tokens_column: str | None = None,
    truncated_column: str | None = None,
    embedder_cls: type[PoolkitEmbedder] = PoolkitEmbedder,
    **engine_kwargs: Any,
) -> Any:
    """Add an embedding column to a Ray Dataset (lazy and streaming: nothing runs until consumed).

    Every input row comes out once with all its columns plus ``output_column``
    (a fixed-size list of float32, L2-normalized as the model defines).
    Batches run on a pool of actors (``compute=ActorPoolStrategy``), each
    holding one model; Ray restarts an actor that dies and retries its batch.

    Args:
        ds: a ``ray.data.Dataset`` with a string column ``text_column``.
        model: checkpoint directory or hub id, readable on every node (``None``: the default model).
        dimensions: Matryoshka output size.
        truncate: ``-1`` (model limit), ``N`` tokens, or ``None`` (error on over-long text).
        prompt_name / prompt: a Sentence-Transformers prompt put before every text, as in ``LLM.embed``.
        batch_size: rows per actor call (the engine batches by token budget inside).
        num_gpus_per_worker: GPUs per actor (fractions share a GPU); default 1 if the cluster has GPUs, else 0.
        num_cpus_per_worker: CPUs per actor (Ray also limits torch's threads to it).
        workers: actor pool size, or ``(min, max)`` to autoscale; default up to one per GPU (or CPU).
        num_tokens_column / truncated_column: also output tokens per row / whether it was truncated.
        embedder_cls: the callable class (a :class:`PoolkitEmbedder` subclass).
        **engine_kwargs: passed to ``poolkit.LLM`` in each actor (``dtype``, ``hf_overrides``...).
    """
    compute, gpus, cpus = plan_workers(workers, num_gpus_per_worker, num_cpus_per_worker)
    return ds.map_batches(
        embedder_cls,
        fn_constructor_kwargs={
            "model": model, "text_column": text_column, "output_column": output_column, "dimensions": dimensions,
            "truncate": truncate, "prompt_name": prompt_name, "prompt": prompt,
            "num_tokens_column": num_tokens_column, "truncated_column": truncated_column,
            "use_gpu": gpus > 0, "engine_kwargs": engine_kwargs,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=compute,
        num_gpus=gpus or None,
        num_cpus=cpus,
        udf_modifying_row_count=False,
    )


def write_embeddings_parquet(
    ds: Any,
    path: str | os.PathLike[str],
    *,
    columns: list[str] | None = None,
    **write_kwargs: Any,
) -> None:
    """Stream an embedded dataset to Parquet files under ``path`` (one or more per block).

    ``columns``: keep only these (e.g. ``["id", "embedding"]``).
    """
    if columns is not None:
        ds = ds.select_columns(columns)
    ds.write_parquet(str(path), **write_kwargs)


def iter_embedding_batches(
    source: Any,
    *,
    id_column: str = "id",
    embedding_column: str = "embedding",
    batch_size: int = 65_536,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, vectors)`` batches from a Ray Dataset, a Parquet file or a directory of them.

    ``vectors`` are float32 ``[n, dim]``: what a vector index's ``add`` takes,
    e.g. a poolkit_faiss index built shard by shard. Streams; never holds the corpus.
    """
    if isinstance(source, (str, os.PathLike)):
        import pyarrow.dataset as pads

        path = Path(source)
        files = sorted(str(p) for p in path.rglob("*.parquet")) if path.is_dir() else [str(path)]
        batches: Any = pads.dataset(files, format="parquet").to_batches(
            columns=[id_column, embedding_column], batch_size=batch_size)
    else:
        batches = source.iter_batches(batch_size=batch_size, batch_format="pyarrow")
    for batch in batches:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        if len(table) == 0:
            continue
        ids = table.column(id_column).to_numpy(zero_copy_only=False)
        yield ids, embedding_matrix(table, embedding_column)


def feed_index(
    index: Any,
    source: Any,
    *,
    upsert: bool = False,
    add: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    id_column: str = "id",
    embedding_column: str = "embedding",
    batch_size: int = 65_536,
) -> int:
    """Add every ``(id, embedding)`` of ``source`` to a vector index, batch by batch; returns the row count.

    ``index``: a ``poolkit_faiss.VectorIndex`` (``add(vectors, ids)``, or
    ``upsert(vectors, ids)`` with ``upsert=True`` so a rerun replaces rather
    than fails), a raw faiss index with ``add_with_ids`` (int64 ids), or
    anything else through ``add(vectors, ids)``. ``source``: a Ray Dataset or
    Parquet path (see :func:`iter_embedding_batches`).
    """
    if add is None:
        if hasattr(index, "add_with_ids"):  # raw faiss (IndexIDMap, IVF...)
            def add(vectors: np.ndarray, ids: np.ndarray) -> Any:
                return index.add_with_ids(vectors, ids.astype(np.int64))
        else:
            method = index.upsert if upsert else index.add

            def add(vectors: np.ndarray, ids: np.ndarray) -> Any:
                return method(vectors, ids.tolist())
    total = 0
    for ids, vectors in iter_embedding_batches(source, id_column=id_column, embedding_column=embedding_column,
                                               batch_size=batch_size):
        add(vectors, ids)
        total += len(ids)
    return total
