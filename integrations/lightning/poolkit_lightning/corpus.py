"""The ``lightning`` executor of ``poolkit embed``: shards distributed over ranks by ``Trainer.predict``.

Registered under the ``poolkit.executors`` entry points (see this package's
``pyproject.toml``), so ``poolkit embed --engine lightning`` finds it without
the core importing this package.

One dataset item is one shard of the corpus; the collate reads it and prepares
its request (on the task layer, no model needed), ``predict_step`` embeds it on
the rank's device and :class:`CorpusShardWriter` writes the shard file
(atomically) from that rank. Lightning's predict sampler hands each shard to
exactly one rank. Only global rank 0 records finished shards in the manifest,
after ``predict``. With ``strategy="ddp"`` (the default for several devices)
Lightning starts the other ranks by re-running the same command, so every rank
opens the same job; on several nodes run the command on each (the number of
nodes: :class:`LightningArgs`, ``POOLKIT_LIGHTNING_NUM_NODES``) with the input
and output on a shared file system.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from poolkit.corpus import (
    CorpusExecutor,
    CorpusJob,
    Embedded,
    ShardRecorder,
    ShardSpec,
    ShardStats,
    read_shard_metadata,
)
from poolkit.settings import resolve, setting

from .predict import PoolkitEmbeddingModule

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


@dataclass
class LightningArgs:
    """Trainer settings of the ``lightning`` executor that ``poolkit embed`` has no flags for.

    Declared once with :func:`poolkit.settings.setting`: each is a keyword of
    :class:`LightningExecutor` or else its ``POOLKIT_*`` variable.
    """

    strategy: str | None = setting(
        None, env="LIGHTNING_STRATEGY",
        help="Lightning strategy (ddp, ddp_spawn, fsdp...); None: ddp for several devices, else auto")
    num_nodes: int = setting(
        1, env="LIGHTNING_NUM_NODES", parse=_positive_int,
        help="nodes the job runs on (run the same command on each, input and output on a shared file system)")

    def __post_init__(self) -> None:
        if isinstance(self.num_nodes, bool) or not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise ValueError(f"num_nodes must be a positive integer, got {self.num_nodes!r}")


class ShardDataset(Dataset):
    def __init__(self, specs: Sequence[ShardSpec]) -> None:
        self.specs = list(specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> ShardSpec:
        return self.specs[index]


class ShardCollate:
    """Reads one shard of the corpus and prepares its request (a batch is one shard)."""

    def __init__(self, job: CorpusJob) -> None:
        self.job = job
        self.tokenizer = job.make_tokenizer()

    def __call__(self, specs: Sequence[ShardSpec]) -> dict[str, Any]:
        if len(specs) != 1:
            raise ValueError("ShardCollate takes one shard per batch (batch_size=1)")
        (spec,) = specs
        start = time.perf_counter()
        ids, texts = self.job.source.read(spec)
        try:
            request = self.tokenizer(texts, first_index=spec.row_start)
        except ValueError as exc:
            raise ValueError(f"shard {spec.index}, rows {spec.row_start}-{spec.row_stop - 1}: {exc}") from exc
        return {"shard": spec, "start": start, "index": np.arange(spec.row_start, spec.row_stop),
                "id": ids, "request": request}


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


class LightningExecutor(CorpusExecutor):
    """``lightning``: ``pending`` shards with ``Trainer.predict`` on ``workers`` devices (default 1) of ``device``.

    ``strategy`` / ``num_nodes``: see :class:`LightningArgs` (unset: their
    ``POOLKIT_LIGHTNING_*`` variables, else the defaults). ``gpus_per_worker``
    does not apply: each rank holds one device.
    """

    modalities = ("text", "image")  # workers run the same embedder, which prepares images as texts

    name = "lightning"

    def __init__(self, *, workers: int | None = None, gpus_per_worker: float | None = None,
                 device: str | None = None, strategy: str | None = None, num_nodes: int | None = None) -> None:
        super().__init__(workers=workers, gpus_per_worker=gpus_per_worker, device=device)
        self.settings = resolve(LightningArgs, {"strategy": strategy, "num_nodes": num_nodes},
                                caller="LightningExecutor")

    def trainer_kwargs(self) -> dict[str, Any]:
        """``accelerator``, ``devices``, ``num_nodes`` and ``strategy`` of the ``Trainer``."""
        devices = self.workers or 1
        device = self.device
        accelerator = "auto" if device in (None, "auto") else ("gpu" if device.startswith("cuda") else device)
        strategy = self.settings.strategy or ("ddp" if devices > 1 else "auto")
        return {"accelerator": accelerator, "devices": devices, "num_nodes": self.settings.num_nodes,
                "strategy": strategy}

    def run(self, job: CorpusJob, pending: Sequence[ShardSpec], recorder: ShardRecorder) -> None:
        # Each rank runs on its own device (trainer.strategy.root_device), whatever a local run was told.
        engine_kwargs = {k: v for k, v in job.engine_kwargs.items() if k != "device"}
        module = PoolkitEmbeddingModule(job.model, **asdict(job.options), **engine_kwargs)
        loader = DataLoader(ShardDataset(pending), batch_size=1, shuffle=False, collate_fn=ShardCollate(job))
        trainer = pl.Trainer(
            **self.trainer_kwargs(), callbacks=[CorpusShardWriter(job)], logger=False, enable_checkpointing=False,
            enable_model_summary=False,
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
