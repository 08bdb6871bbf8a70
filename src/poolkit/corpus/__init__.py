"""Corpus embedding: ``poolkit embed INPUT --model ... --out DIR``.

The input (JSON Lines or Parquet) is cut into fixed-size shards by row range.
The embedded column holds texts (``text_column``) or, for image-text models
(CLIP, SigLIP), images (``image_column``: file paths relative to the input
file's folder, or encoded bytes in Parquet). Each shard is embedded and written
on its own as ``DIR/shard-NNNNN.parquet``
(columns ``id``, ``embedding``, ``num_tokens``, ``truncated``), atomically: a
temporary file renamed into place. ``DIR/manifest.json`` lists the job and the
finished shards, so a rerun of the same command skips them and embeds only
what is missing. Shards run on an executor: ``local`` (this process, one
model) is built in; others are plugins found through the ``poolkit.executors``
entry-point group, e.g. ``ray`` (a Ray Data actor pool, ``poolkit-ray``) and
``lightning`` (``Trainer.predict`` across devices/processes, ``poolkit-lightning``).

Nothing is cut silently: over-long texts are truncated to ``truncate`` tokens
(default ``-1``, the model's limit) and counted in the summary; with
``truncate=None`` they are an error; with ``chunked=True`` (``--chunked``) they
are embedded whole, in chunks merged into one vector.

The modules, by job:

- :mod:`~poolkit.corpus.sources`: the input and its shards (:class:`CorpusSource`, :class:`ShardSpec`);
- :mod:`~poolkit.corpus.options`: what every text is embedded with (:class:`EmbedOptions`);
- :mod:`~poolkit.corpus.embedder`: tokenizing (:class:`TextTokenizer`, no model needed) and
  embedding (:class:`Embedder`) on the task layer;
- :mod:`~poolkit.corpus.parquet`: Arrow/Parquet helpers (atomic writes, embedding columns);
- :mod:`~poolkit.corpus.shards`: the job's identity and one shard's work (:class:`CorpusJob`,
  :func:`process_shard`);
- :mod:`~poolkit.corpus.manifest`: the finished shards (:class:`Manifest`);
- :mod:`~poolkit.corpus.executors`: where shards run (:class:`CorpusExecutor` and its discovery);
- :mod:`~poolkit.corpus.run`: the driver (:func:`embed_corpus`) and reading the result back.
"""

from .embedder import Embedded, Embedder, TextTokenizer, concat_embedded
from .executors import (
    BUILTIN_EXECUTORS,
    ENTRY_POINT_GROUP,
    CorpusExecutor,
    LocalExecutor,
    available_executors,
    executor_entry_points,
    load_executor,
    make_executor,
)
from .manifest import MANIFEST_NAME, Manifest
from .options import EmbedOptions
from .parquet import embedding_matrix, embeddings_table, require_pyarrow, write_table_atomic
from .run import CorpusSummary, ShardRecorder, check_image_job, embed_corpus, read_corpus_embeddings
from .shards import (
    DEFAULT_BATCH_SIZE,
    FORMAT_VERSION,
    MODEL_CONFIG_KWARGS,
    SHARD_METADATA_KEY,
    CorpusJob,
    ShardStats,
    process_shard,
    read_shard_metadata,
)
from .sources import DEFAULT_SHARD_SIZE, CorpusSource, ShardSpec, shard_file_name

__all__ = [
    "BUILTIN_EXECUTORS", "DEFAULT_BATCH_SIZE", "DEFAULT_SHARD_SIZE", "ENTRY_POINT_GROUP", "FORMAT_VERSION",
    "MANIFEST_NAME", "MODEL_CONFIG_KWARGS", "SHARD_METADATA_KEY",
    "CorpusExecutor", "CorpusJob", "CorpusSource", "CorpusSummary", "EmbedOptions", "Embedded", "Embedder",
    "LocalExecutor",
    "Manifest", "ShardRecorder", "ShardSpec", "ShardStats", "TextTokenizer",
    "available_executors", "check_image_job", "concat_embedded", "embed_corpus", "embedding_matrix", "embeddings_table",
    "executor_entry_points", "load_executor", "make_executor", "process_shard", "read_corpus_embeddings",
    "read_shard_metadata", "require_pyarrow", "shard_file_name", "write_table_atomic",
]
