"""``PoolkitHybridRetriever``: dense (the bundled all-MiniLM-L6-v2) + sparse (a tiny random SPLADE) retrieval.

The fused order is recomputed here, by hand, from the dense store's and the sparse
index's own rankings; the sparse index's ranking is itself checked against dot products
of the engine's sparse vectors. ``embed_sparse`` over HTTP is checked against TEI's
response shape (a mock transport) and against the real server app, in-process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from langchain_core.documents import Document

from langchain_poolkit import (
    PoolkitBadRequestError,
    PoolkitEmbeddings,
    PoolkitFAISS,
    PoolkitHybridRetriever,
    PoolkitServerError,
    PoolkitSparseEmbeddings,
)
from langchain_poolkit._backends import RemoteBackend, SparseVector
from poolkit_faiss import SparseIndex

TEXTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany and its largest city.",
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models map text to dense vectors for semantic search.",
    "Sparse retrieval weighs the words of a query, like BM25 or SPLADE.",
    "A cross-encoder scores a query and a document together.",
    "Rerankers reorder retrieved passages by relevance.",
    "Vector search finds the nearest neighbours of a query.",
    "Reciprocal rank fusion merges several rankings into one.",
    "Machine learning models learn patterns from data.",
    "The Seine flows through Paris on its way to the sea.",
    "Hybrid search combines dense and sparse retrieval.",
]
METAS = [{"n": i, "topic": "geo" if i in (0, 1, 10) else "ml"} for i in range(len(TEXTS))]
IDS = [f"doc-{i}" for i in range(len(TEXTS))]
QUERIES = ["capital of France", "how does hybrid sparse and dense search work?", "fusing rankings", "a lazy fox"]


@pytest.fixture(scope="module")
def sparse_llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from poolkit import LLM
    from poolkit.testing import build_sparse_encoder

    return LLM(str(build_sparse_encoder(tmp_path_factory.mktemp("lc-splade") / "model")), dtype="float32")


@pytest.fixture(scope="module")
def emb(default_llm: Any) -> PoolkitEmbeddings:
    return PoolkitEmbeddings(llm=default_llm)


@pytest.fixture(scope="module")
def sparse_emb(sparse_llm: Any) -> PoolkitSparseEmbeddings:
    return PoolkitSparseEmbeddings(llm=sparse_llm)


@pytest.fixture(scope="module")
def vocab_size(sparse_llm: Any) -> int:
    return int(sparse_llm.embed("x")[0].outputs.dim)


@pytest.fixture(scope="module")
def built(emb: PoolkitEmbeddings, sparse_emb: PoolkitSparseEmbeddings) -> PoolkitHybridRetriever:
    """Shared by the tests that only read."""
    return PoolkitHybridRetriever.from_texts(TEXTS, emb, sparse_emb, metadatas=METAS, ids=IDS, k=5, fetch_k=8)


@pytest.fixture(scope="module")
def rankings(built: PoolkitHybridRetriever) -> dict[str, tuple[list, list]]:
    """Each query's dense and sparse top-8, asked of the store and the index directly (computed once)."""
    return {query: own_rankings(built, query, 8) for query in QUERIES}


@pytest.fixture
def retriever(emb: PoolkitEmbeddings, sparse_emb: PoolkitSparseEmbeddings) -> PoolkitHybridRetriever:
    """A fresh one, for the tests that write."""
    return PoolkitHybridRetriever.from_texts(TEXTS, emb, sparse_emb, metadatas=METAS, ids=IDS, k=5, fetch_k=8)


def own_rankings(retriever: PoolkitHybridRetriever, query: str, fetch_k: int) -> tuple[list, list]:
    """The two rankings the retriever fuses, asked of the store and the index directly."""
    dense = [(d.id, s) for d, s in retriever.vectorstore.similarity_search_with_score(query, k=fetch_k)]
    assert retriever.sparse_index is not None
    vector = retriever.sparse_embeddings.embed_query(query)
    sparse = retriever.sparse_index.search(vector, fetch_k).rows()[0]
    return dense, sparse


def fuse_by_hand(lists: list[list[tuple[str, float]]], score_of: Callable[[int, list, int], float]) -> list:
    """Sum ``score_of(list_no, list, position)`` per id; best first, ties in first-seen order."""
    total: dict[str, float] = {}
    for n, ranking in enumerate(lists):
        for pos, (key, _) in enumerate(ranking):
            total[key] = total.get(key, 0.0) + score_of(n, ranking, pos)
    return sorted(total.items(), key=lambda kv: -kv[1])  # stable: dicts keep first-seen order


# -- the sparse half ----------------------------------------------------------------


