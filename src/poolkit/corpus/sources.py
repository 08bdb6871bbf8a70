"""The corpus input: a JSON Lines or Parquet file cut into fixed-size shards by row range.

Shards are the unit of work and of resumption, so they must be the same rows on
every run and in every worker: they are planned once from a scan of the file
(row counts, and for JSONL the byte offset where each shard starts, so a worker
seeks straight to its shard instead of reading the file from the top).

The embedded column holds texts (``text_column``) or, for image-text models
(CLIP, SigLIP), images (``image_column``): file paths, relative ones resolved
against the input file's folder (so a corpus folder can move as a whole), or
encoded image bytes (a Parquet binary column). Reading a shard gives the engine's
prompts either way (strings, or :class:`~poolkit.inputs.ImagePrompt`), so the
tokenizer, the embedder and the executors handle both alike.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inputs import ImagePrompt, Prompt

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 10_000


def shard_file_name(index: int) -> str:
    """The output file of shard ``index`` (``shard-00042.parquet``)."""
    return f"shard-{index:05d}.parquet"


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


def _input_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"Cannot tell the format of {str(path)!r}: expected a .jsonl or .parquet file")


@dataclass
class CorpusSource:
    """An input file, its id column, the column to embed (texts or images) and its shards.
    Picklable; reads one shard at a time.

    Exactly one of ``text_column`` / ``image_column`` is set: ``image_column`` makes it an
    image corpus (see :attr:`modality`).
    """

    path: str
    format: str
    text_column: str | None        # None for an image corpus
    id_column: str | None          # None: ids are row numbers
    num_rows: int
    size_bytes: int
    shard_size: int
    shards: list[ShardSpec] = field(default_factory=list)
    image_column: str | None = None

    def __post_init__(self) -> None:
        if (self.text_column is None) == (self.image_column is None):
            raise ValueError("a corpus embeds one column: give either a text column or an image column")

    @property
    def modality(self) -> str:
        """``"text"`` or ``"image"``: what the embedded column holds."""
        return "image" if self.image_column is not None else "text"

    @property
    def column(self) -> str:
        """The embedded column (``text_column`` or ``image_column``)."""
        column = self.image_column if self.image_column is not None else self.text_column
        assert column is not None
        return column

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        text_column: str = "text",
        id_column: str | None = "id",
        shard_size: int = DEFAULT_SHARD_SIZE,
        image_column: str | None = None,
    ) -> CorpusSource:
        """Scan ``path`` once: count rows, check the columns, plan the shards.

        ``id_column``: the column holding row ids; when the input has no such
        column the row number (0-based) is the id. ``image_column``: embed the
        images this column names instead of ``text_column``'s texts (which is
        then not read): file paths, relative to the input file's folder, or
        encoded image bytes in a Parquet binary column.
        """
        if shard_size < 1:
            raise ValueError("shard_size must be positive")
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"Input {str(p)!r} does not exist")
        fmt = _input_format(p)
        scan = _scan_jsonl if fmt == "jsonl" else _scan_parquet
        column = image_column if image_column is not None else text_column
        num_rows, has_id, offsets = scan(p, column, id_column, shard_size)
        shards = [
            ShardSpec(i, start, min(start + shard_size, num_rows), offsets[i] if offsets else None)
            for i, start in enumerate(range(0, num_rows, shard_size))
        ]
        resolved_id = id_column if has_id else None
        if id_column and not has_id:
            logger.info("%s has no %r column: row numbers are the ids", p, id_column)
        return cls(str(p.resolve()), fmt, None if image_column is not None else text_column, resolved_id, num_rows,
                   p.stat().st_size, shard_size, shards, image_column=image_column)

    def read(self, spec: ShardSpec) -> tuple[list[Any], list[Prompt]]:
        """Ids and prompts of one shard: the texts, or for an image corpus an
        :class:`~poolkit.inputs.ImagePrompt` per row (a path made absolute, or bytes). A ``ValueError``
        names the row of any bad value; an image file is opened only when it is embedded."""
        if self.format == "jsonl":
            ids, values = self._read_jsonl(spec)
        else:
            ids, values = self._read_parquet(spec)
        if len(values) != spec.rows:
            raise ValueError(f"{self.path}: shard {spec.index} should hold {spec.rows} rows, read {len(values)}; "
                             "did the input change during the job?")
        if self.image_column is not None:
            return ids, [self._image(value, spec.row_start + offset) for offset, value in enumerate(values)]
        for offset, text in enumerate(values):
            if not isinstance(text, str):
                raise ValueError(f"{self.path}: row {spec.row_start + offset}: column {self.text_column!r} "
                                 f"is {type(text).__name__}, not a string")
        return ids, values

    def _image(self, value: Any, row: int) -> ImagePrompt:
        """One image cell → the engine's prompt: a path (relative ones from the input's folder), or bytes."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return ImagePrompt(bytes(value))
        if not isinstance(value, str) or not value.strip():
            shown = "empty" if isinstance(value, str) else f"{type(value).__name__}, not a file path"
            raise ValueError(f"{self.path}: row {row}: column {self.image_column!r} is {shown} (an image column "
                             "holds image file paths, or encoded image bytes in Parquet)")
        if value[:8].lower().startswith(("data:", "http://", "https://", "file://")):
            raise ValueError(f"{self.path}: row {row}: column {self.image_column!r} holds a URL; an image column "
                             "holds file paths (relative ones from the input file's folder) or, in Parquet, "
                             "encoded image bytes")
        # Relative to the input file, not the working directory: a corpus and its images travel together.
        return ImagePrompt(Path(self.path).parent / value)

    def _read_jsonl(self, spec: ShardSpec) -> tuple[list[Any], list[Any]]:
        column = self.column
        ids: list[Any] = []
        texts: list[Any] = []
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
                if column not in obj:
                    raise ValueError(f"{self.path}: row {row} has no {column!r} field")
                texts.append(obj[column])
                if self.id_column is not None:
                    if self.id_column not in obj:
                        raise ValueError(f"{self.path}: row {row} has no {self.id_column!r} field")
                    ids.append(obj[self.id_column])
                else:
                    ids.append(row)
                row += 1
        return ids, texts

    def _read_parquet(self, spec: ShardSpec) -> tuple[list[Any], list[Any]]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        column = self.column
        columns = [column] + ([self.id_column] if self.id_column and self.id_column != column else [])
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
        texts = table.column(column).to_pylist()
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


def _scan_jsonl(path: Path, column: str, id_column: str | None, shard_size: int) -> tuple[int, bool, list[int]]:
    """Rows (blank lines are not rows), whether the first row has the id field, and each shard's byte offset."""
    offsets: list[int] = []
    rows, pos, has_id = 0, 0, False
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                if rows == 0:
                    first = _parse_jsonl_row(line, 0, str(path))
                    if column not in first:
                        raise ValueError(f"{path}: rows have no {column!r} field (fields: {', '.join(first)})")
                    has_id = bool(id_column) and id_column in first
                if rows % shard_size == 0:
                    offsets.append(pos)
                rows += 1
            pos += len(line)
    return rows, has_id, offsets


def _scan_parquet(path: Path, column: str, id_column: str | None, shard_size: int) -> tuple[int, bool, list[int]]:
    """Rows and whether the id column exists (Parquet's footer says both; shards need no offsets)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if column not in names:
        raise ValueError(f"{path}: no {column!r} column (columns: {', '.join(names)})")
    return pf.metadata.num_rows, bool(id_column) and id_column in names, []
