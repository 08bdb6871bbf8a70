"""Query/document prompts and truncation reports come from poolkit itself, in-process and through a server.

The tiny model pools without the prompt's tokens (``include_prompt=False``), so
``LLM.embed(texts, prompt_name=...)`` differs from embedding hand-prefixed texts:
equality with the former shows the prompt was handed to the engine (or server).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from pydantic import ValidationError

from langchain_poolkit import PoolkitBadRequestError, PoolkitEmbeddings, PoolkitFAISS, PoolkitServerError
from langchain_poolkit._backends import MODELS_PATH, RemoteBackend

PROMPTS = {"query": "query: ", "document": "passage: "}  # the tiny_prompted model's (see conftest)
QUERY = "what is the capital of France"
TEXTS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "The quick brown fox."]
LONG = "the quick brown fox jumps over the lazy dog " * 40  # > 128 tokens


def _vectors(llm: Any, texts: list[str], **kwargs: Any) -> list[list[float]]:
    return [o.outputs.embedding for o in llm.embed(texts, use_tqdm=False, **kwargs)]


Remote = Callable[..., PoolkitEmbeddings]


@pytest.fixture
def remote(prompted_server_url: str, prompted_served_name: str, server_api_key: str) -> Remote:
    """Builds a server-mode PoolkitEmbeddings for the prompted server (keyword arguments are fields)."""

    def build(**kwargs: Any) -> PoolkitEmbeddings:
        kwargs = {"base_url": prompted_server_url, "api_key": server_api_key, "model": prompted_served_name, **kwargs}
        return PoolkitEmbeddings(**kwargs)

    return build


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "langchain_poolkit" and r.levelno == logging.WARNING]


class _RecordedRequests:
    """Wraps a RemoteBackend's transport to record ``(method, path, body)`` of each request it sends."""

    def __init__(self, backend: RemoteBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []
        send, asend = backend._send, backend._asend

        def recorded_send(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            self.calls.append((method, path, body))
            return send(method, path, body)

        async def recorded_asend(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            self.calls.append((method, path, body))
            return await asend(method, path, body)

        monkeypatch.setattr(backend, "_send", recorded_send)
        monkeypatch.setattr(backend, "_asend", recorded_asend)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body or {} for _, p, body in self.calls if p == path]

    def count(self, path: str) -> int:
        return sum(p == path for _, p, _ in self.calls)


# -- in-process -------------------------------------------------------------


def test_in_process_prompts_are_applied_by_the_engine(tiny_prompted_llm: Any) -> None:
    assert tiny_prompted_llm.model_config.prompts == PROMPTS
    assert not tiny_prompted_llm.model_config.include_prompt
    emb = PoolkitEmbeddings(llm=tiny_prompted_llm)
    assert (emb.query_prefix, emb.document_prefix) == ("query: ", "passage: ")
    assert emb.embed_query(QUERY) == _vectors(tiny_prompted_llm, [QUERY], prompt_name="query")[0]
    assert emb.embed_queries(TEXTS) == _vectors(tiny_prompted_llm, TEXTS, prompt_name="query")
    assert emb.embed_documents(TEXTS) == _vectors(tiny_prompted_llm, TEXTS, prompt_name="document")
    # Gluing the prompt on by hand would pool its tokens too: other vectors.
    assert not np.allclose(emb.embed_documents(TEXTS), _vectors(tiny_prompted_llm, ["passage: " + t for t in TEXTS]))


async def test_in_process_async_prompts(tiny_prompted_llm: Any) -> None:
    emb = PoolkitEmbeddings(llm=tiny_prompted_llm, chunk_size=2)
    assert await emb.aembed_query(QUERY) == _vectors(tiny_prompted_llm, [QUERY], prompt_name="query")[0]
    assert await emb.aembed_documents(TEXTS) == _vectors(tiny_prompted_llm, TEXTS, prompt_name="document")


def test_in_process_explicit_and_extra_prompts(tiny_prompted_llm: Any) -> None:
    llm = tiny_prompted_llm
    explicit = PoolkitEmbeddings(llm=llm, query_instruction="Represent this question: ", document_instruction="")
    assert explicit.embed_query(QUERY) == _vectors(llm, [QUERY], prompt="Represent this question: ")[0]
    assert explicit.embed_documents(TEXTS) == _vectors(llm, TEXTS, prompt="")  # "" turns the prompt off
    extra = PoolkitEmbeddings(
        llm=llm, prompts={"search": "search: "}, query_prompt_name="search", document_prompt_name="query"
    )
    assert (extra.query_prefix, extra.document_prefix) == ("search: ", "query: ")
    assert extra.embed_query(QUERY) == _vectors(llm, [QUERY], prompt="search: ")[0]
    assert extra.embed_documents(TEXTS) == _vectors(llm, TEXTS, prompt_name="query")
    # Extra prompts override the model's of the same name.
    override = PoolkitEmbeddings(llm=llm, prompts={"query": "question: "})
    assert override.embed_query(QUERY) == _vectors(llm, [QUERY], prompt="question: ")[0]
    with pytest.raises(ValidationError, match=r"Prompt name 'nope' not found.*document, query"):
        PoolkitEmbeddings(llm=llm, document_prompt_name="nope")


def test_in_process_truncation_count_comes_from_the_outputs(
    tiny_prompted_llm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    texts = [LONG, "short", LONG + " again"]
    expected = sum(
        o.truncated
        for o in tiny_prompted_llm.embed(texts, prompt_name="document", truncate_prompt_tokens=-1, use_tqdm=False)
    )
    assert expected == 2
    emb = PoolkitEmbeddings(llm=tiny_prompted_llm, chunk_size=2)
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        vectors = emb.embed_documents(texts)
        emb.embed_query(LONG)
    assert vectors == _vectors(tiny_prompted_llm, texts, prompt_name="document", truncate_prompt_tokens=-1)
    [message] = _warnings(caplog)
    assert "2 of 3 texts" in message and "the model's limit (128 tokens)" in message


async def test_in_process_async_truncation_warning(tiny_prompted_llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    emb = PoolkitEmbeddings(llm=tiny_prompted_llm, truncate_prompt_tokens=16)
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        await emb.aembed_documents(["short", "a bit longer text about foxes and dogs and capitals " * 2])
    [message] = _warnings(caplog)
    assert "1 of 2 texts" in message and "longer than 16 tokens" in message


def test_vector_store_embeds_documents_and_queries_with_their_prompts(tiny_prompted_llm: Any) -> None:
    store = PoolkitFAISS.from_texts(TEXTS, PoolkitEmbeddings(llm=tiny_prompted_llm), ids=["a", "b", "c"])
    hits = store.similarity_search_with_score(QUERY, k=3)
    docs = np.asarray(_vectors(tiny_prompted_llm, TEXTS, prompt_name="document"))
    query = np.asarray(_vectors(tiny_prompted_llm, [QUERY], prompt_name="query")[0])
    cosines = docs @ query
    assert [d.id for d, _ in hits] == [["a", "b", "c"][i] for i in np.argsort(-cosines)]
    assert np.allclose([s for _, s in hits], np.sort(cosines)[::-1], atol=1e-5)


# -- server mode ------------------------------------------------------------


def test_server_prompts_equal_the_engine(
    remote: Remote, tiny_prompted_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = remote()
    requests = _RecordedRequests(emb.backend, monkeypatch)
    assert not emb.backend.prompts_known and "query_prefix" not in repr(emb)  # nothing asked yet
    query = emb.embed_query(QUERY)
    documents = emb.embed_documents(TEXTS)
    assert np.allclose(query, _vectors(tiny_prompted_llm, [QUERY], prompt_name="query")[0], atol=1e-6, rtol=0)
    assert np.allclose(documents, _vectors(tiny_prompted_llm, TEXTS, prompt_name="document"), atol=1e-6, rtol=0)
    # The model card was read once; the prompt went to the server by name, the texts unchanged.
    assert requests.count(MODELS_PATH) == 1
    bodies = requests.bodies("/v1/embeddings")
    assert [(b["input"], b.get("prompt_name"), b.get("prompt")) for b in bodies] == [
        ([QUERY], "query", None),
        (TEXTS, "document", None),
    ]
    assert emb.available_prompts == PROMPTS and (emb.query_prefix, emb.document_prefix) == ("query: ", "passage: ")
    assert "document_prefix='passage: '" in repr(emb) and requests.count(MODELS_PATH) == 1


async def test_server_async_prompts(remote: Remote, tiny_prompted_llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = remote(chunk_size=1, max_concurrency=2)
    requests = _RecordedRequests(emb.backend, monkeypatch)
    documents = await emb.aembed_documents(TEXTS)
    query = await emb.aembed_query(QUERY)
    assert np.allclose(documents, _vectors(tiny_prompted_llm, TEXTS, prompt_name="document"), atol=1e-6, rtol=0)
    assert np.allclose(query, _vectors(tiny_prompted_llm, [QUERY], prompt_name="query")[0], atol=1e-6, rtol=0)
    assert requests.count(MODELS_PATH) == 1 and requests.count("/v1/embeddings") == 4


def test_server_explicit_and_extra_prompts_are_sent_as_text(
    remote: Remote, tiny_prompted_llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = remote(query_instruction="Represent this question: ", document_instruction="")
    requests = _RecordedRequests(explicit.backend, monkeypatch)
    query = explicit.embed_query(QUERY)
    documents = explicit.embed_documents(TEXTS)
    assert requests.count(MODELS_PATH) == 0  # explicit prompts need no model card
    assert [b.get("prompt") for b in requests.bodies("/v1/embeddings")] == ["Represent this question: ", ""]
    assert np.allclose(query, _vectors(tiny_prompted_llm, [QUERY], prompt="Represent this question: ")[0], atol=1e-6)
    assert np.allclose(documents, _vectors(tiny_prompted_llm, TEXTS, prompt=""), atol=1e-6)

    extra = remote(prompts={"search": "search: "}, query_prompt_name="search")
    assert np.allclose(extra.embed_query(QUERY), _vectors(tiny_prompted_llm, [QUERY], prompt="search: ")[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"Prompt name 'nope' not found.*document, query"):
        remote(query_prompt_name="nope").embed_query(QUERY)


def test_server_truncation_warning_from_usage(
    remote: Remote, tiny_prompted_llm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    texts = [LONG, "short", LONG + " again"]
    emb = remote(chunk_size=2)
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        vectors = emb.embed_documents(texts)
        emb.embed_query(LONG)
    expected = _vectors(tiny_prompted_llm, texts, prompt_name="document", truncate_prompt_tokens=-1)
    assert np.allclose(vectors, expected, atol=1e-6, rtol=0)
    [message] = _warnings(caplog)
    assert "2 of 3 texts" in message and "the model's limit (128 tokens)" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        remote().embed_documents(["short", "texts"])
    assert not _warnings(caplog)


async def test_server_async_truncation_warning(remote: Remote, caplog: pytest.LogCaptureFixture) -> None:
    emb = remote(chunk_size=1, truncate_prompt_tokens=16)
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        await emb.aembed_documents(["short", LONG, LONG])
    [message] = _warnings(caplog)
    assert "2 of 3 texts" in message and "longer than 16 tokens" in message


def test_server_model_card_errors_are_clear(remote: Remote, prompted_served_name: str) -> None:
    with pytest.raises(
        PoolkitBadRequestError, match=f"does not serve model 'other'; it serves '{prompted_served_name}'"
    ):
        remote(model="other").embed_query("x")
    with pytest.raises(PoolkitServerError, match=r"could not read the served model's prompts.*HTTP 401") as info:
        remote(api_key="wrong").embed_documents(["x"])
    assert info.value.status_code == 401
    # Without model=, the server's first (default) model is used.
    assert remote(model=None).document_prefix == "passage: "


async def test_server_model_card_errors_async() -> None:
    unreachable = PoolkitEmbeddings(base_url="http://127.0.0.1:9", max_retries=0, timeout=2)
    with pytest.raises(PoolkitServerError, match=r"could not read the served model's prompts.*could not reach"):
        await unreachable.aembed_query("x")
    assert not unreachable.backend.prompts_known


def test_vector_store_in_server_mode(remote: Remote, tiny_prompted_llm: Any) -> None:
    documents = [Document(page_content=t, id=str(i)) for i, t in enumerate(TEXTS)]
    store = PoolkitFAISS.from_documents(documents, remote())
    docs = np.asarray(_vectors(tiny_prompted_llm, TEXTS, prompt_name="document"))
    query = np.asarray(_vectors(tiny_prompted_llm, [QUERY], prompt_name="query")[0])
    scores = {d.id: s for d, s in store.similarity_search_with_score(QUERY, k=3)}
    assert np.allclose([scores[str(i)] for i in range(3)], docs @ query, atol=1e-5)
