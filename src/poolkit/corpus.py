"""Corpus embedding: ``poolkit embed INPUT --model ... --out DIR``.

The input (JSON Lines or Parquet) is cut into fixed-size shards by row range.
Each shard is embedded and written on its own as ``DIR/shard-NNNNN.parquet``
(columns ``id``, ``embedding``, ``num_tokens``, ``truncated``), atomically: a
temporary file renamed into place. ``DIR/manifest.json`` lists the job and the
finished shards, so a rerun of the same command skips them and embeds only
what is missing. Shards run on one of three engines:

- ``local``: this process, one model;
- ``ray``: a Ray Data actor pool, one model per actor (``poolkit-ray``);
- ``lightning``: ``Trainer.predict`` across devices/processes
  (``poolkit-lightning``).

Nothing is cut silently: over-long texts are truncated to ``truncate`` tokens
(default ``-1``, the model's limit) and counted in the summary; with
``truncate=None`` they are an error.

This module also holds the pieces the engines share: :class:`TextTokenizer`
(tokenization with truncation accounting, usable in data-loader workers),
:class:`Embedder` (one model), :func:`process_shard` and the Parquet helpers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from .engine import LLM
    from .inputs import InputProcessor, TokenizedPrompt

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray", "lightning")
MANIFEST_NAME = "manifest.json"
SHARD_METADATA_KEY = b"poolkit.corpus"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 10_000
DEFAULT_BATCH_SIZE = 1024
# LLM(...) arguments that change tokenization (and so must reach a stand-alone TextTokenizer).
_MODEL_CONFIG_KWARGS = ("hf_overrides", "trust_remote_code", "max_model_len", "served_model_name",
                        "override_pooler_config")


def _require_pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:  # pragma: no cover - pyarrow ships with both integrations
        raise ImportError(
            "Corpus embedding reads and writes Parquet and needs pyarrow: pip install pyarrow "
            "(it comes with poolkit-ray and poolkit-lightning)"
        ) from exc
    import pyarrow as pa

    return pa


# ---------------------------------------------------------------------------
# Tokenization and embedding (shared by all engines)


def build_processor(model: str | os.PathLike[str] | None, **engine_kwargs: Any) -> InputProcessor:
    """The engine's input processor for ``model`` without loading any weights.

    Mirrors what ``LLM(model, task="embed", **engine_kwargs)`` builds, so text
    tokenized here (e.g. in a data-loader worker) matches the engine exactly.
    """
    from .inputs import InputProcessor
    from .loader import build_model_config, load_tokenizer, resolve_model_path

    kwargs = {k: engine_kwargs[k] for k in _MODEL_CONFIG_KWARGS if engine_kwargs.get(k) is not None}
    path = resolve_model_path(model)
    tokenizer = load_tokenizer(path, bool(kwargs.get("trust_remote_code", False)))
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    config = build_model_config(str(model) if model is not None else None, task=engine_kwargs.get("task", "embed"),
                                tokenizer_max_length=limit, **kwargs)
    return InputProcessor(tokenizer, config)


class TextTokenizer:
    """Texts → the engine's token sequences, plus which rows were truncated.

    ``truncate``: ``-1`` (the model's limit, the default), ``N`` tokens, or
    ``None`` (an over-long text is an error, as in the engine).

    Picklable: built from ``model`` and ``engine_kwargs`` it loads the
    tokenizer lazily in whichever process first uses it (e.g. a DataLoader
    worker or a Ray actor).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        truncate: int | None = -1,
        *,
        processor: InputProcessor | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.model = model
        self.truncate = truncate
        self.engine_kwargs = engine_kwargs
        self._processor = processor
        self._limit: int | None = None
        if processor is not None:
            self._limit = processor.resolve_truncation(truncate)

    @property
    def processor(self) -> InputProcessor:
        if self._processor is None:
            self._processor = build_processor(self.model, **self.engine_kwargs)
            self._limit = self._processor.resolve_truncation(self.truncate)
        return self._processor

    @property
    def limit(self) -> int | None:
        """Tokens a text is cut to (``None``: never cut)."""
        _ = self.processor
        return self._limit

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_processor"] = None
        return state

    def __call__(self, texts: Sequence[str]) -> tuple[list[TokenizedPrompt], np.ndarray]:
        processor = self.processor
        tokens = processor.encode(list(texts), self.truncate)
        truncated = np.zeros(len(tokens), dtype=bool)
        limit = self._limit
        if limit is not None:
            # Only a text that came out exactly at the limit can have been cut: look again at those.
            candidates = [i for i, t in enumerate(tokens) if len(t) == limit]
            if candidates:
                prepare = getattr(processor, "prepare_text", lambda text: text)
                enc = processor.tokenizer([prepare(texts[i]) for i in candidates], add_special_tokens=True,
                                          truncation=False, verbose=False)
                for i, ids in zip(candidates, enc["input_ids"]):
                    truncated[i] = len(ids) > limit
        return tokens, truncated


@dataclass
class Embedded:
    """Embeddings of a batch of texts, in input order."""

    vectors: np.ndarray      # float32 [n, dim]
    num_tokens: np.ndarray   # int32 [n] (after truncation)
    truncated: np.ndarray    # bool [n]

    def __len__(self) -> int:
        return len(self.vectors)


class Embedder:
    """One embedding model (an ``LLM``) with fixed output options.

    ``dimensions``: a Matryoshka size (checked against the model up front).
    """

    def __init__(self, llm: LLM, *, dimensions: int | None = None, truncate: int | None = -1) -> None:
        from .params import PoolingParams

        self.llm = llm
        self.dimensions = dimensions
        self.options = llm.engine.head_options("embed", PoolingParams(dimensions=dimensions))
        self.tokenizer = TextTokenizer(llm.model_config.model, truncate, processor=llm.engine.processor)
        self.dim = dimensions or llm.model_config.embedding_dim

    @classmethod
    def from_model(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        dimensions: int | None = None,
        truncate: int | None = -1,
        **engine_kwargs: Any,
    ) -> Embedder:
        from .engine import LLM

        engine_kwargs.setdefault("task", "embed")
        return cls(LLM(model, **engine_kwargs), dimensions=dimensions, truncate=truncate)

    def run(self, tokens: Sequence[TokenizedPrompt]) -> np.ndarray:
        """Pooled, normalized embeddings of already tokenized prompts (float32 [n, dim])."""
        if not tokens:
            return np.zeros((0, self.dim), dtype=np.float32)
        pooled = self.llm.engine.execute(list(tokens), [self.options] * len(tokens), use_tqdm=False)
        return np.stack([p.float().numpy() for p in pooled]).astype(np.float32, copy=False)

    def embed(self, texts: Sequence[str]) -> Embedded:
        tokens, truncated = self.tokenizer(texts)
        return Embedded(self.run(tokens), np.array([len(t) for t in tokens], dtype=np.int32), truncated)


# ---------------------------------------------------------------------------
# Parquet helpers


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
    pa = _require_pyarrow()
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
    pa = _require_pyarrow()
    col = table.column(column).combine_chunks() if isinstance(table, pa.Table) else table
    if len(col) == 0:
        size = col.type.list_size if pa.types.is_fixed_size_list(col.type) else 0
        return np.zeros((0, size), dtype=np.float32)
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(
            np.float32, copy=False)
    return np.asarray(col.to_pylist(), dtype=np.float32)


# ---------------------------------------------------------------------------
# Input: JSON Lines or Parquet, cut into row-range shards


@dataclass(frozen=True)
class ShardSpec:
    """Rows ``[row_start, row_stop)`` of the input; ``byte_offset`` is where they start in a JSONL file."""

    index: int
    row_start: int
    row_stop: int
    byte_offset: int | None = None

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def file_name(self) -> str:
        return shard_file_name(self.index)


def shard_file_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _input_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"Cannot tell the format of {str(path)!r}: expected a .jsonl or .parquet file")


