"""A corpus job and its shards: what identifies the job, and embedding + writing one shard.

A :class:`CorpusJob` is everything a worker needs to embed any shard (it is
pickled to Ray actors and re-created by every Lightning rank), and its
:meth:`~CorpusJob.fingerprint` decides whether shard files of an earlier run
can be reused: a shard file carries the fingerprint in its Parquet metadata,
so a file is trusted only if it was written for exactly this job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .embedder import Embedded, Embedder, TextTokenizer, concat_embedded
from .options import EmbedOptions
from .parquet import embeddings_table, write_table_atomic
from .sources import CorpusSource, ShardSpec

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

SHARD_METADATA_KEY = b"poolkit.corpus"
FORMAT_VERSION = 1
DEFAULT_BATCH_SIZE = 1024
# LLM(...) settings that change the vectors (and so the job's identity); the others
# (dtype, device, batching...) change only how fast they are computed.
MODEL_CONFIG_KWARGS = ("hf_overrides", "trust_remote_code", "max_model_len", "served_model_name",
                       "override_pooler_config")


@dataclass
class ShardStats:
    """What embedding one shard took: rows, their tokens (``num_tokens`` summed), truncated rows, seconds."""

    index: int
    rows: int
    tokens: int
    truncated: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CorpusJob:
    """Everything a worker needs to embed and write any shard of the corpus (picklable).

    ``options``: what every text is embedded with (:class:`EmbedOptions`: dimensions, truncation,
    prompt, chunked processing).
    """

    source: CorpusSource
    out_dir: str
    model: str | None
    options: EmbedOptions = field(default_factory=EmbedOptions)
    batch_size: int = DEFAULT_BATCH_SIZE
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What must match for shards of an earlier run to be reused.

        The options' optional keys (prompt, chunked) appear only when asked for, so jobs
        without them keep the fingerprint they had before those were part of a job
        (their finished shards stay reusable); see :meth:`EmbedOptions.identity`.
        """
        src = self.source
        identity = {
            "version": FORMAT_VERSION,
            "input": src.path, "input_bytes": src.size_bytes, "format": src.format,
            "text_column": src.text_column, "id_column": src.id_column, "num_rows": src.num_rows,
            "shard_size": src.shard_size, "model": self.model, **self.options.identity(),
            "engine_kwargs": {k: self.engine_kwargs[k] for k in sorted(self.engine_kwargs)
                              if k in MODEL_CONFIG_KWARGS},
        }
        if src.image_column is not None:  # only for image jobs: text jobs keep their fingerprints
            identity["image_column"] = src.image_column
        return identity

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def make_embedder(self, **overrides: Any) -> Embedder:
        """This job's model, loaded here; ``overrides`` replace engine settings (e.g. ``device``)."""
        return Embedder.from_model(self.model, self.options, **{**self.engine_kwargs, **overrides})

    def make_tokenizer(self) -> TextTokenizer:
        """Prepares requests for :meth:`make_embedder`'s ``run`` without loading the model (picklable)."""
        return TextTokenizer(self.model, self.options, **self.engine_kwargs)

    def shard_path(self, spec: ShardSpec) -> Path:
        return Path(self.out_dir) / spec.file_name

    def shard_table(self, spec: ShardSpec, ids: Sequence[Any], embedded: Embedded,
                    seconds: float) -> tuple[pa.Table, ShardStats]:
        """The shard's table, its metadata (fingerprint, rows, stats) in the schema, and its stats."""
        stats = ShardStats(spec.index, len(ids), int(embedded.num_tokens.sum()), int(embedded.truncated.sum()),
                           round(seconds, 4))
        meta = {"fingerprint": self.fingerprint, "row_start": spec.row_start, "row_stop": spec.row_stop,
                **stats.to_dict()}
        table = embeddings_table(ids, embedded.vectors, num_tokens=embedded.num_tokens, truncated=embedded.truncated,
                                 metadata={SHARD_METADATA_KEY: json.dumps(meta).encode()})
        return table, stats

    def write_shard(self, spec: ShardSpec, ids: Sequence[Any], embedded: Embedded, seconds: float) -> ShardStats:
        """Write the shard file atomically (rewriting it is harmless: retries are idempotent)."""
        table, stats = self.shard_table(spec, ids, embedded, seconds)
        write_table_atomic(table, self.shard_path(spec))
        return stats


def process_shard(
    job: CorpusJob, spec: ShardSpec, embedder: Embedder, on_rows: Callable[[int], None] | None = None
) -> ShardStats:
    """Read, embed and atomically write one shard (texts or images); idempotent (safe to retry).

    Rows go to the model ``job.batch_size`` at a time (the engine batches by
    token budget inside); an error names the shard and rows, and the prompt
    numbers in it are the input's row numbers.
    """
    start = time.perf_counter()
    ids, inputs = job.source.read(spec)  # texts, or images for an image corpus
    parts = []
    for lo in range(0, len(inputs), job.batch_size):
        chunk = inputs[lo:lo + job.batch_size]
        first = spec.row_start + lo
        try:
            parts.append(embedder.embed(chunk, first_index=first))
        except ValueError as exc:
            raise ValueError(f"shard {spec.index}, rows {first}-{first + len(chunk) - 1}: {exc}") from exc
        if on_rows:
            on_rows(len(chunk))
    return job.write_shard(spec, ids, concat_embedded(parts, embedder.dim), time.perf_counter() - start)


def read_shard_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The poolkit metadata of a written shard file (``None`` if absent or unreadable)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # a broken file is simply not a finished shard
        return None
    raw = meta.get(SHARD_METADATA_KEY)
    return json.loads(raw) if raw else None
