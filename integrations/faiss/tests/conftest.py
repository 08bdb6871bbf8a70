"""Shared fixtures for the poolkit_faiss tests."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Run faiss and torch single-threaded in these tests, restoring both afterwards.

    On a busy 2-core CI box OpenMP spinning makes faiss PQ training ~50x and
    the engine ~2x slower with 2 threads than with 1.
    """
    import torch

    faiss_before, torch_before = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(faiss_before)
    torch.set_num_threads(torch_before)