@dataclass
class CorpusSource:
    """An input file, its id/text columns and its shards. Picklable; reads one shard at a time."""

    path: str
    format: str
    text_column: str
    id_column: str | None          # None: ids are row numbers
    num_rows: int
    size_bytes: int
    shard_size: int
    shards: list[ShardSpec] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        text_column: str = "text",
        id_column: str | None = "id",
        shard_size: int = DEFAULT_SHARD_SIZE,
    ) -> CorpusSource:
        """Scan ``path`` once: count rows, check the columns, plan the shards.

        ``id_column``: the column holding row ids; when the input has no such
        column the row number (0-based) is the id.
        """
        if shard_size < 1:
            raise ValueError("shard_size must be positive")
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"Input {str(p)!r} does not exist")
        fmt = _input_format(p)
        scan = _scan_jsonl if fmt == "jsonl" else _scan_parquet
        num_rows, has_id, offsets = scan(p, text_column, id_column, shard_size)
        shards = [
            ShardSpec(i, start, min(start + shard_size, num_rows), offsets[i] if offsets else None)
            for i, start in enumerate(range(0, num_rows, shard_size))
        ]
        resolved_id = id_column if has_id else None
        if id_column and not has_id:
            logger.info("%s has no %r column: row numbers are the ids", p, id_column)
        return cls(str(p.resolve()), fmt, text_column, resolved_id, num_rows, p.stat().st_size, shard_size, shards)

    def read(self, spec: ShardSpec) -> tuple[list[Any], list[str]]:
        """Ids and texts of one shard."""
        if self.format == "jsonl":
            ids, texts = self._read_jsonl(spec)
        else:
            ids, texts = self._read_parquet(spec)
        if len(texts) != spec.rows:
            raise ValueError(f"{self.path}: shard {spec.index} should hold {spec.rows} rows, read {len(texts)}; "
                             "did the input change during the job?")
        for offset, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{self.path}: row {spec.row_start + offset}: column {self.text_column!r} "
                                 f"is {type(text).__name__}, not a string")
        return ids, texts

    def _read_jsonl(self, spec: ShardSpec) -> tuple[list[Any], list[str]]:
        ids: list[Any] = []
        texts: list[str] = []
        with open(self.path, "rb") as fh:
            fh.seek(spec.byte_offset or 0)
            row = spec.row_start
            while row < spec.row_stop:
                line = fh.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                obj = _parse_jsonl_row(line, row, self.path)
                if self.text_column not in obj:
                    raise ValueError(f"{self.path}: row {row} has no {self.text_column!r} field")
                texts.append(obj[self.text_column])
                if self.id_column is not None:
                    if self.id_column not in obj:
                        raise ValueError(f"{self.path}: row {row} has no {self.id_column!r} field")
                    ids.append(obj[self.id_column])
                else:
                    ids.append(row)
                row += 1
        return ids, texts

    def _read_parquet(self, spec: ShardSpec) -> tuple[list[Any], list[str]]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        columns = [self.text_column] + ([self.id_column] if self.id_column else [])
        groups, first_row, start = [], None, 0
        for g in range(pf.num_row_groups):
            stop = start + pf.metadata.row_group(g).num_rows
            if stop > spec.row_start and start < spec.row_stop:
                groups.append(g)
                first_row = start if first_row is None else first_row
            start = stop
        if not groups:
            return [], []
        table = pf.read_row_groups(groups, columns=columns)
        assert first_row is not None
        table = table.slice(spec.row_start - first_row, spec.rows)
        texts = table.column(self.text_column).to_pylist()
        ids = table.column(self.id_column).to_pylist() if self.id_column else list(range(spec.row_start, spec.row_stop))
        return ids, texts


