"""Recall@10 against exact search for every plan the helper picks, on clustered data.

(Random isotropic vectors make every approximate index look broken, so the
data is a Gaussian mixture with a low intrinsic dimension: see
``poolkit_faiss.datasets``.)
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from poolkit_faiss import VectorIndex, clustered_vectors, plan_for, plan_index, recall_at_k

N, D, Q = 20_000, 64, 200


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = clustered_vectors(N + Q, D, seed=7)
    return x[:N], x[N:]


def _exact(base: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


def _budget_between(upper: str, lower: str, d: int = D, **kw) -> int:
    """A budget that fits the ``lower`` family but not the ``upper`` one."""
    big = plan_for(upper, N, d, **kw).total_bytes
    small = plan_for(lower, N, d, **kw).total_bytes
    assert small < big
    return (small + big) // 2


def _budget_between_dims(family: str, d_big: int, d_small: int, **kw) -> int:
    big = plan_for(family, N, d_big, **kw).total_bytes
    small = plan_for(family, N, d_small, **kw).total_bytes
    return (small + big) // 2


# (expected family, expected dimension, plan_index kwargs)
SCENARIOS = [
    ("flat/fp32", 64, dict(memory_budget_bytes=100 * 2**20)),
    ("flat/sq8", 64, dict(memory_budget_bytes=_budget_between("flat/fp32", "flat/sq8"))),
    ("hnsw/fp32", 64, dict(memory_budget_bytes=100 * 2**20, flat_max_vectors=10_000, hnsw_m=16)),
    (
        "ivf/fp32",
        64,
        dict(
            memory_budget_bytes=_budget_between("hnsw/fp32", "ivf/fp32", hnsw_m=16),
            flat_max_vectors=10_000,
            hnsw_m=16,
        ),
    ),
    ("ivf/sq8", 64, dict(memory_budget_bytes=_budget_between("ivf/fp32", "ivf/sq8"), flat_max_vectors=10_000)),
    # Matryoshka: float32 at the largest supported dimension that fits, before compression.
    (
        "flat/fp32",
        32,
        dict(memory_budget_bytes=_budget_between_dims("flat/fp32", 64, 32), matryoshka_dimensions=[16, 32]),
    ),
    (
        "ivf/fp32",
        32,
        dict(
            memory_budget_bytes=_budget_between_dims("ivf/fp32", 64, 32),
            matryoshka_dimensions=[16, 32],
            flat_max_vectors=10_000,
        ),
    ),
]


@pytest.mark.parametrize(("family", "dimension", "kwargs"), SCENARIOS, ids=[f"{f}@{d}" for f, d, _ in SCENARIOS])
def test_recall_at_10_of_every_picked_plan(family: str, dimension: int, kwargs: dict, data) -> None:
    base, queries = data
    kwargs = dict(kwargs)
    plan = plan_index(N, kwargs.pop("memory_budget_bytes"), dimension=D, **kwargs)
    assert (plan.family, plan.dimension) == (family, dimension), plan.reason
    assert plan.expected_recall >= 0.95
    index = VectorIndex.from_vectors(base, plan=plan, show_progress=False)
    assert index.serialized_size() <= plan.memory_budget_bytes * 1.10
    found = index.search(queries, 10).ids
    # Exact search over the same (possibly Matryoshka-truncated, re-normalized) vectors.
    truth = _exact(index._prepare(base), index._prepare(queries))
    assert recall_at_k(found, truth) >= 0.95, (plan, recall_at_k(found, truth))
