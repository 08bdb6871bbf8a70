"""embed_texts and the VectorIndex text methods embed through ``LLM.embed``, prompts included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from poolkit_faiss import VectorIndex, embed_texts, plan_for

pytestmark = pytest.mark.unit

TEXTS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "The quick brown fox."]
QUERY = "what is the capital of France"


def _engine(llm: Any, texts: list[str], **kwargs: Any) -> np.ndarray:
    return np.stack([o.outputs.numpy() for o in llm.embed(texts, use_tqdm=False, **kwargs)])


def test_embed_texts_applies_the_prompt_through_the_engine(prompted_llm: Any) -> None:
    documents = embed_texts(prompted_llm, TEXTS, prompt_name="document")
    assert documents.dtype == np.float32 and documents.shape == (3, prompted_llm.model_config.embedding_dim)
    np.testing.assert_allclose(documents, _engine(prompted_llm, TEXTS, prompt_name="document"), atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        embed_texts(prompted_llm, TEXTS, prompt="search: "), _engine(prompted_llm, TEXTS, prompt="search: "), atol=1e-6
    )
    # Default: the model's default prompt (none here), as LLM.embed does.
    np.testing.assert_allclose(embed_texts(prompted_llm, TEXTS), _engine(prompted_llm, TEXTS), atol=1e-6)
    # The prompt's tokens are not pooled: gluing it on by hand would give other vectors.
    assert not np.allclose(documents, _engine(prompted_llm, ["passage: " + t for t in TEXTS]), atol=1e-3)
    with pytest.raises(ValueError, match="Prompt name 'nope' not found"):
        embed_texts(prompted_llm, TEXTS, prompt_name="nope")


def test_embed_texts_matryoshka_with_a_prompt(prompted_llm: Any) -> None:
    from poolkit import PoolingParams

    vectors = embed_texts(prompted_llm, TEXTS, 16, prompt_name="query")
    expected = _engine(prompted_llm, TEXTS, prompt_name="query", pooling_params=PoolingParams(dimensions=16))
    assert vectors.shape == (3, 16)
    np.testing.assert_allclose(vectors, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert embed_texts(prompted_llm, [], 16, prompt_name="query").shape == (0, 16)


def test_index_text_methods_pass_prompts_through(prompted_llm: Any) -> None:
    dim = prompted_llm.model_config.embedding_dim
    plan = plan_for("flat/fp32", 10, dim, model_name="tiny")
    index = VectorIndex.from_texts(
        TEXTS, prompted_llm, ["a", "b", "c"], plan=plan, prompt_name="document", show_progress=False
    )
    documents = _engine(prompted_llm, TEXTS, prompt_name="document")
    np.testing.assert_allclose(index.reconstruct(["a", "b", "c"]), documents, atol=1e-6)

    query = _engine(prompted_llm, [QUERY], prompt_name="query")[0]
    hits = index.search_texts(QUERY, k=3, prompt_name="query")
    np.testing.assert_allclose(hits.scores[0], np.sort(documents @ query)[::-1], atol=1e-5)

    index.add_texts(["Rome is the capital of Italy."], ["d"], prompt_name="document")
    index.upsert_texts(["Madrid is the capital of Spain."], ["a"], prompt_name="document")
    expected = _engine(
        prompted_llm, ["Madrid is the capital of Spain.", "Rome is the capital of Italy."], prompt_name="document"
    )
    np.testing.assert_allclose(index.reconstruct(["a", "d"]), expected, atol=1e-6)