def _parse_jsonl_row(line: bytes, row: int, path: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: row {row} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: row {row} is a JSON {type(obj).__name__}, expected an object")
    return obj


def _scan_jsonl(path: Path, text_column: str, id_column: str | None, shard_size: int) -> tuple[int, bool, list[int]]:
    offsets: list[int] = []
    rows, pos, has_id = 0, 0, False
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                if rows == 0:
                    first = _parse_jsonl_row(line, 0, str(path))
                    if text_column not in first:
                        raise ValueError(f"{path}: rows have no {text_column!r} field (fields: {', '.join(first)})")
                    has_id = bool(id_column) and id_column in first
                if rows % shard_size == 0:
                    offsets.append(pos)
                rows += 1
            pos += len(line)
    return rows, has_id, offsets


def _scan_parquet(path: Path, text_column: str, id_column: str | None, shard_size: int) -> tuple[int, bool, list[int]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_column not in names:
        raise ValueError(f"{path}: no {text_column!r} column (columns: {', '.join(names)})")
    return pf.metadata.num_rows, bool(id_column) and id_column in names, []


# ---------------------------------------------------------------------------
# Job, shards and manifest


@dataclass
class ShardStats:
    index: int
    rows: int
    tokens: int
    truncated: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CorpusJob:
    """Everything a worker needs to embed and write any shard of the corpus (picklable)."""

    source: CorpusSource
    out_dir: str
    model: str | None
    dimensions: int | None = None
    truncate: int | None = -1
    batch_size: int = DEFAULT_BATCH_SIZE
    engine_kwargs: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What must match for shards of an earlier run to be reused."""
        src = self.source
        return {
            "version": FORMAT_VERSION,
            "input": src.path, "input_bytes": src.size_bytes, "format": src.format,
            "text_column": src.text_column, "id_column": src.id_column, "num_rows": src.num_rows,
            "shard_size": src.shard_size, "model": self.model, "dimensions": self.dimensions,
            "truncate": self.truncate,
            "engine_kwargs": {k: self.engine_kwargs[k] for k in sorted(self.engine_kwargs)
                              if k in _MODEL_CONFIG_KWARGS},
        }

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def make_embedder(self, **overrides: Any) -> Embedder:
        kwargs = {**self.engine_kwargs, **overrides}
        return Embedder.from_model(self.model, dimensions=self.dimensions, truncate=self.truncate, **kwargs)

    def make_tokenizer(self) -> TextTokenizer:
        return TextTokenizer(self.model, self.truncate, **self.engine_kwargs)

    def shard_path(self, spec: ShardSpec) -> Path:
        return Path(self.out_dir) / spec.file_name

    def shard_table(self, spec: ShardSpec, ids: Sequence[Any], embedded: Embedded, seconds: float) -> tuple[pa.Table, ShardStats]:
        stats = ShardStats(spec.index, len(ids), int(embedded.num_tokens.sum()), int(embedded.truncated.sum()),
                           round(seconds, 4))
        meta = {"fingerprint": self.fingerprint, "row_start": spec.row_start, "row_stop": spec.row_stop,
                **stats.to_dict()}
        table = embeddings_table(ids, embedded.vectors, num_tokens=embedded.num_tokens, truncated=embedded.truncated,
                                 metadata={SHARD_METADATA_KEY: json.dumps(meta).encode()})
        return table, stats

    def write_shard(self, spec: ShardSpec, ids: Sequence[Any], embedded: Embedded, seconds: float) -> ShardStats:
        table, stats = self.shard_table(spec, ids, embedded, seconds)
        write_table_atomic(table, self.shard_path(spec))
        return stats


def concat_embedded(parts: Sequence[Embedded], dim: int) -> Embedded:
    if not parts:
        return Embedded(np.zeros((0, dim), np.float32), np.zeros(0, np.int32), np.zeros(0, bool))
    return Embedded(np.concatenate([p.vectors for p in parts]), np.concatenate([p.num_tokens for p in parts]),
                    np.concatenate([p.truncated for p in parts]))


def process_shard(
    job: CorpusJob, spec: ShardSpec, embedder: Embedder, on_rows: Callable[[int], None] | None = None
) -> ShardStats:
    """Read, embed and atomically write one shard; idempotent (safe to retry)."""
    start = time.perf_counter()
    ids, texts = job.source.read(spec)
    parts = []
    for lo in range(0, len(texts), job.batch_size):
        chunk = texts[lo:lo + job.batch_size]
        try:
            parts.append(embedder.embed(chunk))
        except ValueError as exc:
            first = spec.row_start + lo
            raise ValueError(f"shard {spec.index}, rows {first}-{first + len(chunk) - 1} "
                             f"(prompt numbers count from row {first}): {exc}") from exc
        if on_rows:
            on_rows(len(chunk))
    return job.write_shard(spec, ids, concat_embedded(parts, embedder.dim), time.perf_counter() - start)


def read_shard_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The poolkit metadata of a written shard file (``None`` if absent or unreadable)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - a broken file is simply not a finished shard
        return None
    raw = meta.get(SHARD_METADATA_KEY)
    return json.loads(raw) if raw else None


class Manifest:
    """``DIR/manifest.json``: the job's identity and its finished shards."""

    def __init__(self, out_dir: Path, job: CorpusJob) -> None:
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST_NAME
        self.job = job
        self.shards: dict[int, dict[str, Any]] = {}
        self.runs: list[dict[str, Any]] = []

    @classmethod
    def open(cls, job: CorpusJob, *, overwrite: bool = False) -> Manifest:
        out = Path(job.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        manifest = cls(out, job)
        if overwrite:
            for stale in [*out.glob("shard-*.parquet"), *out.glob(".shard-*.tmp"), manifest.path]:
                stale.unlink(missing_ok=True)
        elif manifest.path.exists():
            data = json.loads(manifest.path.read_text())
            if data.get("fingerprint") != job.fingerprint:
                old, new = data.get("job", {}), job.identity()
                diff = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in new if old.get(k) != new.get(k))
                raise ValueError(f"{out} holds shards of a different job ({diff or 'format'}); "
                                 "pass --overwrite (overwrite=True) to start over, or choose another output directory")
            manifest.shards = {int(k): v for k, v in data.get("shards", {}).items()}
            manifest.runs = list(data.get("runs", []))
        manifest._sync_with_files()
        return manifest

    def _sync_with_files(self) -> None:
        """Drop entries whose file is gone; adopt complete shard files the manifest missed."""
        specs = {s.index: s for s in self.job.source.shards}
        for index in list(self.shards):
            if index not in specs or not (self.out_dir / shard_file_name(index)).exists():
                logger.info("Shard %d is listed but its file is missing: it will be embedded again", index)
                del self.shards[index]
        for index, spec in specs.items():
            if index in self.shards:
                continue
            path = self.out_dir / spec.file_name
            if path.exists():
                meta = read_shard_metadata(path)
                if meta and meta.get("fingerprint") == self.job.fingerprint and meta.get("rows") == spec.rows:
                    self.shards[index] = {k: meta[k] for k in ("rows", "tokens", "truncated", "seconds") if k in meta}
                    self.shards[index]["file"] = spec.file_name
                    logger.info("Adopted finished shard %s", path.name)
        for tmp in self.out_dir.glob(".shard-*.tmp"):  # left by an interrupted writer
            tmp.unlink(missing_ok=True)

    def pending(self) -> list[ShardSpec]:
        return [s for s in self.job.source.shards if s.index not in self.shards]

    def record(self, stats: ShardStats) -> None:
        entry = stats.to_dict()
        entry.pop("index")
        entry["file"] = shard_file_name(stats.index)
        self.shards[stats.index] = entry

    @property
    def complete(self) -> bool:
        return len(self.shards) == len(self.job.source.shards)

    def save(self) -> None:
        data = {
            "fingerprint": self.job.fingerprint,
            "job": self.job.identity(),
            "num_shards": len(self.job.source.shards),
            "complete": self.complete,
            "shards": {f"{k:05d}": self.shards[k] for k in sorted(self.shards)},
            "runs": self.runs,
        }
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------
# Running a job


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
        state = "complete" if self.complete else f"INCOMPLETE: {self.shards_total - self.shards_done - self.shards_skipped} shards left, rerun to resume"
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
    """Called by an engine as each shard finishes: records it and saves the manifest."""

    def __init__(self, manifest: Manifest, progress: Any) -> None:
        self.manifest = manifest
        self.progress = progress
        self.done: list[ShardStats] = []
        # Set by an engine in a process that is not its job's coordinator (e.g. Lightning rank > 0):
        # that process must not write the manifest.
        self.read_only = False

    def __call__(self, stats: ShardStats, *, count_rows: bool = True) -> None:
        self.manifest.record(stats)
        self.manifest.save()
        self.done.append(stats)
        if count_rows and self.progress is not None:
            self.progress.update(stats.rows)
        logger.debug("Shard %05d: %d rows, %d tokens, %.2f s", stats.index, stats.rows, stats.tokens, stats.seconds)


def _run_local(job: CorpusJob, pending: Sequence[ShardSpec], recorder: ShardRecorder, *,
               device: str | None = None, **_: Any) -> None:
    overrides = {"device": device} if device else {}
    embedder = job.make_embedder(**overrides)
    for spec in pending:
        stats = process_shard(job, spec, embedder, on_rows=recorder.progress.update if recorder.progress else None)
        recorder(stats, count_rows=False)


def _engine_runner(engine: str) -> Callable[..., None]:
    if engine == "local":
        return _run_local
    if engine == "ray":
        try:
            from poolkit_ray.corpus import run_corpus_shards
        except ImportError as exc:
            raise ImportError("--engine ray needs poolkit-ray: pip install -e integrations/ray") from exc
        return run_corpus_shards
    if engine == "lightning":
        try:
            from poolkit_lightning.corpus import run_corpus_shards
        except ImportError as exc:
            raise ImportError("--engine lightning needs poolkit-lightning: pip install -e integrations/lightning") from exc
        return run_corpus_shards
    raise ValueError(f"Unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")


def embed_corpus(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    engine: str = "local",
    text_column: str = "text",
    id_column: str | None = "id",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dimensions: int | None = None,
    truncate: int | None = -1,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    device: str | None = None,
    overwrite: bool = False,
    max_shards: int | None = None,
    progress: bool | None = None,
    engine_kwargs: dict[str, Any] | None = None,
) -> CorpusSummary:
    """Embed ``input_path`` into Parquet shards under ``out_dir``; resumable (see module docs).

    Args:
        model: checkpoint directory or hub id (``None``: the bundled default).
        engine: ``local``, ``ray`` or ``lightning``.
        id_column: column with row ids; if the input lacks it, row numbers are the ids.
        shard_size: rows per output shard (the unit of resumption).
        batch_size: rows handed to the engine at once (it batches by token budget inside).
        dimensions: Matryoshka output size.
        truncate: ``-1`` (model limit), ``N`` tokens, or ``None`` (error on over-long text).
        workers: Ray actors / Lightning devices (default: Ray 1 per GPU or 1;
            Lightning 1).
        gpus_per_worker: GPUs per Ray actor (default: 1 when the cluster has GPUs).
        device: ``cpu``/``cuda`` for the local engine, Lightning's accelerator otherwise.
        overwrite: delete the output of a different (or the same) earlier job first.
        max_shards: embed at most this many pending shards in this run (time-boxed jobs).
        progress: show a progress bar (default: only on a terminal).
        engine_kwargs: passed to ``LLM(...)`` (``dtype``, ``hf_overrides``, ``max_num_batched_tokens``...).
    """
    from tqdm.auto import tqdm

    _require_pyarrow()
    runner = _engine_runner(engine)
    t0 = time.perf_counter()
    source = CorpusSource.open(input_path, text_column=text_column, id_column=id_column, shard_size=shard_size)
    job = CorpusJob(source, str(Path(out_dir).resolve()), model, dimensions, truncate, batch_size,
                    dict(engine_kwargs or {}))
    manifest = Manifest.open(job, overwrite=overwrite)
    pending = manifest.pending()
    skipped = len(source.shards) - len(pending)
    rows_skipped = sum(s.rows for s in source.shards if s.index in manifest.shards)
    if max_shards is not None:
        pending = pending[:max(0, max_shards)]
    logger.info("%s: %d rows in %d shards; %d finished, %d to embed now with engine %s",
                source.path, source.num_rows, len(source.shards), skipped, len(pending), engine)
    disable = (not progress) if progress is not None else None  # None: tqdm decides (off when not a TTY)
    bar = tqdm(total=source.num_rows, initial=rows_skipped, unit="row", desc="Embedding", disable=disable,
               dynamic_ncols=True)
    recorder = ShardRecorder(manifest, bar)
    try:
        if pending:
            runner(job, pending, recorder, workers=workers, gpus_per_worker=gpus_per_worker, device=device)
    finally:
        bar.close()
        seconds = time.perf_counter() - t0
        done = recorder.done
    if not recorder.read_only:
        manifest.runs.append({
            "engine": engine, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - seconds)),
            "seconds": round(seconds, 3), "shards": len(done), "rows": sum(s.rows for s in done),
            "tokens": sum(s.tokens for s in done), "truncated": sum(s.truncated for s in done),
        })
        manifest.save()
    return CorpusSummary(
        out_dir=job.out_dir, engine=engine, rows=sum(s.rows for s in done), tokens=sum(s.tokens for s in done),
        truncated=sum(s.truncated for s in done), seconds=seconds, shards_done=len(done), shards_skipped=skipped,
        rows_skipped=rows_skipped, shards_total=len(source.shards), rows_total=source.num_rows,
        complete=manifest.complete, primary=not recorder.read_only,
    )


