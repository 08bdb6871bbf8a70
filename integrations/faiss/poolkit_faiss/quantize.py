"""Quantized embeddings (int8 / binary) for faiss's integer and binary indexes.

The engine returns float32 embeddings; these helpers turn them into the two
compact forms faiss can index directly, with the same conventions as
sentence-transformers' ``quantize_embeddings``:

* ``int8``: per-dimension ranges (calibrated on a sample) mapped to
  [-128, 127]. The values feed ``faiss.index_factory(d, "SQ8_direct_signed")``
  (an ``IndexScalarQuantizer`` that stores them as they are, no training) as
  float32.
* binary: one bit a dimension (``x > 0``), packed 8 to a byte, for
  ``faiss.IndexBinaryFlat(d)`` / ``IndexBinaryHNSW`` / ``IndexBinaryIVF``
  (Hamming distance). Rescore the top candidates with float vectors when
  recall matters: binary codes of a model not trained for them lose a lot.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def int8_ranges(calibration: Any) -> np.ndarray:
    """``(2, d)`` per-dimension minimum and maximum of a calibration sample."""
    x = np.asarray(calibration, dtype=np.float32)
    return np.stack([x.min(axis=0), x.max(axis=0)])


def quantize_int8(vectors: Any, ranges: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scalar-quantize to int8; returns ``(codes, ranges)`` (ranges from ``vectors`` if not given)."""
    x = np.asarray(vectors, dtype=np.float32)
    ranges = int8_ranges(x) if ranges is None else np.asarray(ranges, dtype=np.float32)
    starts = ranges[0]
    steps = np.maximum((ranges[1] - ranges[0]) / 255.0, np.finfo(np.float32).tiny)
    codes = np.clip(np.rint((x - starts) / steps) - 128, -128, 127).astype(np.int8)
    return codes, ranges


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Approximate float32 vectors back from int8 codes."""
    steps = (ranges[1] - ranges[0]) / 255.0
    return ((codes.astype(np.float32) + 128) * steps + ranges[0]).astype(np.float32)


def quantize_binary(vectors: Any) -> np.ndarray:
    """One bit a dimension (``x > 0``), packed big-endian into ``uint8``: ``(n, ceil(d/8))``."""
    x = np.asarray(vectors, dtype=np.float32)
    return np.packbits(x > 0, axis=-1)
