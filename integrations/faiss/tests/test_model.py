"""With the real engine: all-MiniLM-L6-v2 through poolkit.LLM on benchmark-corpus texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from poolkit_faiss import BudgetError, VectorIndex, plan_for, plan_index

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "bench_corpus.jsonl"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REFUSAL = (
    f'Model "{MINILM}" does not support matryoshka representation, '
    "changing output dimensions will lead to poor results."
)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    assert CORPUS.exists(), f"benchmark corpus not found at {CORPUS} (shared/ must sit beside the repo)"
    seen: dict[str, None] = {}
    with CORPUS.open(encoding="utf-8") as lines:
        for line in lines:
            text = json.loads(line)["text"].strip()
            if text:
                seen.setdefault(text, None)
            if len(seen) == 200:
                break
    return list(seen)


@pytest.fixture(scope="module")
def llm():
    from poolkit import LLM

    return LLM()


def test_self_retrieval_and_round_trip(llm, texts: list[str], tmp_path) -> None:
    assert max(len(t) for t in texts) > 2000  # some passages exceed the 256-token limit: truncated, not an error
    plan = plan_index(len(texts), 10 * 2**20, llm=llm)
    assert (plan.family, plan.dimension, plan.model_name) == ("flat/fp32", 384, MINILM)
    ids = [f"doc-{i}" for i in range(len(texts))]
    index = VectorIndex.from_texts(texts, llm, ids, plan=plan, batch_size=64, show_progress=False)
    assert len(index) == len(texts)
    sample = list(range(0, len(texts), 5))  # 40 queries, long passages included
    vectors = index.embed([texts[i] for i in sample])
    result = index.search(vectors, 1)
    assert np.mean(result.ids[:, 0] == np.array([ids[i] for i in sample], dtype=object)) >= 0.95
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-4)

    loaded = VectorIndex.load(index.save(tmp_path / "minilm"), llm=llm)
    np.testing.assert_array_equal(loaded.search(vectors[:20], 5).ids, index.search(vectors[:20], 5).ids)
    assert loaded.search_texts(texts[5], k=1).ids[0, 0] == "doc-5"
    loaded.upsert_texts(["a completely new passage about vector databases"], ["doc-3"])
    assert loaded.search_texts("a completely new passage about vector databases", k=1).ids[0, 0] == "doc-3"


def _short(texts: list[str], n: int) -> list[str]:
    return [t for t in texts if len(t) < 200][:n]


def test_trains_ivf_on_an_embedded_sample(llm, texts: list[str]) -> None:
    subset = _short(texts, 100)
    plan = plan_for("ivf/sq8", len(subset), 384, nlist=4, train_size=50, model_name=MINILM)
    index = VectorIndex.from_texts(subset, llm, plan=plan, batch_size=32, show_progress=False)
    assert index.is_trained and len(index) == len(subset) and index.ids() == list(range(len(subset)))
    found = index.search(index.embed(subset[:40]), 1).ids[:, 0]
    assert np.mean(found == np.arange(40)) >= 0.9


def test_refuses_to_truncate_minilm_with_the_engine_message(llm, texts: list[str]) -> None:
    assert not llm.model_config.is_matryoshka
    with pytest.raises(ValueError) as info:
        plan_index(1_000, 2**20, llm=llm, dimension=128)
    assert str(info.value) == REFUSAL
    # A plan made for a Matryoshka model cannot be filled by this one.
    plan = plan_for("flat/fp32", 10, 128, model_dimension=384, matryoshka=True)
    with pytest.raises(ValueError) as info:
        VectorIndex.from_texts(texts[:5], llm, plan=plan)
    assert str(info.value) == REFUSAL
    # A budget only truncation could meet is an error, not a silent truncation.
    with pytest.raises(BudgetError, match="never truncated"):
        plan_index(1_000_000, 300 * 2**20, llm=llm)


def test_matryoshka_via_hf_overrides_for_measurement(texts: list[str]) -> None:
    """all-MiniLM-L6-v2 is not Matryoshka-trained: the override is for measuring only."""
    from poolkit import LLM

    llm = LLM(hf_overrides={"is_matryoshka": True})
    n = 1_000_000
    budget = plan_for("hnsw/fp32", n, 256).total_bytes + 1
    plan = plan_index(n, budget, llm=llm)
    assert plan.dimension == 256 and plan.truncated
    small = plan_for("flat/fp32", 50, 256, model_dimension=384, matryoshka=True, model_name=plan.model_name)
    subset = _short(texts, 50)
    index = VectorIndex.from_texts(subset, llm, plan=small, show_progress=False)
    full = llm.embed(subset[:3], truncate_prompt_tokens=-1, use_tqdm=False)
    full_vectors = np.stack([o.outputs.numpy() for o in full])
    assert full_vectors.shape[1] == 384
    assert index.search(full_vectors, 1).ids[:, 0].tolist() == [0, 1, 2]  # 384-d queries truncated like the corpus