def read_corpus_embeddings(out_dir: str | os.PathLike[str], *, require_complete: bool = True) -> pa.Table:
    """All finished shards of ``out_dir`` in input order (one table: id, embedding, num_tokens, truncated)."""
    pa = _require_pyarrow()
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


# ---------------------------------------------------------------------------
# CLI: ``poolkit embed``


def _truncate_arg(value: str) -> int | None:
    if value.lower() in ("none", "off", "no"):
        return None
    number = int(value)
    if number != -1 and number < 1:
        raise argparse.ArgumentTypeError("--truncate takes -1 (the model's limit), a positive token count, or none")
    return number


def add_embed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``poolkit embed``; model/engine flags are the same as ``poolkit serve``'s."""
    from .entrypoints.cli import add_engine_args

    parser.add_argument("input", metavar="INPUT", help="a .jsonl (one JSON object a line) or .parquet file")
    parser.add_argument("--model", default=None,
                        help="checkpoint directory or hub id (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (Parquet shards + manifest.json)")
    job = parser.add_argument_group("corpus job")
    job.add_argument("--engine", choices=ENGINES, default="local",
                     help="local (this process), ray (Ray Data actor pool) or lightning (Trainer.predict); "
                          "default: %(default)s")
    job.add_argument("--text-column", default="text", help="field/column with the text (default: %(default)s)")
    job.add_argument("--id-column", default="id",
                     help="field/column with row ids (default: %(default)s; if absent, row numbers are the ids)")
    job.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                     help="rows per output shard, the unit of resumption (default: %(default)s)")
    job.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                     help="rows handed to the engine at once (default: %(default)s)")
    job.add_argument("--dimensions", type=int, default=None, help="Matryoshka output dimensions")
    job.add_argument("--truncate", type=_truncate_arg, default=-1,
                     help="cut over-long texts to N tokens; -1 (default) = the model's limit; "
                          "none = fail on over-long texts. Truncated rows are counted in the summary")
    job.add_argument("--workers", type=int, default=None,
                     help="ray: actors (default: one per GPU, else per CPU); lightning: devices (default 1)")
    job.add_argument("--gpus-per-worker", type=float, default=None,
                     help="GPUs per Ray actor (default: 1 if the cluster has GPUs, else 0)")
    job.add_argument("--max-shards", type=int, default=None,
                     help="embed at most N pending shards in this run (rerun to continue)")
    job.add_argument("--overwrite", action="store_true", help="delete an earlier job's output in DIR first")
    job.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway when not a TTY)")
    job.add_argument("--json", action="store_true", help="print the summary as JSON instead of one line")
    add_engine_args(parser)
    return parser


