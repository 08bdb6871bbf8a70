"""The langchain-tests VectorStoreIntegrationTests suite for PoolkitFAISS (no test overridden, none xfailed).

Run twice: on the default exact index (created on first add), and on an HNSW
plan, whose deletes are tombstones in poolkit_faiss (a different code path).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from langchain_poolkit import PoolkitFAISS


class TestPoolkitFAISSStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self) -> Iterator[VectorStore]:  # type: ignore[override]
        store = PoolkitFAISS(self.get_embeddings())
        try:
            yield store
        finally:
            store.delete()


class TestPoolkitFAISSStandardHNSW(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self) -> Iterator[VectorStore]:  # type: ignore[override]
        from poolkit_faiss import plan_for

        store = PoolkitFAISS(self.get_embeddings(), plan=plan_for("hnsw", 100, 6))
        try:
            yield store
        finally:
            store.delete()