def test_sparse_embeddings_are_the_engines(sparse_emb: PoolkitSparseEmbeddings, sparse_llm: Any,
                                          vocab_size: int) -> None:
    vectors = sparse_emb.embed_documents(TEXTS[:4])
    outputs = sparse_llm.embed(TEXTS[:4], truncate_prompt_tokens=-1)
    for vector, out in zip(vectors, outputs):
        assert isinstance(vector, SparseVector)
        assert vector.indices == out.outputs.indices.tolist() and vector.values == out.outputs.values.tolist()
        assert vector.dim == out.outputs.dim == vocab_size and vector.indices == sorted(vector.indices)
    assert sparse_emb.embed_query(TEXTS[0]) == vectors[0]  # no query/document prompts in this model
    assert sparse_emb.embed_documents([]) == []


def test_sparse_index_ranks_by_dot_product(built: PoolkitHybridRetriever, sparse_llm: Any) -> None:
    retriever = built
    docs = np.stack([o.outputs.to_dense() for o in sparse_llm.embed(TEXTS)]).astype(np.float64)
    for query in QUERIES:
        q = sparse_llm.embed(query)[0].outputs.to_dense().astype(np.float64)
        scores = docs @ q
        want = sorted(((IDS[i], s) for i, s in enumerate(scores) if s != 0), key=lambda p: (-p[1], p[0]))[:8]
        got = retriever.sparse_index.search(retriever.sparse_embeddings.embed_query(query), 8).rows()[0]
        assert [k for k, _ in got] == [k for k, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)


def test_a_dense_model_is_refused(default_llm: Any) -> None:
    with pytest.raises(ValueError, match="no sparse embeddings"):
        PoolkitSparseEmbeddings(llm=default_llm)


# -- fusion ---------------------------------------------------------------------------


def test_rrf_order_is_the_hand_computed_one(built: PoolkitHybridRetriever, rankings: dict) -> None:
    retriever = built
    assert retriever.fusion == "rrf" and retriever.rrf_k == 60
    both_seen = False
    for query in QUERIES:
        dense, sparse = rankings[query]
        assert len(dense) == 8 and sparse, "every query should match some documents in both indexes"
        expected = fuse_by_hand([dense, sparse], lambda n, ranking, pos: 1.0 / (60 + pos + 1))[:5]
        got = retriever.invoke(query)
        assert [d.id for d in got] == [key for key, _ in expected]
        for doc, (key, score) in zip(got, expected):
            meta = doc.metadata
            assert meta["fusion_score"] == pytest.approx(score, abs=1e-12)
            dense_ids, sparse_ids = [k for k, _ in dense], [k for k, _ in sparse]
            assert meta["dense_rank"] == (dense_ids.index(key) + 1 if key in dense_ids else None)
            assert meta["sparse_rank"] == (sparse_ids.index(key) + 1 if key in sparse_ids else None)
            assert meta["dense_score"] == (dict(dense).get(key))
            assert meta["sparse_score"] == (dict(sparse).get(key))
            i = IDS.index(key)
            assert doc.page_content == TEXTS[i] and {k: meta[k] for k in METAS[i]} == METAS[i]
            both_seen |= meta["dense_rank"] is not None and meta["sparse_rank"] is not None
    assert both_seen


def test_weighted_fusion_and_per_call_limits(built: PoolkitHybridRetriever, rankings: dict) -> None:
    retriever = built
    weighted = retriever.model_copy(update={"fusion": "weighted", "weights": (0.7, 0.3)})
    for query in QUERIES[:2]:
        dense, sparse = (ranking[:6] for ranking in rankings[query])  # fetch_k=6: the first 6 of each top-8

        def minmax(n: int, ranking: list, pos: int) -> float:
            values = [s for _, s in ranking]
            low, high = min(values), max(values)
            weight = (0.7, 0.3)[n]
            return weight * ((ranking[pos][1] - low) / (high - low) if high > low else 1.0)

        expected = fuse_by_hand([dense, sparse], minmax)[:3]
        got = weighted.invoke(query, k=3, fetch_k=6)
        assert [d.id for d in got] == [key for key, _ in expected]
        assert [d.metadata["fusion_score"] for d in got] == pytest.approx([s for _, s in expected])
    # k larger than the corpus: every document at most once.
    everything = retriever.invoke(QUERIES[0], k=50, fetch_k=50)
    assert sorted(d.id for d in everything) == sorted(IDS)


async def test_async_matches_sync(built: PoolkitHybridRetriever) -> None:
    for query in QUERIES[:2]:
        assert await built.ainvoke(query) == built.invoke(query)


