"""The core's quantization helpers (poolkit.quantize): per-vector int8 / uint8, packed binary, and the
calibrated int8 that poolkit_faiss re-exports."""

from __future__ import annotations

import numpy as np
import pytest

from poolkit.quantize import (
    dequantize_int8,
    quantize_binary,
    quantize_binary_signed,
    quantize_int8,
    quantize_int8_per_vector,
    quantize_uint8_per_vector,
)

pytestmark = pytest.mark.unit


def _unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


def test_int8_per_vector_scales_each_vector_to_its_largest_component() -> None:
    x = np.array([[0.5, -0.25, 0.125, 0.0], [-2.0, 1.0, 0.5, 0.004], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    codes = quantize_int8_per_vector(x)
    assert codes.dtype == np.int8
    assert codes.tolist() == [[127, -64, 32, 0],  # 0.25 * 254 = 63.5 → 64 (half to even), 31.75 → 32
                              [-127, 64, 32, 0],
                              [0, 0, 0, 0]]  # a zero vector: zeros, no division by zero
    # one vector as a 1-D array: the same codes as in a batch; the scale does not depend on the other vectors
    assert quantize_int8_per_vector(x[1]).tolist() == codes[1].tolist()
    assert quantize_int8_per_vector(x[:2] * 3.0).tolist() == codes[:2].tolist()


def test_uint8_is_int8_plus_128() -> None:
    x = _unit_vectors(5, 40)
    int8, uint8 = quantize_int8_per_vector(x), quantize_uint8_per_vector(x)
    assert uint8.dtype == np.uint8
    assert np.array_equal(uint8.astype(np.int16), int8.astype(np.int16) + 128)
    assert int(np.abs(int8).max(axis=1).min()) == 127  # every vector uses the whole range
    assert uint8.min() >= 1 and uint8.max() <= 255
    assert quantize_uint8_per_vector(np.zeros(4)).tolist() == [128] * 4


def test_per_vector_codes_keep_cosine_similarity() -> None:
    docs, queries = _unit_vectors(50, 256, seed=1), _unit_vectors(5, 256, seed=2)
    exact = _cosines(queries, docs)
    for quantize in (quantize_int8_per_vector, lambda v: quantize_uint8_per_vector(v).astype(np.int16) - 128):
        approx = _cosines(quantize(queries), quantize(docs))
        assert np.abs(approx - exact).max() < 0.01
    # ranking: the best document by int8 cosine is the best by float cosine
    approx = _cosines(quantize_int8_per_vector(queries), quantize_int8_per_vector(docs))
    assert np.array_equal(approx.argmax(axis=1), exact.argmax(axis=1))


def test_binary_packs_signs_most_significant_bit_first() -> None:
    x = np.array([[1, -1, -1, -1, -1, -1, -1, 0.5, -1, 2.0], [-1] * 10], dtype=np.float32)
    ubinary = quantize_binary(x)
    assert ubinary.dtype == np.uint8
    # dims 0 and 7 set → 0b1000_0001; dim 9 set in the second byte, padded with zero bits → 0b0100_0000
    assert ubinary.tolist() == [[129, 64], [0, 0]]
    binary = quantize_binary_signed(x)
    assert binary.dtype == np.int8
    assert binary.tolist() == [[1, -64], [-128, -128]]  # each byte minus 128
    assert quantize_binary(np.zeros(8)).tolist() == [0]  # zero is not positive
    assert np.array_equal(np.unpackbits(quantize_binary(x), axis=1)[:, :10], (x > 0).astype(np.uint8))


def test_calibrated_int8_round_trip() -> None:
    x = _unit_vectors(100, 32)
    codes, ranges = quantize_int8(x)
    assert codes.dtype == np.int8 and ranges.shape == (2, 32)
    assert codes.min() == -128 and codes.max() == 127
    assert np.abs(dequantize_int8(codes, ranges) - x).max() <= (ranges[1] - ranges[0]).max() / 255


def test_faiss_integration_uses_the_core_helpers() -> None:
    quantize = pytest.importorskip("poolkit_faiss.quantize")
    import poolkit.quantize as core
    import poolkit_faiss

    for name in ("dequantize_int8", "int8_ranges", "quantize_binary", "quantize_int8"):
        assert getattr(quantize, name) is getattr(core, name)
    assert poolkit_faiss.quantize_int8 is core.quantize_int8
