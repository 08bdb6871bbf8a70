"""Server mode against a real ``poolkit serve default``: equals the in-process engine; errors are clear."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document

from langchain_poolkit import PoolkitBadRequestError, PoolkitEmbeddings, PoolkitReranker, PoolkitServerError

QUERY = "library for vector similarity search"


@pytest.fixture(scope="module")
def sample_texts(corpus_loader: Any) -> list[str]:
    rows = corpus_loader(limit=400)
    long_rows = [r["text"] for r in rows if len(r["text"]) > 1500][:4]  # past the 256-token limit
    return [r["text"] for r in rows[:60]] + long_rows


def test_server_embeddings_equal_in_process(
    server_url: str, server_api_key: str, default_llm: Any, sample_texts: list[str]
) -> None:
    local = PoolkitEmbeddings(llm=default_llm)
    remote = PoolkitEmbeddings(base_url=server_url, api_key=server_api_key, chunk_size=16)
    assert remote.mode == "server" and local.mode == "in-process"
    a = np.asarray(local.embed_documents(sample_texts))
    b = np.asarray(remote.embed_documents(sample_texts))
    assert a.shape == b.shape == (len(sample_texts), 384)
    assert np.abs(a - b).max() < 1e-4
    assert (a * b).sum(axis=1).min() > 0.99999
    q_local, q_remote = local.embed_query(QUERY), remote.embed_query(QUERY)
    assert type(q_remote[0]) is float and np.abs(np.subtract(q_local, q_remote)).max() < 1e-4


async def test_server_async_equals_sync(server_url: str, server_api_key: str, sample_texts: list[str]) -> None:
    remote = PoolkitEmbeddings(base_url=server_url + "/v1", api_key=server_api_key, chunk_size=8, max_concurrency=3)
    sync = remote.embed_documents(sample_texts[:30])
    assert np.abs(np.subtract(await remote.aembed_documents(sample_texts[:30]), sync)).max() < 1e-5
    assert np.abs(np.subtract(await remote.aembed_query(sample_texts[0]), sync[0])).max() < 1e-5


def test_server_reranker_equals_in_process(
    server_url: str, server_api_key: str, default_llm: Any, sample_texts: list[str]
) -> None:
    docs = [Document(page_content=t, id=str(i)) for i, t in enumerate(sample_texts[:20])]
    local = PoolkitReranker(llm=default_llm, top_n=5).compress_documents(docs, QUERY)
    remote_reranker = PoolkitReranker(base_url=server_url, api_key=server_api_key, top_n=5)
    remote = remote_reranker.compress_documents(docs, QUERY)
    assert [d.id for d in remote] == [d.id for d in local]
    assert np.allclose(
        [d.metadata["relevance_score"] for d in remote], [d.metadata["relevance_score"] for d in local], atol=1e-4
    )


async def test_server_reranker_async(server_url: str, server_api_key: str) -> None:
    docs = [Document(page_content=t) for t in ("Paris is in France.", "FAISS does similarity search.", "Cats.")]
    reranker = PoolkitReranker(base_url=server_url, api_key=server_api_key, top_n=2)
    out = await reranker.acompress_documents(docs, QUERY)
    assert [d.page_content for d in out] == [d.page_content for d in reranker.compress_documents(docs, QUERY)]
    assert out[0].page_content == "FAISS does similarity search."


def test_server_errors_are_clear(server_url: str, server_api_key: str) -> None:
    bad_dims = PoolkitEmbeddings(base_url=server_url, api_key=server_api_key, dimensions=64)
    with pytest.raises(PoolkitBadRequestError, match="does not support matryoshka representation") as info:
        bad_dims.embed_query("x")
    assert info.value.status_code == 400 and isinstance(info.value, ValueError)

    with pytest.raises(PoolkitServerError, match=r"HTTP 401.*API key"):
        PoolkitEmbeddings(base_url=server_url, api_key="wrong").embed_query("x")

    strict = PoolkitEmbeddings(base_url=server_url, api_key=server_api_key, truncate_prompt_tokens=None)
    with pytest.raises(PoolkitBadRequestError, match="256"):
        strict.embed_documents(["word " * 400])

    with pytest.raises(PoolkitServerError, match="could not reach poolkit server"):
        PoolkitEmbeddings(base_url="http://127.0.0.1:9", max_retries=0, timeout=2).embed_query("x")


async def test_server_errors_async(server_url: str) -> None:
    with pytest.raises(PoolkitServerError, match="HTTP 401"):
        await PoolkitReranker(base_url=server_url, api_key="wrong").acompress_documents(
            [Document(page_content="a")], "q"
        )
