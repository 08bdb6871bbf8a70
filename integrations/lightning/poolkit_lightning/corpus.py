"""The ``lightning`` engine of ``poolkit embed``: shards distributed over ranks by ``Trainer.predict``.

One dataset item is one shard of the corpus; the collate reads and tokenizes
it, ``predict_step`` embeds it on the rank's device and
:class:`CorpusShardWriter` writes the shard file (atomically) from that rank.
Lightning's predict sampler hands each shard to exactly one rank. Only global
rank 0 records finished shards in the manifest, after ``predict``. With
``strategy="ddp"`` (the default for several devices) Lightning starts the
other ranks by re-running the same command, so every rank opens the same job;
on several nodes run the command on each (``--num-nodes`` via
``POOLKIT_LIGHTNING_NUM_NODES``) with the input and output on a shared file system.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from poolkit.corpus import CorpusJob, Embedded, ShardRecorder, ShardSpec, ShardStats, read_shard_metadata

from .predict import PoolkitEmbeddingModule

logger = logging.getLogger(__name__)


class ShardDataset(Dataset):
    def __init__(self, specs: Sequence[ShardSpec]) -> None:
        self.specs = list(specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> ShardSpec:
        return self.specs[index]


class ShardCollate:
    """Reads one shard of the corpus and tokenizes it (a batch is one shard)."""

    def __init__(self, job: CorpusJob) -> None:
        self.job = job
        self.tokenizer = job.make_tokenizer()

    def __call__(self, specs: Sequence[ShardSpec]) -> dict[str, Any]:
        if len(specs) != 1:
            raise ValueError("ShardCollate takes one shard per batch (batch_size=1)")
        (spec,) = specs
        start = time.perf_counter()
        ids, texts = self.job.source.read(spec)
        tokens, truncated = self.tokenizer(texts)
        return {"shard": spec, "start": start, "index": np.arange(spec.row_start, spec.row_stop),
                "id": ids, "tokens": tokens, "truncated": truncated}


class CorpusShardWriter(BasePredictionWriter):
    """Writes each predicted shard as ``shard-NNNNN.parquet`` of the corpus job, from the rank that embedded it."""

    def __init__(self, job: CorpusJob) -> None:
        super().__init__(write_interval="batch")
        self.job = job

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        spec: ShardSpec = prediction["shard"]
        embedded = Embedded(prediction["embedding"], prediction["num_tokens"], prediction["truncated"])
        stats = self.job.write_shard(spec, prediction["id"], embedded, time.perf_counter() - prediction["start"])
        logger.info("rank %d wrote shard %05d (%d rows)", trainer.global_rank, spec.index, stats.rows)


def run_corpus_shards(
    job: CorpusJob,
    pending: Sequence[ShardSpec],
    recorder: ShardRecorder,
    *,
    workers: int | None = None,
    device: str | None = None,
    gpus_per_worker: float | None = None,
    **_: Any,
) -> None:
    """Embed ``pending`` shards with ``Trainer.predict`` on ``workers`` devices (default 1) of ``device``."""
    devices = workers or 1
    accelerator = "auto" if device in (None, "auto") else ("gpu" if device.startswith("cuda") else device)
    strategy = os.environ.get("POOLKIT_LIGHTNING_STRATEGY") or ("ddp" if devices > 1 else "auto")
    num_nodes = int(os.environ.get("POOLKIT_LIGHTNING_NUM_NODES", "1"))
    # Each rank runs on its own device (trainer.strategy.root_device), whatever a local run was told.
    engine_kwargs = {k: v for k, v in job.engine_kwargs.items() if k != "device"}
    module = PoolkitEmbeddingModule(job.model, dimensions=job.dimensions, truncate=job.truncate, **engine_kwargs)
    loader = DataLoader(ShardDataset(pending), batch_size=1, shuffle=False, collate_fn=ShardCollate(job))
    trainer = pl.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
        callbacks=[CorpusShardWriter(job)], logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=recorder.progress is not None and not recorder.progress.disable,
    )
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        recorder.read_only = True
        return
    for spec in pending:
        meta = read_shard_metadata(job.shard_path(spec))
        if meta is None or meta.get("fingerprint") != job.fingerprint or meta.get("rows") != spec.rows:
            raise RuntimeError(f"Shard {spec.index} was not written by any rank")
        recorder(ShardStats(spec.index, meta["rows"], meta["tokens"], meta["truncated"], meta["seconds"]))
