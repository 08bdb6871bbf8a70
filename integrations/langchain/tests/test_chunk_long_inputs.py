"""``PoolkitEmbeddings(chunk_long_inputs=True)``: poolkit's ``enable_chunked_processing`` through LangChain.

Texts longer than the model are embedded whole (in chunks merged by the engine) instead of being cut:
in-process the vectors are exactly ``LLM.embed(text, enable_chunked_processing=True)``'s, in server mode the
``/v1/embeddings`` body asks for it, and ``PoolkitFAISS`` stores and searches such vectors unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from langchain_poolkit import PoolkitEmbeddings, PoolkitFAISS
from poolkit.testing import SAMPLE_TEXTS

LONG = " ".join(SAMPLE_TEXTS * 8)  # ~750 tokens; the tiny model takes 128
LONG_2 = " ".join(reversed(SAMPLE_TEXTS * 5))
SHORT = SAMPLE_TEXTS[:3]
MIXED = [SHORT[0], LONG, SHORT[1], LONG_2, SHORT[2]]
ATOL = 1e-5


@pytest.fixture(scope="module")
def mean_path(tiny_chunkable_path: Path) -> Path:
    return tiny_chunkable_path


@pytest.fixture(scope="module")
def llm(mean_path: Path) -> Any:
    from poolkit import LLM

    return LLM(str(mean_path), dtype="float32")


def _engine(llm: Any, texts: list[str], **kwargs: Any) -> np.ndarray:
    return np.stack([o.outputs.numpy() for o in llm.embed(texts, use_tqdm=False, **kwargs)])


def _chunked(llm: Any, texts: list[str]) -> np.ndarray:
    """The reference: each text on its own through ``LLM.embed(..., enable_chunked_processing=True)``."""
    return np.concatenate([_engine(llm, [t], enable_chunked_processing=True) for t in texts])


@pytest.mark.unit
def test_in_process_long_inputs_are_chunked_like_llm_embed(llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert len(llm.tokenizer(LONG)["input_ids"]) > 4 * llm.model_config.max_model_len
    emb = PoolkitEmbeddings(llm=llm, chunk_long_inputs=True)
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        got = np.asarray(emb.embed_documents(MIXED), dtype=np.float32)
    np.testing.assert_allclose(got, _chunked(llm, MIXED), atol=ATOL)  # order kept in the mixed batch
    assert not [r for r in caplog.records if r.name == "langchain_poolkit"]  # nothing was cut: no warning
    # Short inputs are unchanged by the switch.
    plain = np.asarray(PoolkitEmbeddings(llm=llm).embed_documents(SHORT), dtype=np.float32)
    np.testing.assert_allclose(got[[0, 2, 4]], plain, atol=ATOL)
    # The default still cuts the long ones at the model's limit: another vector than the merged one.
    cut = np.asarray(PoolkitEmbeddings(llm=llm).embed_query(LONG), dtype=np.float32)
    np.testing.assert_allclose(cut, _engine(llm, [LONG], truncate_prompt_tokens=-1)[0], atol=ATOL)
    assert not np.allclose(cut, got[1], atol=1e-3)
    np.testing.assert_allclose(emb.embed_query(LONG), got[1], atol=ATOL)
    np.testing.assert_allclose(emb.embed_queries([LONG_2, SHORT[0]]), got[[3, 0]], atol=ATOL)
    assert "chunk_long_inputs=True" in repr(emb) and "truncate_prompt_tokens" not in repr(emb)


@pytest.mark.unit
async def test_in_process_async_and_small_chunk_size(llm: Any) -> None:
    emb = PoolkitEmbeddings(llm=llm, chunk_long_inputs=True, chunk_size=2)
    np.testing.assert_allclose(await emb.aembed_documents(MIXED), _chunked(llm, MIXED), atol=ATOL)
    np.testing.assert_allclose(await emb.aembed_query(LONG), _chunked(llm, [LONG])[0], atol=ATOL)


@pytest.mark.unit
def test_truncate_prompt_tokens_is_not_applied(llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        emb = PoolkitEmbeddings(llm=llm, chunk_long_inputs=True, truncate_prompt_tokens=16)
    assert "truncate_prompt_tokens=16 is not applied with chunk_long_inputs=True" in caplog.text
    np.testing.assert_allclose(emb.embed_documents([LONG, SHORT[0]]), _chunked(llm, [LONG, SHORT[0]]), atol=ATOL)


@pytest.mark.unit
def test_over_max_embed_len_raises(mean_path: Path, llm: Any) -> None:
    from poolkit import LLM

    n = len(llm.tokenizer(LONG)["input_ids"])
    capped = LLM(str(mean_path), dtype="float32", override_pooler_config={"max_embed_len": n - 1})
    emb = PoolkitEmbeddings(llm=capped, chunk_long_inputs=True)
    with pytest.raises(ValueError, match=f"Prompt 1 has {n} tokens, more than max_embed_len={n - 1}"):
        emb.embed_documents([SHORT[0], LONG])


@pytest.mark.unit
def test_a_model_that_cannot_chunk_fails_at_construction(mean_path: Path) -> None:
    from poolkit import LLM

    overlapping = LLM(str(mean_path), dtype="float32", override_pooler_config={"chunk_overlap": 200})
    PoolkitEmbeddings(llm=overlapping)  # fine without chunking
    with pytest.raises(ValueError, match="chunk_overlap must be between 0 and"):
        PoolkitEmbeddings(llm=overlapping, chunk_long_inputs=True)


@pytest.mark.unit
def test_vectorstore_stores_and_searches_chunked_vectors(llm: Any) -> None:
    emb = PoolkitEmbeddings(llm=llm, chunk_long_inputs=True)
    store = PoolkitFAISS.from_texts(MIXED, emb, ids=[str(i) for i in range(len(MIXED))])
    stored = store.index.reconstruct([str(i) for i in range(len(MIXED))])
    expected = _chunked(llm, MIXED)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, expected, atol=ATOL)
    ((doc, score),) = store.similarity_search_with_score(LONG, k=1)
    assert doc.id == "1" and score == pytest.approx(1.0, abs=1e-4)


@pytest.mark.unit
def test_server_request_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``/v1/embeddings`` body: ``enable_chunked_processing: true`` and no ``truncate_prompt_tokens``."""
    sent: list[dict[str, Any]] = []

    def fake_send(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert body is not None
        sent.append(body)
        return {"data": [{"index": i, "embedding": [1.0, 0.0]} for i in range(len(body["input"]))]}

    for chunked in (True, False):
        emb = PoolkitEmbeddings(base_url="http://127.0.0.1:9", chunk_long_inputs=chunked, document_instruction="")
        monkeypatch.setattr(emb.backend, "_send", fake_send)
        assert emb.embed_documents([LONG, SHORT[0]]) == [[1.0, 0.0], [1.0, 0.0]]
    with_chunking, without = sent
    assert with_chunking["enable_chunked_processing"] is True and "truncate_prompt_tokens" not in with_chunking
    assert "enable_chunked_processing" not in without and without["truncate_prompt_tokens"] == -1


async def test_server_mode_equals_in_process(chunkable_server_url: str, server_api_key: str, llm: Any) -> None:
    remote = PoolkitEmbeddings(base_url=chunkable_server_url, api_key=server_api_key, chunk_long_inputs=True, chunk_size=2)
    got = np.asarray(remote.embed_documents(MIXED), dtype=np.float32)
    np.testing.assert_allclose(got, _chunked(llm, MIXED), atol=ATOL)
    np.testing.assert_allclose(await remote.aembed_documents(MIXED), got, atol=ATOL)
    np.testing.assert_allclose(remote.embed_query(LONG), got[1], atol=ATOL)


def test_server_mode_against_a_server_that_chunks_by_default(
    chunking_server_url: str, server_api_key: str, llm: Any
) -> None:
    """A server whose model chunks by default (pooler config): the client's request (no truncation asked
    for) gets the merged vectors, equal to the in-process engine's, whether or not the server knows the field."""
    remote = PoolkitEmbeddings(base_url=chunking_server_url, api_key=server_api_key, chunk_long_inputs=True,
                               chunk_size=2)
    np.testing.assert_allclose(remote.embed_documents(MIXED), _chunked(llm, MIXED), atol=ATOL)
