"""Running a corpus job: plan the shards, skip the finished ones, hand the rest to an executor.

The driver (:func:`embed_corpus`) owns the manifest: executors report each
finished shard to a :class:`ShardRecorder`, which records it and saves the
manifest at once, so an interrupted run keeps every shard that was written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .embedder import TextTokenizer
from .executors import CorpusExecutor, make_executor
from .manifest import MANIFEST_NAME, Manifest
from .options import EmbedOptions
from .parquet import require_pyarrow
from .shards import DEFAULT_BATCH_SIZE, CorpusJob, ShardStats
from .sources import DEFAULT_SHARD_SIZE, CorpusSource

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)


@dataclass
class CorpusSummary:
    """What one run did (``rows``/``tokens``: embedded in this run) and the state of the output."""

    out_dir: str
    engine: str
    rows: int
    tokens: int
    truncated: int
    seconds: float
    shards_done: int
    shards_skipped: int
    rows_skipped: int
    shards_total: int
    rows_total: int
    complete: bool
    primary: bool = True  # False in a worker process of a multi-process engine (it prints nothing)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one-line summary ``poolkit embed`` prints."""
        left = self.shards_total - self.shards_done - self.shards_skipped
        state = "complete" if self.complete else f"INCOMPLETE: {left} shards left, rerun to resume"
        return (
            f"embedded {self.rows:,} rows, {self.tokens:,} tokens in {self.seconds:.2f} s "
            f"({self.rows_per_s:,.1f} rows/s, {self.tokens_per_s:,.0f} tokens/s) with engine {self.engine}; "
            f"{self.truncated:,} rows truncated; skipped {self.shards_skipped} finished shards "
            f"({self.rows_skipped:,} rows); {self.out_dir}: {self.shards_done + self.shards_skipped}/"
            f"{self.shards_total} shards, {self.rows_total:,} rows, {state}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rows_per_s": round(self.rows_per_s, 2),
                "tokens_per_s": round(self.tokens_per_s, 2)}


class ShardRecorder:
    """Called by an executor as each shard finishes: records it and saves the manifest."""

    def __init__(self, manifest: Manifest, progress: Any) -> None:
        self.manifest = manifest
        self.progress = progress  # a tqdm bar (maybe disabled) or None
        self.done: list[ShardStats] = []
        # Set by an executor in a process that is not its job's coordinator (e.g. Lightning rank > 0):
        # that process must not write the manifest.
        self.read_only = False

    def __call__(self, stats: ShardStats, *, count_rows: bool = True) -> None:
        self.manifest.record(stats)
        self.manifest.save()
        self.done.append(stats)
        if count_rows and self.progress is not None:
            self.progress.update(stats.rows)
        logger.debug("Shard %05d: %d rows, %d tokens, %.2f s", stats.index, stats.rows, stats.tokens, stats.seconds)


