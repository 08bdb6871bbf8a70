"""The size model against the serialized size of real indexes (>= 20k clustered vectors)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from poolkit_faiss import CODECS, VectorIndex, clustered_vectors, plan_for
from poolkit_faiss.planning import CODEC_BY_NAME

pytestmark = pytest.mark.unit

N = 20_000

FAMILIES = (
    ["hnsw/fp32"]
    + [f"flat/{c.name}" for c in CODECS if c.available()]
    + [f"ivf/{c.name}" for c in CODECS if c.available()]
)


@pytest.fixture(scope="module")
def vectors() -> dict[int, np.ndarray]:
    return {64: clustered_vectors(N, 64, seed=3), 384: clustered_vectors(N, 384, seed=4)}


def _check(plan, x: np.ndarray) -> VectorIndex:
    index = VectorIndex.from_vectors(x, plan=plan, show_progress=False)
    assert len(index) == N == index.ntotal
    actual = index.serialized_size()
    assert abs(plan.total_bytes - actual) <= 0.10 * actual, (plan, actual)
    return index


@pytest.mark.parametrize("family", FAMILIES)
def test_total_bytes_within_10_percent_of_serialized_size(family: str, vectors) -> None:
    # Small nlist / M and a small training sample keep this fast on 2 cores.
    plan = plan_for(family, N, 64, nlist=64, hnsw_m=16, train_size=5_000)
    _check(plan, vectors[64])


@pytest.mark.parametrize("family", ["flat/fp32", "ivf/sq8", "ivf/rabitq"])
def test_total_bytes_at_384_dimensions(family: str, vectors) -> None:
    if family.endswith("rabitq") and not CODEC_BY_NAME["rabitq"].available():
        pytest.skip("no RaBitQ in this faiss build")
    plan = plan_for(family, N, 384, nlist=64, train_size=5_000)
    _check(plan, vectors[384])


def test_hnsw_tombstones_and_ids_in_the_written_file(vectors, tmp_path) -> None:
    """The saved faiss file is what the model predicts, also after deletes (tombstones stay)."""
    plan = plan_for("hnsw/fp32", N, 64, hnsw_m=16)
    index = VectorIndex(plan, hnsw_compact_threshold=None)
    index.add(vectors[64])
    index.delete(range(0, 1000))
    folder = index.save(tmp_path / "idx")
    size = (folder / "index.faiss").stat().st_size
    assert abs(plan.total_bytes - size) <= 0.10 * size
    assert faiss.read_index(str(folder / "index.faiss")).ntotal == N