def add_embed_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``embed`` on the ``poolkit`` CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "embed", help="Embed a corpus (.jsonl/.parquet) into resumable Parquet shards",
        description="Embed a corpus into Parquet shards plus a manifest; a rerun skips finished shards. "
                    "Ends with a summary line on stdout (rows, tokens, seconds, throughput, truncated rows).",
    )
    add_embed_arguments(parser)
    parser.set_defaults(func=run_embed)
    return parser


def run_embed(args: argparse.Namespace) -> int:
    """Handler of ``poolkit embed``: runs the job, prints the summary to stdout."""
    from .entrypoints.cli import engine_kwargs as cli_engine_kwargs

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kwargs = {k: v for k, v in cli_engine_kwargs(args).items() if v is not None}
    kwargs.pop("model", None)
    if kwargs.pop("task", "auto") not in ("auto", "embed"):
        raise SystemExit("poolkit embed: --task must be embed (or auto)")
    if not kwargs.get("trust_remote_code"):
        kwargs.pop("trust_remote_code", None)
    if kwargs.get("dtype") == "auto":
        kwargs.pop("dtype")
    device = kwargs.pop("device", None)
    model = None if args.model in (None, "", "default") else args.model
    try:
        summary = _embed_from_args(args, model, device, kwargs)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise SystemExit(f"poolkit embed: error: {exc}") from exc
    if summary.primary:
        print(json.dumps(summary.to_dict()) if args.json else summary.line(), file=sys.stdout, flush=True)
    return 0


def _embed_from_args(args: argparse.Namespace, model: str | None, device: str | None,
                     kwargs: dict[str, Any]) -> CorpusSummary:
    return embed_corpus(
        args.input, args.out, model=model, engine=args.engine, text_column=args.text_column,
        id_column=args.id_column or None, shard_size=args.shard_size, batch_size=args.batch_size,
        dimensions=args.dimensions, truncate=args.truncate, workers=args.workers,
        gpus_per_worker=args.gpus_per_worker, device=None if device == "auto" else device,
        overwrite=args.overwrite, max_shards=args.max_shards, progress=False if args.no_progress else None,
        engine_kwargs=kwargs,
    )


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m poolkit.corpus INPUT --out DIR ...``: the same as ``poolkit embed``."""
    from .entrypoints.cli import FlexibleArgumentParser

    parser = add_embed_arguments(FlexibleArgumentParser(prog="poolkit embed", description=__doc__.splitlines()[0]))
    return run_embed(parser.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
