"""poolkit as a Lightning plugin: ``Trainer.predict`` embeds a dataset across processes, GPUs and nodes.

The pieces:

- :class:`TextDataset`: ``(index, id, text)`` items;
- :class:`TokenizingCollate`: texts → a prepared ``embed`` request (prompted,
  tokenized, truncated by poolkit's task layer; runs in DataLoader workers, no
  model weights needed);
- :class:`PoolkitEmbeddingModule`: a ``LightningModule`` whose ``predict_step``
  runs that request on the poolkit engine; the engine is built in ``setup()`` on
  each rank, on that rank's device, never pickled;
- :class:`ParquetPredictionWriter`: a ``BasePredictionWriter`` writing one
  Parquet file per rank and batch (``shard-rank{r}-batch{b}.parquet``);
- :func:`reassemble`: reads them back as one table in input order.

Lightning's predict loop gives each rank a disjoint part of the data (an
``UnrepeatedDistributedSamplerWrapper``, which never pads with duplicates);
``reassemble`` also drops any repeated index, so no row can appear twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from poolkit.corpus import Embedded, Embedder, EmbedOptions, TextTokenizer, embeddings_table, write_table_atomic

logger = logging.getLogger(__name__)

SHARD_GLOB = "shard-rank*-batch*.parquet"
_SHARD_NAME = re.compile(r"^shard-rank(\d+)(?:-dl(\d+))?-batch(\d+)\.parquet$")


class TextDataset(Dataset):
    """Texts with ids (default: their positions); item ``i`` is ``{"index": i, "id": ..., "text": ...}``."""

    def __init__(self, texts: Sequence[str], ids: Sequence[Any] | None = None) -> None:
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        self.texts = list(texts)
        self.ids = list(ids) if ids is not None else None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "id": self.ids[index] if self.ids is not None else index, "text": self.texts[index]}


class TokenizingCollate:
    """DataLoader ``collate_fn``: a list of ``{"index", "id", "text"}`` items → a prepared batch.

    The batch is a dict: ``index`` (int64 array), ``id`` (list) and ``request``
    (a :class:`~poolkit.tasks.PreparedRequest` for :meth:`poolkit.corpus.Embedder.run`).
    Prepares exactly as ``LLM(model, **engine_kwargs).embed(texts, ...)`` would:
    ``truncate`` is ``-1`` (model limit), ``N`` tokens or ``None`` (error on
    over-long text); ``dimensions``, ``prompt_name`` and ``prompt`` as in ``LLM.embed``;
    ``chunked``: texts longer than the model embedded in chunks merged into one vector
    (see :class:`poolkit.corpus.EmbedOptions`).
    Picklable: the tokenizer loads lazily in the process that collates.
    """

    def __init__(self, model: str | None = None, truncate: int | None = -1, *, dimensions: int | None = None,
                 prompt_name: str | None = None, prompt: str | None = None, chunked: bool = False,
                 **engine_kwargs: Any) -> None:
        options = EmbedOptions(dimensions=dimensions, truncate=truncate, prompt_name=prompt_name, prompt=prompt,
                               chunked=chunked)
        self.tokenizer = TextTokenizer(model, options, **engine_kwargs)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {
            "index": np.array([item["index"] for item in items], dtype=np.int64),
            "id": [item["id"] for item in items],
            "request": self.tokenizer([item["text"] for item in items]),
        }


class PoolkitEmbeddingModule(pl.LightningModule):
    """A LightningModule around the poolkit engine; ``predict_step`` embeds a prepared batch.

    Args:
        model: checkpoint directory or hub id, readable on every node (``None``: the default model).
        dimensions: Matryoshka output size.
        truncate: as in :class:`TokenizingCollate` (use :meth:`collate` to get a matching one).
        prompt_name / prompt: a Sentence-Transformers prompt put before every text, as in ``LLM.embed``.
        chunked: embed texts longer than the model in chunks merged into one vector (no truncation).
        **engine_kwargs: passed to ``poolkit.LLM`` (``dtype``, ``hf_overrides``...).

    The model is loaded in ``setup()`` on each rank, on the rank's device
    (``trainer.strategy.root_device``); the module itself has no parameters,
    so nothing is wrapped in DDP or synchronized.
    """

    def __init__(self, model: str | None = None, *, dimensions: int | None = None, truncate: int | None = -1,
                 prompt_name: str | None = None, prompt: str | None = None, chunked: bool = False,
                 **engine_kwargs: Any) -> None:
        super().__init__()
        self.model_name = model
        self.options = EmbedOptions(dimensions=dimensions, truncate=truncate, prompt_name=prompt_name, prompt=prompt,
                                    chunked=chunked)
        self.engine_kwargs = engine_kwargs
        self.embedder: Embedder | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["embedder"] = None  # never ship the engine to other processes: each rank builds its own
        return state

    def collate(self) -> TokenizingCollate:
        """A collate function that prepares requests exactly as this module's engine expects them."""
        return TokenizingCollate(self.model_name, **dataclasses.asdict(self.options), **self.engine_kwargs)

    def dataloader(self, dataset: Dataset, *, batch_size: int = 256, num_workers: int = 0, **kwargs: Any) -> DataLoader:
        """An in-order DataLoader over ``dataset`` with :meth:`collate`."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          collate_fn=self.collate(), **kwargs)

    def setup(self, stage: str) -> None:
        if self.embedder is None:
            kwargs = dict(self.engine_kwargs)
            device = self.trainer.strategy.root_device
            if "device" not in kwargs:
                kwargs["device"] = str(device)
            per_node = max(1, self.trainer.num_devices)
            if device.type == "cpu" and per_node > 1 and "OMP_NUM_THREADS" not in os.environ:
                # Several CPU ranks on one machine: share the cores instead of oversubscribing them.
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
            self.embedder = Embedder.from_model(self.model_name, self.options, **kwargs)
            logger.info("rank %d: %r", self.global_rank, self.embedder.llm)

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch  # the prepared request stays on the host; the engine pads and moves it itself

    def forward(self, batch: dict[str, Any]) -> Embedded:
        assert self.embedder is not None, "the engine is built in setup(); call through a Trainer"
        return self.embedder.run(batch["request"])

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0, dataloader_idx: int = 0) -> dict[str, Any]:
        """The batch's other keys plus ``embedding``, ``num_tokens`` and ``truncated`` (from the outputs)."""
        embedded = self(batch)
        out = {key: value for key, value in batch.items() if key != "request"}
        out["embedding"] = embedded.vectors
        out["num_tokens"] = embedded.num_tokens
        out["truncated"] = embedded.truncated
        return out


