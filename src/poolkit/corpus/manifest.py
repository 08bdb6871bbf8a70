"""``DIR/manifest.json``: the job's identity and its finished shards, so a rerun resumes.

The shard files are the truth and the manifest an index of them: on opening,
an entry whose file is gone is dropped (that shard runs again), and a complete
shard file of this job that the manifest missed (a crash between writing the
file and saving the manifest) is adopted instead of being embedded again.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from .shards import CorpusJob, ShardStats, read_shard_metadata
from .sources import ShardSpec, shard_file_name

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


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
        """Open (or start) the manifest of ``job.out_dir``; a different job's output is an error unless ``overwrite``."""
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
                keys = [*new, *(k for k in old if k not in new)]
                diff = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))
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
        """The shards still to embed, in input order."""
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
        """Write the manifest atomically (a temporary file renamed into place)."""
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
