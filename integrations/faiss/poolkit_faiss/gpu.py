"""Moving indexes to GPUs when faiss has them.

faiss-cpu has no GPU symbols; a GPU build reports ``faiss.get_num_gpus() > 0``.
GPU faiss supports Flat, IVF-Flat, IVF-SQ and (8-bit) IVF-PQ, not HNSW, fast-scan
PQ or RaBitQ: those stay on the CPU (logged, not an error). The CPU index
stays the source of truth (writes, deletes, saving); the GPU copy serves
searches and is re-made after the index changes.
"""

from __future__ import annotations

import logging
from typing import Any

import faiss

logger = logging.getLogger(__name__)

#: Codecs GPU faiss can clone (HNSW graphs cannot be cloned at all).
GPU_CODECS = frozenset({"fp32", "sq8"})


def gpu_count() -> int:
    """Number of GPUs faiss can use (0 on faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:
        return 0


def can_use_gpu(layout: str, codec: str) -> bool:
    """Whether this build has GPUs and GPU faiss supports the family."""
    return gpu_count() > 0 and hasattr(faiss, "index_cpu_to_all_gpus") and layout != "hnsw" and codec in GPU_CODECS


def to_gpu(index: Any, layout: str, codec: str) -> Any | None:
    """A GPU clone of ``index`` (sharded over all GPUs), or ``None`` when it stays on the CPU."""
    if not can_use_gpu(layout, codec):
        if gpu_count() > 0:
            logger.info("faiss has GPUs but %s/%s is CPU-only; searching on the CPU", layout, codec)
        return None
    try:
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except Exception as exc:
        logger.warning("could not move the %s/%s index to the GPU (%s); using the CPU", layout, codec, exc)
        return None
