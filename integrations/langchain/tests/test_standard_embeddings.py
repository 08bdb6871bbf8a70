"""The langchain-tests standard suites for PoolkitEmbeddings (no test overridden, none xfailed).

- unit suite twice: server mode (construction only, no network) and in-process
  (a shared tiny engine); ``test_init_from_env`` runs via ``POOLKIT_API_KEY``;
- integration suite twice: in-process on a tiny random encoder, and server mode
  against ``poolkit serve default``.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_poolkit import PoolkitEmbeddings


class TestPoolkitEmbeddingsUnitServerMode(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[PoolkitEmbeddings]:
        return PoolkitEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        # Server mode connects lazily: constructing it needs no server.
        return {"base_url": "http://127.0.0.1:9/v1", "model": "all-MiniLM-L6-v2"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"POOLKIT_API_KEY": "sk-from-env"},
            {"base_url": "http://127.0.0.1:9", "model": "all-MiniLM-L6-v2"},
            {"api_key": "sk-from-env", "base_url": "http://127.0.0.1:9", "model": "all-MiniLM-L6-v2"},
        )


class TestPoolkitEmbeddingsUnitInProcess(EmbeddingsUnitTests):
    @pytest.fixture(autouse=True)
    def _engine(self, tiny_encoder_llm: Any) -> None:
        type(self).llm = tiny_encoder_llm

    @property
    def embeddings_class(self) -> type[PoolkitEmbeddings]:
        return PoolkitEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"llm": self.llm}


class TestPoolkitEmbeddingsIntegrationInProcess(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _engine(self, tiny_encoder_llm: Any) -> None:
        type(self).llm = tiny_encoder_llm

    @property
    def embeddings_class(self) -> type[PoolkitEmbeddings]:
        return PoolkitEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"llm": self.llm}


class TestPoolkitEmbeddingsIntegrationServer(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _server(self, server_url: str, server_api_key: str) -> None:
        type(self).url = server_url
        type(self).key = server_api_key

    @property
    def embeddings_class(self) -> type[PoolkitEmbeddings]:
        return PoolkitEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"base_url": self.url + "/v1", "api_key": self.key}
