"""PoolkitFAISS beyond the standard suite: scores, upsert, filters, MMR, plans, save/load without pickle."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

from langchain_poolkit import PoolkitEmbeddings, PoolkitFAISS

TEXTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models map text to dense vectors.",
    "A cross-encoder scores a query and a document together.",
    "Rerankers reorder retrieved passages by relevance.",
    "Vector search finds the nearest neighbours of a query.",
    "Machine learning models learn patterns from data.",
]
METAS = [{"n": i, "kind": "geo" if i < 2 else "ml" if i > 2 else "misc"} for i in range(len(TEXTS))]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def emb(tiny_mean_llm: Any) -> PoolkitEmbeddings:
    return PoolkitEmbeddings(llm=tiny_mean_llm)


@pytest.fixture
def store(emb: PoolkitEmbeddings) -> PoolkitFAISS:
    return PoolkitFAISS.from_texts(TEXTS, emb, metadatas=METAS, ids=IDS)


def _cos(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def test_scores_are_cosine_and_sorted(store: PoolkitFAISS, emb: PoolkitEmbeddings) -> None:
    query = "capital city of France"
    hits = store.similarity_search_with_score(query, k=5)
    assert len(hits) == 5 and all(type(s) is float for _, s in hits)
    expected = _cos(emb.embed_query(query), emb.embed_documents(TEXTS))
    # Each score is the cosine of that document (float32 faiss vs float64 numpy: near-ties may swap).
    returned = [IDS.index(d.id) for d, _ in hits]
    scores = [s for _, s in hits]
    assert np.allclose(scores, expected[returned], atol=1e-5)
    assert scores == sorted(scores, reverse=True)
    assert min(scores) >= max(np.delete(expected, returned)) - 1e-5
    top = returned[0]
    assert hits[0][0].metadata == METAS[top] and hits[0][0].page_content == TEXTS[top]
    by_vector = store.similarity_search_by_vector(emb.embed_query(query), k=5)
    assert [d.id for d in by_vector] == [d.id for d, _ in hits]
    relevance = store.similarity_search_with_relevance_scores(query, k=5)
    assert all(0.0 <= s <= 1.0 for _, s in relevance)
    assert [round(s, 6) for _, s in relevance] == [round((1 + s) / 2, 6) for _, s in hits]
    assert len(store.similarity_search(query, k=100)) == len(TEXTS)


def test_self_retrieval_and_results_are_copies(store: PoolkitFAISS) -> None:
    for text, key in zip(TEXTS, IDS):
        assert store.similarity_search(text, k=1)[0].id == key
    doc = store.get_by_ids(["doc-0"])[0]
    doc.metadata["n"] = 999
    assert store.get_by_ids(["doc-0"])[0].metadata["n"] == 0


def test_upsert_delete_and_get(store: PoolkitFAISS) -> None:
    assert len(store) == len(TEXTS)
    store.add_texts(["Rome is the capital of Italy."], [{"n": 100}], ids=["doc-1"])
    assert len(store) == len(TEXTS) and len(store.index) == len(TEXTS)
    assert store.get_by_ids(["doc-1"]) == [
        Document(id="doc-1", page_content="Rome is the capital of Italy.", metadata={"n": 100})
    ]
    assert store.similarity_search("Rome is the capital of Italy.", k=1)[0].id == "doc-1"
    # Repeated id within one call: the last occurrence wins.
    assert store.add_texts(["first", "second"], ids=["dup", "dup"]) == ["dup", "dup"]
    assert store.get_by_ids(["dup"])[0].page_content == "second" and len(store) == len(TEXTS) + 1
    assert store.delete(["doc-2", "missing", "doc-2"]) is True
    assert store.get_by_ids(["doc-2", "missing"]) == []
    assert "doc-2" not in [d.id for d in store.similarity_search("quick brown fox", k=len(TEXTS) + 1)]
    assert [d.id for d in store.get_by_ids(["doc-4", "doc-3"])] == ["doc-4", "doc-3"]
    store.delete()
    assert len(store) == 0 and store.similarity_search("anything") == []


def test_filters(store: PoolkitFAISS) -> None:
    geo = store.similarity_search("neural networks", k=3, filter={"kind": "geo"})
    assert {d.id for d in geo} == {"doc-0", "doc-1"}
    picked = store.similarity_search("capital", k=2, filter={"n": [3, 5, 7]})
    assert len(picked) == 2 and all(d.metadata["n"] in (3, 5, 7) for d in picked)
    # A filter that leaves fewer than k in the first fetch_k candidates fetches more.
    last = store.similarity_search("capital of France", k=1, filter=lambda m: m["n"] == 7, fetch_k=1)
    assert [d.id for d in last] == ["doc-7"]


def test_mmr(store: PoolkitFAISS, emb: PoolkitEmbeddings) -> None:
    query = "capital of France"
    plain = store.similarity_search(query, k=4)
    relevance_only = store.max_marginal_relevance_search(query, k=4, fetch_k=8, lambda_mult=1.0)
    assert [d.id for d in relevance_only] == [d.id for d in plain]
    diverse = store.max_marginal_relevance_search(query, k=3, fetch_k=8, lambda_mult=0.1)
    assert len(diverse) == 3 and diverse[0].id == plain[0].id
    by_vec = store.max_marginal_relevance_search_by_vector(emb.embed_query(query), k=3, fetch_k=8, lambda_mult=0.1)
    assert [d.id for d in by_vec] == [d.id for d in diverse]
    assert store.max_marginal_relevance_search(query, k=2, filter={"kind": "ml"}, fetch_k=8)[0].metadata["kind"] == "ml"


async def test_async_api(emb: PoolkitEmbeddings, store: PoolkitFAISS) -> None:
    astore = await PoolkitFAISS.afrom_texts(TEXTS, emb, metadatas=METAS, ids=IDS)
    query = "vector search"
    sync_hits = store.similarity_search_with_score(query, k=4)
    async_hits = await astore.asimilarity_search_with_score(query, k=4)
    assert [d.id for d, _ in async_hits] == [d.id for d, _ in sync_hits]
    assert np.allclose([s for _, s in async_hits], [s for _, s in sync_hits], atol=1e-5)
    assert [d.id for d in await astore.asimilarity_search(query, k=2)] == [d.id for d, _ in sync_hits[:2]]
    vec = await emb.aembed_query(query)
    assert [d.id for d in await astore.asimilarity_search_by_vector(vec, k=2)] == [d.id for d, _ in sync_hits[:2]]
    mmr = await astore.amax_marginal_relevance_search(query, k=3, fetch_k=8, lambda_mult=0.3)
    assert [d.id for d in mmr] == [
        d.id for d in store.max_marginal_relevance_search(query, k=3, fetch_k=8, lambda_mult=0.3)
    ]
    await astore.aadd_documents([Document(page_content="Madrid is the capital of Spain.", id="doc-0")])
    assert (await astore.aget_by_ids(["doc-0"]))[0].page_content.startswith("Madrid")
    await astore.adelete(["doc-0", "nope"])
    assert len(astore) == len(TEXTS) - 1


def test_retriever_interface(store: PoolkitFAISS) -> None:
    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert [d.id for d in retriever.invoke("capital of Germany")] == [
        d.id for d in store.similarity_search("capital of Germany", k=2)
    ]
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 6})
    assert len(mmr.invoke("capital")) == 2


def test_save_load_roundtrip_without_pickle(
    store: PoolkitFAISS, emb: PoolkitEmbeddings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_texts(["unicode: café – naïve ✓"], [{"nested": {"a": [1, 2.5, None, True]}}], ids=["u"])
    folder = store.save_local(tmp_path / "store")
    assert folder == tmp_path / "store" / "index"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["docstore.jsonl", "ids.npz", "index.faiss", "langchain_poolkit.json", "manifest.json"]

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded = PoolkitFAISS.load_local(tmp_path / "store", emb)  # no allow_dangerous_deserialization needed
    also = PoolkitFAISS.load_local(str(tmp_path / "store"), emb, allow_dangerous_deserialization=True)
    monkeypatch.undo()

    assert len(loaded) == len(store) == len(also)
    assert loaded.get_by_ids(["u"]) == store.get_by_ids(["u"])
    for query in ("capital of France", "machine learning", "café"):
        a = store.similarity_search_with_score(query, k=4)
        b = loaded.similarity_search_with_score(query, k=4)
        assert [(d.id, d.page_content, d.metadata) for d, _ in a] == [(d.id, d.page_content, d.metadata) for d, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-6)
    loaded.add_texts(["after load"], ids=["new"])
    loaded.delete(["doc-0"])
    assert loaded.get_by_ids(["new"])[0].page_content == "after load" and not loaded.get_by_ids(["doc-0"])

    with pytest.raises(FileNotFoundError, match="not a PoolkitFAISS folder"):
        PoolkitFAISS.load_local(tmp_path / "nowhere", emb)


def test_save_load_empty_and_bad_metadata(emb: PoolkitEmbeddings, tmp_path: Path) -> None:
    empty = PoolkitFAISS(emb)
    empty.save_local(tmp_path, "empty")
    loaded = PoolkitFAISS.load_local(tmp_path, emb, "empty")
    assert len(loaded) == 0 and loaded.similarity_search("x") == []
    loaded.add_texts(["works after load"])
    assert len(loaded) == 1
    bad = PoolkitFAISS.from_texts(["x"], emb, metadatas=[{"when": object()}])
    with pytest.raises(TypeError, match="JSON cannot store"):
        bad.save_local(tmp_path, "bad")


def test_matryoshka_dimension_plan(tiny_st_llm: Any, tiny_encoder_llm: Any, tmp_path: Path) -> None:
    emb16 = PoolkitEmbeddings(llm=tiny_st_llm)
    store = PoolkitFAISS.from_texts(TEXTS, emb16, ids=IDS, dimension=16)
    assert store.plan.dimension == 16 and store.plan.model_dimension == 32 and store.plan.truncated
    assert store.index.dimension == 16
    query = "capital of Germany"
    q = np.asarray(emb16.embed_query(query))[:16]
    docs = np.asarray(emb16.embed_documents(TEXTS))[:, :16]
    expected = _cos(q, docs)
    hits = store.similarity_search_with_score(query, k=3)
    assert np.allclose([s for _, s in hits], np.sort(expected)[::-1][:3], atol=1e-5)
    store.save_local(tmp_path)
    assert PoolkitFAISS.load_local(tmp_path, emb16).plan.dimension == 16
    with pytest.raises(ValueError, match="does not support matryoshka representation"):
        PoolkitFAISS(PoolkitEmbeddings(llm=tiny_encoder_llm), dimension=16)


def test_budget_plan(default_llm: Any) -> None:
    # A real model: a random tiny encoder maps every text to nearly the same vector, so
    # self-retrieval through a quantized index would hinge on thread-count rounding.
    emb = PoolkitEmbeddings(llm=default_llm)
    # 1,000 vectors: float32 at 384-d (~1.5 MB) does not fit 500 KB, and the model is not
    # Matryoshka, so the planner must quantize instead of truncating.
    store = PoolkitFAISS(emb, memory_budget_bytes=500_000, n_vectors=1000)
    plan = store.plan
    assert plan.total_bytes <= 500_000 and plan.dimension == 384 and plan.codec != "fp32", plan.describe()
    store.add_texts(TEXTS, ids=IDS)
    assert [store.similarity_search(t, k=1)[0].id for t in TEXTS] == IDS
    with pytest.raises(ValueError, match="n_vectors"):
        PoolkitFAISS(emb, memory_budget_bytes=500_000)


def test_trained_plan_from_texts() -> None:
    from poolkit_faiss import plan_for

    fake = DeterministicFakeEmbedding(size=16)
    texts = [f"document number {i}" for i in range(300)]
    plan = plan_for("ivf/sq8", 300, 16, nlist=8, nprobe=8)
    store = PoolkitFAISS.from_texts(texts, fake, ids=[str(i) for i in range(300)], plan=plan)
    assert store.index.is_trained and len(store) == 300 and store.plan.layout == "ivf"
    assert sum(store.similarity_search(t, k=1)[0].id == str(i) for i, t in enumerate(texts[:50])) >= 48
    store.add_texts(["one more"], ids=["0"])  # upsert into the trained index
    assert store.similarity_search("one more", k=1)[0].id == "0" and len(store) == 300


def test_construction_errors(emb: PoolkitEmbeddings) -> None:
    from poolkit_faiss import plan_for

    with pytest.raises(ValueError, match="not both"):
        PoolkitFAISS(emb, plan=plan_for("flat", 10, 32), dimension=16)
    with pytest.raises(TypeError, match="need memory_budget_bytes"):
        PoolkitFAISS(emb, min_recall=0.9)
    with pytest.raises(TypeError, match="Embeddings"):
        PoolkitFAISS("not embeddings")  # type: ignore[arg-type]
    assert "PoolkitFAISS(n=0" in repr(PoolkitFAISS(emb))
    # Embeddings other than an in-process PoolkitEmbeddings: the dimension is probed, Matryoshka is not assumed.
    fake = DeterministicFakeEmbedding(size=16)
    assert PoolkitFAISS(fake, memory_budget_bytes=1_000_000, n_vectors=100).plan.dimension == 16
    with pytest.raises(ValueError, match="does not support matryoshka representation"):
        PoolkitFAISS(fake, dimension=8)