# -- writes and persistence -----------------------------------------------------------


def test_upsert_and_delete_keep_both_indexes_in_step(
    retriever: PoolkitHybridRetriever, sparse_emb: PoolkitSparseEmbeddings
) -> None:
    new_text = "Lyon is a city in France famous for its food."
    retriever.add_documents([Document(id="doc-2", page_content=new_text, metadata={"n": 99})])  # replaces doc-2
    assert len(retriever) == len(TEXTS) == len(retriever.sparse_index)
    assert retriever.vectorstore.get_by_ids(["doc-2"])[0].page_content == new_text
    stored = retriever.sparse_index.reconstruct(["doc-2"]).toarray()[0]
    fresh = sparse_emb.embed_documents([new_text])[0]
    assert np.array_equal(np.flatnonzero(stored), fresh.indices)
    np.testing.assert_array_equal(stored[fresh.indices], np.asarray(fresh.values, dtype=np.float32))

    added = retriever.add_texts(["Hybrid retrieval needs both indexes."])
    assert len(added) == 1 and added[0] in retriever.sparse_index
    retriever.delete(["doc-0", added[0], "missing"])
    assert len(retriever) == len(TEXTS) - 1 == len(retriever.sparse_index)
    assert all(d.id != "doc-0" for d in retriever.invoke("capital of France", k=20, fetch_k=20))
    retriever.delete()
    assert len(retriever) == 0 == len(retriever.sparse_index) and retriever.invoke("anything") == []


def test_existing_store_is_indexed_and_mismatch_refused(
    emb: PoolkitEmbeddings, sparse_emb: PoolkitSparseEmbeddings, vocab_size: int
) -> None:
    store = PoolkitFAISS.from_texts(TEXTS[:5], emb, ids=IDS[:5])
    retriever = PoolkitHybridRetriever(vectorstore=store, sparse_embeddings=sparse_emb)
    assert sorted(retriever.sparse_index.ids()) == sorted(IDS[:5])
    other = SparseIndex(vocab_size, id_type="str")
    other.add(sparse_emb.embed_documents(TEXTS[:2]), IDS[:2])
    with pytest.raises(ValueError, match="disagree on 3 document ids"):
        PoolkitHybridRetriever(vectorstore=store, sparse_embeddings=sparse_emb, sparse_index=other)
    with pytest.raises(ValueError, match="weights"):
        PoolkitHybridRetriever(vectorstore=store, sparse_embeddings=sparse_emb, weights=(0.0, 0.0))


def test_save_load_round_trip(
    built: PoolkitHybridRetriever, emb: PoolkitEmbeddings, sparse_emb: PoolkitSparseEmbeddings, tmp_path: Path,
    vocab_size: int,
) -> None:
    tuned = built.model_copy(update={"rrf_k": 10.0, "weights": (1.0, 2.0)})
    folder = tuned.save_local(tmp_path / "hybrid")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == [
        "dense/docstore.jsonl", "dense/ids.npz", "dense/index.faiss", "dense/langchain_poolkit.json",
        "dense/manifest.json", "hybrid_retriever.json",
        "sparse/sparse_ids.npz", "sparse/sparse_manifest.json", "sparse/sparse_matrix.npz",
    ]
    manifest = json.loads((folder / "hybrid_retriever.json").read_text())
    assert manifest["settings"]["weights"] == [1.0, 2.0] and manifest["sparse_dim"] == vocab_size

    loaded = PoolkitHybridRetriever.load_local(folder, emb, sparse_emb)
    assert (loaded.k, loaded.fetch_k, loaded.rrf_k, loaded.weights) == (5, 8, 10.0, (1.0, 2.0))
    assert repr(loaded.sparse_index) == repr(tuned.sparse_index)
    for query in QUERIES[:2]:
        assert loaded.invoke(query) == tuned.invoke(query)
    assert PoolkitHybridRetriever.load_local(folder, emb, sparse_emb, k=2).invoke(QUERIES[0]) == \
        tuned.invoke(QUERIES[0], k=2)
    with pytest.raises(FileNotFoundError, match="not a PoolkitHybridRetriever"):
        PoolkitHybridRetriever.load_local(tmp_path, emb, sparse_emb)


# -- over HTTP ------------------------------------------------------------------------


@pytest.fixture
def route_http(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any, Any], None]:
    """Send the backends' httpx clients through the given transports (sync, async) instead of the network."""

    def route(sync_transport: Any = None, async_transport: Any = None) -> None:
        real_client, real_async = httpx.Client, httpx.AsyncClient

        class Client(real_client):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("transport", sync_transport)
                super().__init__(*args, **kwargs)

        class AsyncClient(real_async):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("transport", async_transport)
                super().__init__(*args, **kwargs)

        if sync_transport is not None:
            monkeypatch.setattr(httpx, "Client", Client)
        if async_transport is not None:
            monkeypatch.setattr(httpx, "AsyncClient", AsyncClient)

    return route


