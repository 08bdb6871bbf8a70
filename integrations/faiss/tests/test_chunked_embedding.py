"""``enable_chunked_processing`` in embed_texts and the VectorIndex text methods: long texts embedded whole,
exactly as ``LLM.embed(text, enable_chunked_processing=True)``, and the functions' default truncation never
swallows it."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from poolkit.testing import SAMPLE_TEXTS
from poolkit_faiss import VectorIndex, embed_texts, plan_for

pytestmark = pytest.mark.unit

LONG = " ".join(SAMPLE_TEXTS * 8)  # ~750 tokens; the tiny model takes 128
LONG_2 = " ".join(reversed(SAMPLE_TEXTS * 5))
SHORT = SAMPLE_TEXTS[:3]
MIXED = [SHORT[0], LONG, SHORT[1], LONG_2, SHORT[2]]
ATOL = 1e-5


@pytest.fixture(scope="module")
def mean_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    from poolkit.testing import add_sentence_transformers_files, build_tiny_checkpoint, write_config_overrides

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("faiss-chunked") / "model", "encoder", seed=11)
    add_sentence_transformers_files(path, pooling="mean")
    write_config_overrides(path, matryoshka_dimensions=[32, 16])
    return str(path)


@pytest.fixture(scope="module")
def llm(mean_path: str) -> Any:
    from poolkit import LLM

    return LLM(mean_path, dtype="float32")


def _engine(llm: Any, texts: list[str], **kwargs: Any) -> np.ndarray:
    return np.stack([o.outputs.numpy() for o in llm.embed(texts, use_tqdm=False, **kwargs)])


def _chunked(llm: Any, texts: list[str], **kwargs: Any) -> np.ndarray:
    """The reference: each text alone through ``LLM.embed(..., enable_chunked_processing=True)``."""
    return np.concatenate([_engine(llm, [t], enable_chunked_processing=True, **kwargs) for t in texts])


def test_embed_texts_chunks_long_texts_like_llm_embed(llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert len(llm.tokenizer(LONG)["input_ids"]) > 4 * llm.model_config.max_model_len
    with caplog.at_level(logging.WARNING, logger="poolkit_faiss"):
        vectors = embed_texts(llm, MIXED, enable_chunked_processing=True)  # truncate_prompt_tokens=-1 by default
    assert vectors.dtype == np.float32 and vectors.shape == (5, llm.model_config.embedding_dim)
    np.testing.assert_allclose(vectors, _chunked(llm, MIXED), atol=ATOL)  # order kept in the mixed batch
    assert not [r for r in caplog.records if r.name.startswith("poolkit_faiss")]  # nothing was truncated
    # Short texts are unchanged; the default still cuts long ones (and says so).
    np.testing.assert_allclose(vectors[[0, 2, 4]], embed_texts(llm, SHORT), atol=ATOL)
    with caplog.at_level(logging.WARNING, logger="poolkit_faiss"):
        cut = embed_texts(llm, [LONG, SHORT[0]])
    assert "1 of 2 texts were longer than the model's limit and were truncated" in caplog.text
    np.testing.assert_allclose(cut, _engine(llm, [LONG, SHORT[0]], truncate_prompt_tokens=-1), atol=ATOL)
    assert not np.allclose(cut[0], vectors[1], atol=1e-3)
    # An explicit limit is not applied either: chunking embeds whole texts.
    np.testing.assert_allclose(embed_texts(llm, [LONG], truncate_prompt_tokens=16, enable_chunked_processing=True),
                               vectors[[1]], atol=ATOL)


def test_embed_texts_matryoshka_and_prompt_with_chunking(llm: Any) -> None:
    from poolkit import PoolingParams

    vectors = embed_texts(llm, [LONG, SHORT[0]], 16, prompt="search: ", enable_chunked_processing=True)
    expected = _chunked(llm, [LONG, SHORT[0]], prompt="search: ", pooling_params=PoolingParams(dimensions=16))
    assert vectors.shape == (2, 16)
    np.testing.assert_allclose(vectors, expected, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_pooler_config_decides_by_default(mean_path: str, llm: Any) -> None:
    """A model loaded with chunked processing on chunks in embed_texts too: its default -1 does not cut first."""
    from poolkit import LLM

    chunking = LLM(mean_path, dtype="float32", override_pooler_config={"enable_chunked_processing": True})
    np.testing.assert_allclose(embed_texts(chunking, MIXED), _chunked(llm, MIXED), atol=ATOL)
    off = embed_texts(chunking, [LONG], enable_chunked_processing=False)
    np.testing.assert_allclose(off, _engine(llm, [LONG], truncate_prompt_tokens=-1), atol=ATOL)


def test_over_max_embed_len_raises(mean_path: str, llm: Any) -> None:
    from poolkit import LLM

    n = len(llm.tokenizer(LONG)["input_ids"])
    capped = LLM(mean_path, dtype="float32", override_pooler_config={"max_embed_len": n - 1})
    with pytest.raises(ValueError, match=f"Prompt 1 has {n} tokens, more than max_embed_len={n - 1}"):
        embed_texts(capped, [SHORT[0], LONG], enable_chunked_processing=True)


def test_index_text_methods_chunk_long_texts(llm: Any) -> None:
    dim = llm.model_config.embedding_dim
    plan = plan_for("flat/fp32", 10, dim, model_name="tiny")
    ids = ["a", "b", "c", "d", "e"]
    index = VectorIndex.from_texts(MIXED, llm, ids, plan=plan, enable_chunked_processing=True, show_progress=False,
                                   batch_size=2)
    expected = _chunked(llm, MIXED)
    np.testing.assert_allclose(index.reconstruct(ids), expected, atol=ATOL)
    np.testing.assert_allclose(index.embed([LONG], enable_chunked_processing=True), expected[[1]], atol=ATOL)

    hits = index.search_texts(LONG, k=1, enable_chunked_processing=True)
    assert hits.ids[0][0] == "b" and hits.scores[0][0] == pytest.approx(1.0, abs=1e-4)

    index.add_texts([LONG_2 + " " + SHORT[0]], ["f"], enable_chunked_processing=True)
    index.upsert_texts([LONG_2], ["a"], enable_chunked_processing=True)
    np.testing.assert_allclose(index.reconstruct(["a", "f"]), _chunked(llm, [LONG_2, LONG_2 + " " + SHORT[0]]),
                               atol=ATOL)
