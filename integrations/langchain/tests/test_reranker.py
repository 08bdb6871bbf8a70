"""PoolkitReranker: order and scores equal LLM.score, no mutation, top_n, async, retriever pipeline."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ValidationError

from langchain_poolkit import PoolkitReranker

QUERY = "What is the capital of France?"
DOCS = [
    Document(page_content="Berlin is the capital of Germany.", metadata={"source": "a"}, id="d0"),
    Document(page_content="Paris is the capital and most populous city of France.", metadata={"source": "b"}, id="d1"),
    Document(page_content="The quick brown fox jumps over the lazy dog.", metadata={"source": "c"}, id="d2"),
    Document(page_content="Vector search finds the nearest neighbours of a query.", metadata={"source": "d"}),
    Document(page_content="Rerankers reorder retrieved passages by relevance.", metadata={"source": "e"}, id="d4"),
]


def _expected(llm: Any, query: str, docs: list[Document], top_n: int | None) -> list[tuple[int, float]]:
    scores = [o.outputs.score for o in llm.score(query, [d.page_content for d in docs], use_tqdm=False)]
    order = sorted(range(len(docs)), key=lambda i: -scores[i])  # stable: ties keep input order
    return [(i, scores[i]) for i in (order if top_n is None else order[:top_n])]


@pytest.mark.parametrize("engine", ["tiny_cross_encoder_llm", "default_llm"])
def test_order_and_scores_equal_llm_score(engine: str, request: pytest.FixtureRequest) -> None:
    llm = request.getfixturevalue(engine)
    reranker = PoolkitReranker(llm=llm, top_n=3)
    assert isinstance(reranker, BaseDocumentCompressor)
    before = copy.deepcopy(DOCS)
    out = reranker.compress_documents(DOCS, QUERY)
    expected = _expected(llm, QUERY, DOCS, 3)
    assert [(d.page_content, d.id) for d in out] == [(DOCS[i].page_content, DOCS[i].id) for i, _ in expected]
    assert [d.metadata["relevance_score"] for d in out] == [s for _, s in expected]
    assert all(type(d.metadata["relevance_score"]) is float for d in out)
    assert [d.metadata["source"] for d in out] == [DOCS[i].metadata["source"] for i, _ in expected]
    assert before == DOCS, "inputs were mutated"
    assert reranker.rank(QUERY, [d.page_content for d in DOCS]) == expected


def test_default_model_puts_the_answer_first(default_llm: Any) -> None:
    out = PoolkitReranker(llm=default_llm, top_n=1).compress_documents(DOCS, QUERY)
    assert [d.id for d in out] == ["d1"]


def test_top_n_none_threshold_and_empty(tiny_cross_encoder_llm: Any) -> None:
    all_docs = PoolkitReranker(llm=tiny_cross_encoder_llm, top_n=None).compress_documents(DOCS, QUERY)
    assert len(all_docs) == len(DOCS)
    scores = [d.metadata["relevance_score"] for d in all_docs]
    assert scores == sorted(scores, reverse=True)
    cut = scores[1]
    kept = PoolkitReranker(llm=tiny_cross_encoder_llm, top_n=None, score_threshold=cut).compress_documents(DOCS, QUERY)
    assert all(d.metadata["relevance_score"] >= cut for d in kept) and len(kept) >= 2
    assert PoolkitReranker(llm=tiny_cross_encoder_llm).compress_documents([], QUERY) == []
    assert PoolkitReranker(llm=tiny_cross_encoder_llm, top_n=10).compress_documents(DOCS[:2], QUERY)[0].id in (
        "d0",
        "d1",
    )


async def test_async_equals_sync(tiny_cross_encoder_llm: Any) -> None:
    reranker = PoolkitReranker(llm=tiny_cross_encoder_llm, top_n=4)
    assert await reranker.acompress_documents(DOCS, QUERY) == reranker.compress_documents(DOCS, QUERY)
    assert await reranker.acompress_documents([], QUERY) == []


def test_truncates_long_pairs_by_default(tiny_cross_encoder_llm: Any) -> None:
    long_doc = Document(page_content="the capital of France is Paris " * 60)
    out = PoolkitReranker(llm=tiny_cross_encoder_llm).compress_documents([long_doc, *DOCS[:2]], QUERY)
    assert len(out) == 3
    with pytest.raises(ValueError, match="maximum of 128 tokens"):
        PoolkitReranker(llm=tiny_cross_encoder_llm, truncate_prompt_tokens=None).compress_documents([long_doc], QUERY)


def test_rejects_models_that_cannot_score(tmp_path_factory: pytest.TempPathFactory) -> None:
    from poolkit import LLM
    from poolkit.testing import build_tiny_checkpoint

    classifier = LLM(str(build_tiny_checkpoint(tmp_path_factory.mktemp("clf") / "m", "classifier")))
    with pytest.raises(ValidationError, match="cannot score"):
        PoolkitReranker(llm=classifier)
    with pytest.raises(ValidationError, match="top_n"):
        PoolkitReranker(base_url="http://127.0.0.1:9", top_n=-1)


class _ListRetriever(BaseRetriever):
    """Returns a fixed list of documents (stands in for a vector store retriever)."""

    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return list(self.docs)


async def test_inside_contextual_compression_retriever(default_llm: Any) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    reranker = PoolkitReranker(llm=default_llm, top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=_ListRetriever(docs=DOCS))
    expected = _expected(default_llm, QUERY, DOCS, 2)
    out = retriever.invoke(QUERY)
    assert [d.page_content for d in out] == [DOCS[i].page_content for i, _ in expected]
    assert out[0].id == "d1" and "relevance_score" in out[0].metadata
    assert await retriever.ainvoke(QUERY) == out
