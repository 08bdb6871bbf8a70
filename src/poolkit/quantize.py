"""Quantized embeddings: int8 / uint8 scalar codes and packed binary codes, from float vectors (NumPy only).

The engine returns float32 embeddings; these helpers turn a batch of them
(``(n, d)``, or one vector ``(d,)``) into compact codes. Everything is a pure
function of its input: no torch, no state. Two families of int8 codes:

* **Calibrated** (:func:`int8_ranges`, :func:`quantize_int8`, :func:`dequantize_int8`), the convention of
  sentence-transformers' ``quantize_embeddings`` and of faiss's ``SQ8_direct_signed`` index: per-dimension
  ranges, measured on a calibration sample, mapped to [-128, 127]. Codes of two vectors are comparable only
  if both used the same ranges, so the ranges must be kept with the index (``poolkit_faiss`` does).
* **Per vector** (:func:`quantize_int8_per_vector`, :func:`quantize_uint8_per_vector`), what the server's
  Cohere-style ``/v2/embed`` sends as ``int8`` / ``uint8``: each vector is scaled on its own, symmetrically,
  so that its largest component (in absolute value) becomes ±127:
  ``int8 = rint(x * 127 / max|x|)`` in [-127, 127] and ``uint8 = int8 + 128`` in [1, 255] (a zero vector
  gives zeros, resp. 128s). A server cannot calibrate: a query and the documents it is compared with arrive
  in different requests, and codes that depend on what else was in a request (per-batch ranges) would not be
  comparable. A fixed range ([-1, 1] for normalized vectors) would be comparable but wastes the 8 bits: the
  components of a normalized d-dimensional vector are about 1/sqrt(d) (±8 of 127 at d = 256). Scaling
  each vector keeps its direction to within half a step per component, so **cosine similarity** of the codes
  approximates that of the floats (as do the rankings); a raw dot product of codes is the float dot product
  times ``127² / (max|a| · max|b|)``, a different factor per pair. ``uint8`` codes are the ``int8`` codes
  shifted by 128 (sentence-transformers' relation between the two): subtract 128 before computing cosines.

Binary codes, one bit a dimension (``x > 0``), packed 8 to a byte, most significant bit first (the first
dimension is the top bit of the first byte; a dimension count that is not a multiple of 8 is padded with 0
bits), as Cohere, sentence-transformers and faiss's binary indexes (Hamming distance) use them:
:func:`quantize_binary` gives the bytes as ``uint8`` (Cohere's ``ubinary``), :func:`quantize_binary_signed`
as ``int8``, each byte minus 128 (Cohere's and sentence-transformers' ``binary``: ``binary = ubinary - 128``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

INT8_PER_VECTOR_MAX = 127
"""The absolute value each vector's largest component is scaled to by the per-vector codes."""
UINT8_OFFSET = 128
"""``uint8`` codes are ``int8`` codes plus this; ``ubinary`` bytes are ``binary`` bytes plus this."""


def _floats(vectors: Any) -> np.ndarray:
    """``vectors`` as a float32 array of at least one dimension (one vector, or a batch of them)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("expected a vector or a batch of vectors, got a scalar")
    return x


# -- calibrated int8 (sentence-transformers / faiss) --------------------------------------------------


def int8_ranges(calibration: Any) -> np.ndarray:
    """``(2, d)`` per-dimension minimum and maximum of a calibration sample."""
    x = np.asarray(calibration, dtype=np.float32)
    return np.stack([x.min(axis=0), x.max(axis=0)])


def quantize_int8(vectors: Any, ranges: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scalar-quantize to int8 with per-dimension ranges; returns ``(codes, ranges)`` (ranges from
    ``vectors`` if not given)."""
    x = np.asarray(vectors, dtype=np.float32)
    ranges = int8_ranges(x) if ranges is None else np.asarray(ranges, dtype=np.float32)
    starts = ranges[0]
    steps = np.maximum((ranges[1] - ranges[0]) / 255.0, np.finfo(np.float32).tiny)
    codes = np.clip(np.rint((x - starts) / steps) - 128, -128, 127).astype(np.int8)
    return codes, ranges


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Approximate float32 vectors back from int8 codes of :func:`quantize_int8`."""
    steps = (ranges[1] - ranges[0]) / 255.0
    return ((codes.astype(np.float32) + 128) * steps + ranges[0]).astype(np.float32)


# -- per-vector int8 / uint8 (the server's Cohere-style codes) --------------------------------------------


def quantize_int8_per_vector(vectors: Any) -> np.ndarray:
    """int8 codes in [-127, 127], each vector scaled so that its largest absolute component is 127.

    ``rint(x * 127 / max|x|)`` computed in float32, rounding half to even; a zero vector gives zeros.
    Compare codes by cosine similarity (see the module's docstring).
    """
    x = _floats(vectors)
    peak = np.max(np.abs(x), axis=-1, keepdims=True)
    scale = np.divide(np.float32(INT8_PER_VECTOR_MAX), peak, out=np.zeros_like(peak), where=peak > 0)
    return np.clip(np.rint(x * scale), -INT8_PER_VECTOR_MAX, INT8_PER_VECTOR_MAX).astype(np.int8)


def quantize_uint8_per_vector(vectors: Any) -> np.ndarray:
    """uint8 codes in [1, 255]: :func:`quantize_int8_per_vector` plus 128 (a zero vector gives 128s)."""
    return (quantize_int8_per_vector(vectors).astype(np.int16) + UINT8_OFFSET).astype(np.uint8)


# -- binary ---------------------------------------------------------------------------------------------


def quantize_binary(vectors: Any) -> np.ndarray:
    """One bit a dimension (``x > 0``), packed most significant bit first into ``uint8``:
    ``(n, ceil(d/8))`` (Cohere's ``ubinary``)."""
    x = _floats(vectors)
    return np.packbits(x > 0, axis=-1)


def quantize_binary_signed(vectors: Any) -> np.ndarray:
    """:func:`quantize_binary`'s bytes minus 128, as ``int8`` (Cohere's and sentence-transformers' ``binary``)."""
    return (quantize_binary(vectors).astype(np.int16) - UINT8_OFFSET).astype(np.int8)


__all__ = [
    "INT8_PER_VECTOR_MAX", "UINT8_OFFSET", "dequantize_int8", "int8_ranges", "quantize_binary",
    "quantize_binary_signed", "quantize_int8", "quantize_int8_per_vector", "quantize_uint8_per_vector",
]
