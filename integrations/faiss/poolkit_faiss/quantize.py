"""Quantized embeddings (int8 / binary) for faiss's integer and binary indexes.

The helpers live in the core (:mod:`poolkit.quantize`, shared with the server's
``/v2/embed``); this module keeps their faiss-facing names. The engine returns
float32 embeddings; these turn them into the two compact forms faiss can index
directly, with the same conventions as sentence-transformers' ``quantize_embeddings``:

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

from poolkit.quantize import dequantize_int8, int8_ranges, quantize_binary, quantize_int8

__all__ = ["dequantize_int8", "int8_ranges", "quantize_binary", "quantize_int8"]
