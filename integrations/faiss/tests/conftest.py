"""Shared fixtures for the poolkit_faiss tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="session")
def prompted_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny Sentence-Transformers encoder with query/document prompts, Matryoshka dimensions, and pooling
    that leaves the prompt's tokens out (so hand-prefixed texts give other vectors than the engine's prompts)."""
    from poolkit import LLM
    from poolkit.testing import add_sentence_transformers_files, build_tiny_checkpoint, write_config_overrides

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("faiss-prompted") / "model", "encoder", seed=5)
    add_sentence_transformers_files(
        path, pooling="mean", prompts={"query": "query: ", "document": "passage: "}, include_prompt=False
    )
    write_config_overrides(path, matryoshka_dimensions=[32, 16])
    return LLM(str(path), dtype="float32")