def embed_corpus(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    engine: str | CorpusExecutor = "local",
    text_column: str = "text",
    image_column: str | None = None,
    id_column: str | None = "id",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dimensions: int | None = None,
    truncate: int | None = -1,
    prompt_name: str | None = None,
    prompt: str | None = None,
    chunked: bool = False,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    device: str | None = None,
    overwrite: bool = False,
    max_shards: int | None = None,
    progress: bool | None = None,
    engine_kwargs: dict[str, Any] | None = None,
) -> CorpusSummary:
    """Embed ``input_path`` into Parquet shards under ``out_dir``; resumable (see :mod:`poolkit.corpus`).

    Args:
        model: checkpoint directory or hub id (``None``: the bundled default).
        engine: an executor's name (``local``, or an installed one such as ``ray``,
            ``lightning``: see :func:`available_executors`), or a :class:`CorpusExecutor`.
        text_column: the column of texts to embed (when no ``image_column`` is given).
        image_column: embed images instead of texts, with an image-text model (CLIP, SigLIP): the
            column's image file paths (relative ones resolved against the input file's folder) or, in
            Parquet, encoded image bytes. Output shards are the same as for texts (``num_tokens`` 0,
            ``truncated`` false). Refused before any work for a text-only model, with ``prompt_name`` /
            ``prompt`` / ``chunked`` (texts only), and on an executor that does not declare images
            (:attr:`CorpusExecutor.modalities`; ``local`` does).
        id_column: column with row ids; if the input lacks it, row numbers are the ids.
        shard_size: rows per output shard (the unit of resumption).
        batch_size: rows handed to the engine at once (it batches by token budget inside).
        dimensions: Matryoshka output size.
        truncate: ``-1`` (model limit), ``N`` tokens, or ``None`` (error on over-long text).
        prompt_name / prompt: a Sentence-Transformers prompt put before every text, as in
            ``LLM.embed`` (part of the job's identity).
        chunked: embed texts longer than the model in chunks merged into one vector
            (``LLM.embed(..., enable_chunked_processing=True)``); implies no truncation, so
            ``truncate`` must be left at ``-1`` or ``None`` (``N`` tokens is a ``ValueError``).
            A chunked row's ``num_tokens`` is its text's whole token count, ``truncated`` false;
            texts over the model's ``max_embed_len`` are an error. Part of the job's identity.
        workers: Ray actors / Lightning devices (default: Ray 1 per GPU or 1; Lightning 1).
        gpus_per_worker: GPUs per Ray actor (default: 1 when the cluster has GPUs).
        device: ``cpu``/``cuda`` for the local engine, Lightning's accelerator otherwise.
        overwrite: delete the output of a different (or the same) earlier job first.
        max_shards: embed at most this many pending shards in this run (time-boxed jobs).
        progress: show a progress bar (default: only on a terminal).
        engine_kwargs: passed to ``LLM(...)`` (``dtype``, ``hf_overrides``, ``max_num_batched_tokens``...).
    """
    from tqdm.auto import tqdm

    require_pyarrow()
    options = EmbedOptions(dimensions=dimensions, truncate=truncate, prompt_name=prompt_name, prompt=prompt,
                           chunked=chunked)
    executor = make_executor(engine, workers=workers, gpus_per_worker=gpus_per_worker, device=device)
    if image_column is not None:
        if text_column != "text":
            raise ValueError(f"Embed one column: text_column={text_column!r} or image_column={image_column!r}, "
                             "not both")
        check_image_job(model, options, executor, dict(engine_kwargs or {}))
    t0 = time.perf_counter()
    source = CorpusSource.open(input_path, text_column=text_column, image_column=image_column, id_column=id_column,
                               shard_size=shard_size)
    job = CorpusJob(source, str(Path(out_dir).resolve()), model, options, batch_size, dict(engine_kwargs or {}))
    manifest = Manifest.open(job, overwrite=overwrite)
    pending = manifest.pending()
    skipped = len(source.shards) - len(pending)
    rows_skipped = sum(s.rows for s in source.shards if s.index in manifest.shards)
    if max_shards is not None:
        pending = pending[:max(0, max_shards)]
    logger.info("%s: %d rows in %d shards; %d finished, %d to embed now with %r",
                source.path, source.num_rows, len(source.shards), skipped, len(pending), executor)
    disable = (not progress) if progress is not None else None  # None: tqdm decides (off when not a TTY)
    bar = tqdm(total=source.num_rows, initial=rows_skipped, unit="row", desc="Embedding", disable=disable,
               dynamic_ncols=True)
    recorder = ShardRecorder(manifest, bar)
    try:
        if pending:
            executor.run(job, pending, recorder)
    finally:
        bar.close()
        seconds = time.perf_counter() - t0
        done = recorder.done
    if not recorder.read_only:
        manifest.runs.append({
            "engine": executor.name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - seconds)),
            "seconds": round(seconds, 3), "shards": len(done), "rows": sum(s.rows for s in done),
            "tokens": sum(s.tokens for s in done), "truncated": sum(s.truncated for s in done),
        })
        manifest.save()
    return CorpusSummary(
        out_dir=job.out_dir, engine=executor.name, rows=sum(s.rows for s in done),
        tokens=sum(s.tokens for s in done), truncated=sum(s.truncated for s in done), seconds=seconds,
        shards_done=len(done), shards_skipped=skipped, rows_skipped=rows_skipped, shards_total=len(source.shards),
        rows_total=source.num_rows, complete=manifest.complete, primary=not recorder.read_only,
    )


def check_image_job(model: str | None, options: EmbedOptions, executor: CorpusExecutor,
                    engine_kwargs: dict[str, Any]) -> None:
    """Refuse an image job before any work (no output directory, no shard, no weights loaded): options
    that apply to texts only, an executor that does not embed images, or a model that takes text only
    (read from its config, as the job's tokenizer loads it)."""
    options.check_images()
    if "image" not in executor.modalities:
        raise ValueError(f"Executor {executor.name!r} does not embed images (its modalities: "
                         f"{list(executor.modalities)}); embed an image column with the 'local' executor")
    config = TextTokenizer(model, options, **engine_kwargs).tasks.model_config
    if "image" not in config.modalities:
        raise ValueError(f"Model {config.served_model_name!r} takes text only (modalities: {list(config.modalities)}): "
                         "an image column needs an image-text model such as CLIP or SigLIP")


def read_corpus_embeddings(out_dir: str | os.PathLike[str], *, require_complete: bool = True) -> pa.Table:
    """All finished shards of ``out_dir`` in input order (one table: id, embedding, num_tokens, truncated)."""
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    out = Path(out_dir)
    data = json.loads((out / MANIFEST_NAME).read_text())
    if require_complete and not data.get("complete"):
        raise ValueError(f"{out} is incomplete ({len(data.get('shards', {}))}/{data.get('num_shards')} shards); "
                         "rerun the job to finish it, or pass require_complete=False")
    tables = [pq.read_table(out / entry["file"]) for _, entry in sorted(data["shards"].items())]
    if not tables:
        return pa.table({"id": pa.array([], pa.int64()), "embedding": pa.array([], pa.list_(pa.float32()))})
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