class ParquetPredictionWriter(BasePredictionWriter):
    """Writes each rank's batches as ``output_dir/shard-rank{r}-batch{b}.parquet`` (atomically).

    Columns: ``index`` (position in the dataset), ``id``, ``embedding``,
    ``num_tokens``, ``truncated``. Read them back with :func:`reassemble`.
    A later dataloader ``k > 0`` writes ``shard-rank{r}-dl{k}-batch{b}.parquet``.
    """

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def file_name(self, rank: int, batch_idx: int, dataloader_idx: int) -> str:
        dl = f"-dl{dataloader_idx}" if dataloader_idx else ""
        return f"shard-rank{rank}{dl}-batch{batch_idx:06d}.parquet"

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        table = embeddings_table(prediction["id"], prediction["embedding"], num_tokens=prediction["num_tokens"],
                                 truncated=prediction["truncated"], extra={"index": pa.array(prediction["index"])})
        write_table_atomic(table, self.output_dir / self.file_name(trainer.global_rank, batch_idx, dataloader_idx))


def reassemble(output_dir: str | os.PathLike[str], *, dataloader_idx: int = 0, dedupe: bool = True) -> pa.Table:
    """The rows :class:`ParquetPredictionWriter` wrote to ``output_dir``, as one table sorted by ``index``.

    Reads every rank's ``shard-rank{r}-batch{b}.parquet`` of dataloader
    ``dataloader_idx``. With ``dedupe`` (the default) a row written twice
    (e.g. by a sampler that pads) is kept once; the count dropped is logged.
    """
    files = []
    for path in sorted(Path(output_dir).glob(SHARD_GLOB)):
        match = _SHARD_NAME.match(path.name)
        if match and int(match.group(2) or 0) == dataloader_idx:
            files.append(path)
    if not files:
        raise FileNotFoundError(f"No {SHARD_GLOB} files of dataloader {dataloader_idx} in {output_dir}")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    index = table.column("index").to_numpy()
    order = np.argsort(index, kind="stable")
    if dedupe:
        sorted_index = index[order]
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = sorted_index[1:] != sorted_index[:-1]
        if not keep.all():
            logger.warning("reassemble: dropped %d duplicate rows", int((~keep).sum()))
        order = order[keep]
    return table.take(pa.array(order))


def embed_texts(
    texts: Sequence[str],
    ids: Sequence[Any] | None = None,
    *,
    model: str | None = None,
    output_dir: str | os.PathLike[str],
    batch_size: int = 256,
    num_workers: int = 0,
    dimensions: int | None = None,
    truncate: int | None = -1,
    prompt_name: str | None = None,
    prompt: str | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    **engine_kwargs: Any,
) -> pa.Table | None:
    """Embed ``texts`` with ``Trainer(**trainer_kwargs).predict`` and return them reassembled (rank 0).

    ``trainer_kwargs`` e.g. ``{"accelerator": "gpu", "devices": 8, "num_nodes": 2, "strategy": "ddp"}``.
    Other ranks (``strategy="ddp"`` runs this function in every process) return ``None``.
    """
    module = PoolkitEmbeddingModule(model, dimensions=dimensions, truncate=truncate, prompt_name=prompt_name,
                                    prompt=prompt, **engine_kwargs)
    loader = module.dataloader(TextDataset(texts, ids), batch_size=batch_size, num_workers=num_workers)
    kwargs = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
              "enable_model_summary": False, "enable_progress_bar": False, **(trainer_kwargs or {})}
    trainer = pl.Trainer(callbacks=[ParquetPredictionWriter(output_dir)], **kwargs)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    return reassemble(output_dir) if trainer.is_global_zero else None