def tei_server(requests: list[dict]) -> Callable[[httpx.Request], httpx.Response]:
    """A fake TEI-style server: ``/embed_sparse`` answers indices in descending order (the client must sort)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "splade", "prompts": {}}]})
        body = json.loads(request.content)
        requests.append(body)
        if body["inputs"] == ["bad"]:
            return httpx.Response(400, json={"object": "error", "message": "input too long", "type": "BadRequestError",
                                             "param": None, "code": 400})
        if body["inputs"] == ["short answer"]:
            return httpx.Response(200, json=[])
        answer = [[{"index": 7 + n, "value": 0.5}, {"index": 3, "value": 1.25 + n}] for n in range(len(body["inputs"]))]
        return httpx.Response(200, json=answer)

    return handle


@pytest.mark.unit
async def test_remote_embed_sparse_parses_tei_answers(route_http: Callable[[Any, Any], None]) -> None:
    seen: list[dict] = []
    handler = tei_server(seen)
    route_http(httpx.MockTransport(handler), httpx.MockTransport(handler))
    backend = RemoteBackend("http://tei:8080/v1", api_key=None, model=None, timeout=5, max_retries=0)
    want = [SparseVector([3, 7], [1.25, 0.5], None), SparseVector([3, 8], [2.25, 0.5], None)]
    assert backend.embed_sparse(["a", "b"]) == want
    assert await backend.aembed_sparse(["a", "b"]) == want
    assert backend.embed_sparse(["a"], truncate_prompt_tokens=None, prompt_name="query") == want[:1]
    assert seen == [{"inputs": ["a", "b"], "truncate": True}] * 2 + [
        {"inputs": ["a"], "truncate": False, "prompt_name": "query"}]
    assert backend.embed_sparse([]) == [] and len(seen) == 3  # no request for nothing
    with pytest.raises(PoolkitBadRequestError, match="input too long"):
        backend.embed_sparse(["bad"])
    with pytest.raises(PoolkitServerError, match="0 sparse embeddings for 1 inputs"):
        backend.embed_sparse(["short answer"])
    with pytest.raises(ValueError, match="can only cut inputs at the model's limit"):
        backend.embed_sparse(["a"], truncate_prompt_tokens=16)

    # The LangChain wrapper: dim filled in from the field (TEI does not send it); the index accepts it.
    remote = PoolkitSparseEmbeddings(base_url="http://tei:8080", dim=16)
    vectors = remote.embed_documents(["a", "b"])
    assert vectors == [v._replace(dim=16) for v in want]
    index = SparseIndex(id_type="str")
    index.add(vectors, ["a", "b"])
    query = await remote.aembed_query("b")  # one input: the fake answers {3: 1.25, 7: 0.5}
    assert query == SparseVector([3, 7], [1.25, 0.5], 16)
    assert index.dim == 16
    assert index.search(query, 2).rows() == [[("b", 1.25 * 2.25), ("a", 1.25 * 1.25 + 0.5 * 0.5)]]
    with pytest.raises(ValueError, match="must be -1 or None"):
        PoolkitSparseEmbeddings(base_url="http://tei:8080", truncate_prompt_tokens=8)


async def test_remote_embed_sparse_against_the_server_app(
    sparse_llm: Any, sparse_emb: PoolkitSparseEmbeddings, route_http: Callable[[Any, Any], None], vocab_size: int
) -> None:
    """The real ``/embed_sparse`` route (in-process ASGI app over the same engine) gives the in-process vectors."""
    from poolkit.entrypoints.testing import serving

    async with serving(sparse_llm) as (_, client):
        # The backend opens its own AsyncClient per call: give it the test client's ASGI transport (the app).
        route_http(None, client._transport)
        remote = PoolkitSparseEmbeddings(base_url="http://test", dim=vocab_size)
        texts = TEXTS[:3] + ["x " * 400]  # the last one is longer than the model: cut (truncate=true)
        got = await remote.aembed_documents(texts)
        local = sparse_emb.embed_documents(texts)
        assert [v.indices for v in got] == [v.indices for v in local]
        for g, w in zip(got, local):
            np.testing.assert_allclose(g.values, w.values, rtol=1e-6)
        assert (await remote.aembed_query(QUERIES[0])).indices == sparse_emb.embed_query(QUERIES[0]).indices
