"""The ``ray`` executor of ``poolkit embed``: shards embedded by a Ray Data actor pool.

Registered under the ``poolkit.executors`` entry points (see this package's
``pyproject.toml``), so ``poolkit embed --engine ray`` finds it without the
core importing this package.

Each actor holds one model and handles whole shards: it reads the shard's rows
from the input, embeds them and writes the shard file itself (atomically), so
only small per-shard statistics travel back to the driver, which records them
in the manifest as they arrive. The input file and the output directory must
be reachable from every node (a shared or network file system). A shard whose
actor dies is retried by Ray; rewriting a shard is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from poolkit.corpus import CorpusExecutor, CorpusJob, ShardRecorder, ShardSpec, ShardStats, process_shard

from .dataset import plan_workers

logger = logging.getLogger(__name__)


class ShardWorker:
    """Ray Data callable class: one model per actor; each call embeds and writes whole shards."""

    def __init__(self, job: CorpusJob, use_gpu: bool = False) -> None:
        overrides = {} if "device" in job.engine_kwargs else {"device": "cuda" if use_gpu else "cpu"}
        self.job = job
        self.embedder = job.make_embedder(**overrides)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats: list[ShardStats] = []
        for index, start, stop, offset in zip(batch["index"], batch["row_start"], batch["row_stop"],
                                              batch["byte_offset"]):
            spec = ShardSpec(int(index), int(start), int(stop), None if offset < 0 else int(offset))
            stats.append(process_shard(self.job, spec, self.embedder))
        return {
            "index": np.array([s.index for s in stats], dtype=np.int64),
            "rows": np.array([s.rows for s in stats], dtype=np.int64),
            "tokens": np.array([s.tokens for s in stats], dtype=np.int64),
            "truncated": np.array([s.truncated for s in stats], dtype=np.int64),
            "seconds": np.array([s.seconds for s in stats], dtype=np.float64),
        }


class RayExecutor(CorpusExecutor):
    """``ray``: ``pending`` shards on a Ray actor pool (joins ``RAY_ADDRESS`` or starts a local Ray).

    ``workers``: actors (default: one per GPU, else per CPU); ``gpus_per_worker``:
    GPUs per actor (default: 1 when the cluster has GPUs); ``device="cpu"``
    keeps the actors off GPUs (unless ``gpus_per_worker`` says otherwise).
    """

    modalities = ("text", "image")  # workers run the same embedder, which prepares images as texts

    name = "ray"

    def run(self, job: CorpusJob, pending: Sequence[ShardSpec], recorder: ShardRecorder) -> None:
        gpus_per_worker = self.gpus_per_worker
        if self.device == "cpu" and gpus_per_worker is None:
            gpus_per_worker = 0.0
        import ray
        import ray.data

        started = False
        if not ray.is_initialized():
            ray.init()
            started = True
        try:
            compute, gpus, _cpus = plan_workers(self.workers, gpus_per_worker)
            items = [{"index": s.index, "row_start": s.row_start, "row_stop": s.row_stop,
                      "byte_offset": -1 if s.byte_offset is None else s.byte_offset} for s in pending]
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                ShardWorker,
                fn_constructor_kwargs={"job": job, "use_gpu": gpus > 0},
                batch_size=1,
                batch_format="numpy",
                compute=compute,
                num_gpus=gpus or None,
                udf_modifying_row_count=False,
            )
            seen: set[int] = set()
            for row in ds.iter_rows():
                stats = ShardStats(int(row["index"]), int(row["rows"]), int(row["tokens"]), int(row["truncated"]),
                                   float(row["seconds"]))
                if stats.index in seen:  # a retried shard reported twice: its file was simply rewritten
                    continue
                seen.add(stats.index)
                recorder(stats)
        finally:
            if started:
                ray.shutdown()
