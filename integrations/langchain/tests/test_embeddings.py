"""PoolkitEmbeddings behaviour beyond the standard suite (in-process, tiny models)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from langchain_poolkit import PoolkitEmbeddings, PoolkitReranker

TEXTS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "The quick brown fox."]


def _close(a: list[list[float]], b: list[list[float]], tol: float = 1e-5) -> bool:
    import numpy as np

    return np.asarray(a).shape == np.asarray(b).shape and bool(np.allclose(a, b, atol=tol, rtol=0))


def _engine_vectors(llm: Any, texts: list[str], **kwargs: Any) -> list[list[float]]:
    return [o.outputs.embedding for o in llm.embed(texts, use_tqdm=False, **kwargs)]


def test_import_loads_no_model_and_no_torch() -> None:
    code = "import sys, langchain_poolkit; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_matches_engine_and_returns_python_floats(tiny_encoder_llm: Any) -> None:
    emb = PoolkitEmbeddings(llm=tiny_encoder_llm)
    docs = emb.embed_documents(TEXTS)
    assert docs == _engine_vectors(tiny_encoder_llm, TEXTS)
    assert all(type(x) is float for vec in docs for x in vec)
    query = emb.embed_query(TEXTS[0])
    assert query == pytest.approx(docs[0], abs=1e-6) and type(query) is list and type(query[0]) is float
    assert emb.embed_documents([]) == []
    assert emb.embedding_dim == len(query)


def test_model_path_and_engine_kwargs(tiny_encoder_path: Path, tiny_encoder_llm: Any) -> None:
    emb = PoolkitEmbeddings(model=str(tiny_encoder_path), dtype="float32", device="cpu", max_model_len=64)
    assert emb.engine_kwargs == {"dtype": "float32", "device": "cpu", "max_model_len": 64}
    assert emb.llm.model_config.max_model_len == 64
    assert _close(emb.embed_documents(TEXTS), _engine_vectors(tiny_encoder_llm, TEXTS))
    text = repr(emb)
    assert text.startswith("PoolkitEmbeddings(mode='in-process'") and "max_model_len=64" in text


def test_invalid_constructions(tiny_encoder_llm: Any, tiny_cross_encoder_llm: Any) -> None:
    with pytest.raises((TypeError, ValidationError), match="not_an_engine_arg"):
        PoolkitEmbeddings(llm=None, model="x", not_an_engine_arg=1)
    with pytest.raises(ValidationError, match="not both"):
        PoolkitEmbeddings(llm=tiny_encoder_llm, base_url="http://127.0.0.1:9")
    with pytest.raises(ValidationError, match="already loaded"):
        PoolkitEmbeddings(llm=tiny_encoder_llm, model="other")
    with pytest.raises(ValidationError, match="only apply in-process"):
        PoolkitEmbeddings(base_url="http://127.0.0.1:9", dtype="bfloat16")
    with pytest.raises(ValidationError, match="not an embedding model"):
        PoolkitEmbeddings(llm=tiny_cross_encoder_llm)
    with pytest.raises(ValidationError, match="truncate_prompt_tokens"):
        PoolkitEmbeddings(llm=tiny_encoder_llm, truncate_prompt_tokens=0)


def test_engine_arguments_are_the_engine_settings() -> None:
    """Accepted keywords are EngineArgs' fields (minus model), which is also what LLM's signature lists."""
    import inspect

    from langchain_poolkit._backends import llm_init_parameters
    from poolkit import LLM

    params = llm_init_parameters()
    assert {"dtype", "device", "max_model_len", "hf_overrides", "max_num_seqs"} <= params and "model" not in params
    assert params == set(inspect.signature(LLM).parameters) - {"model"}


def test_repr_hides_api_key() -> None:
    emb = PoolkitEmbeddings(base_url="http://127.0.0.1:9/v1", api_key="sk-secret", model="m")
    assert "sk-secret" not in repr(emb) and "sk-secret" not in str(emb)
    assert "base_url='http://127.0.0.1:9'" in repr(emb) and "mode='server'" in repr(emb)
    assert emb.api_key is not None and emb.api_key.get_secret_value() == "sk-secret"


def test_dimensions(tiny_st_llm: Any, tiny_encoder_llm: Any) -> None:
    from poolkit import PoolingParams

    emb = PoolkitEmbeddings(llm=tiny_st_llm, dimensions=8, document_instruction="", query_instruction="")
    vecs = emb.embed_documents(TEXTS)
    assert all(len(v) == 8 for v in vecs) and emb.embedding_dim == 8
    assert vecs == _engine_vectors(tiny_st_llm, TEXTS, pooling_params=PoolingParams(dimensions=8))
    assert sum(x * x for x in vecs[0]) == pytest.approx(1.0, abs=1e-5)
    # A model without Matryoshka support fails at construction, with the engine's message.
    with pytest.raises(ValidationError, match="does not support matryoshka representation"):
        PoolkitEmbeddings(llm=tiny_encoder_llm, dimensions=8)


def test_sentence_transformers_prompts(tiny_st_llm: Any, tiny_st_path: Path) -> None:
    assert tiny_st_llm.model_config.prompts == {"query": "query: ", "document": "doc: "}
    emb = PoolkitEmbeddings(llm=tiny_st_llm)
    assert (emb.query_prefix, emb.document_prefix) == ("query: ", "doc: ")
    assert emb.embed_query("capital of France") == _engine_vectors(tiny_st_llm, ["query: capital of France"])[0]
    assert emb.embed_documents(TEXTS) == _engine_vectors(tiny_st_llm, ["doc: " + t for t in TEXTS])
    assert not _close([emb.embed_query("x")], emb.embed_documents(["x"]))
    # Same vectors as Sentence-Transformers' own encode_query / encode_document.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_st_path), device="cpu")
    assert _close([emb.embed_query(TEXTS[0])], st.encode_query([TEXTS[0]]).tolist())
    assert _close(emb.embed_documents(TEXTS), st.encode_document(TEXTS).tolist())


def test_explicit_instructions_and_prompt_names(tiny_st_llm: Any, tiny_encoder_llm: Any) -> None:
    emb = PoolkitEmbeddings(llm=tiny_st_llm, query_instruction="Represent this question: ")
    assert emb.query_prefix == "Represent this question: " and emb.document_prefix == "doc: "
    assert emb.embed_query("x") == _engine_vectors(tiny_st_llm, ["Represent this question: x"])[0]
    named = PoolkitEmbeddings(
        llm=tiny_st_llm, prompts={"search": "search: "}, query_prompt_name="search", document_prompt_name="query"
    )
    assert (named.query_prefix, named.document_prefix) == ("search: ", "query: ")
    plain = PoolkitEmbeddings(llm=tiny_encoder_llm)
    assert (plain.query_prefix, plain.document_prefix) == ("", "")
    with pytest.raises(ValidationError, match="Prompt name 'nope' not found"):  # poolkit's own message
        PoolkitEmbeddings(llm=tiny_st_llm, query_prompt_name="nope")


def test_truncation_default_warns_once(tiny_encoder_llm: Any, caplog: pytest.LogCaptureFixture) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 40  # > 128 tokens
    emb = PoolkitEmbeddings(llm=tiny_encoder_llm)
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        first = emb.embed_documents([long_text, "short"])
        emb.embed_documents([long_text])
        emb.embed_query(long_text)
    warnings = [r for r in caplog.records if r.name == "langchain_poolkit" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "1 of 2 texts" in warnings[0].getMessage() and "128 tokens" in warnings[0].getMessage()
    assert first == _engine_vectors(tiny_encoder_llm, [long_text, "short"], truncate_prompt_tokens=-1)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
        emb.embed_documents(["short", "text"])  # nothing cut: no warning on a fresh instance either
        PoolkitEmbeddings(llm=tiny_encoder_llm).embed_documents(["short"])
    assert not [r for r in caplog.records if r.name == "langchain_poolkit"]


def test_truncation_configurable(tiny_encoder_llm: Any) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 40
    strict = PoolkitEmbeddings(llm=tiny_encoder_llm, truncate_prompt_tokens=None)
    with pytest.raises(ValueError, match="more than the model's maximum of 128 tokens"):
        strict.embed_documents([long_text])
    cut16 = PoolkitEmbeddings(llm=tiny_encoder_llm, truncate_prompt_tokens=16)
    assert cut16.embed_documents([long_text]) == _engine_vectors(
        tiny_encoder_llm, [long_text], truncate_prompt_tokens=16
    )


def test_chunking_keeps_order(tiny_encoder_llm: Any) -> None:
    texts = [f"document number {i} about {w}" for i, w in enumerate(["cats", "dogs", "fish", "birds", "mice"])]
    chunked = PoolkitEmbeddings(llm=tiny_encoder_llm, chunk_size=2)
    assert _close(chunked.embed_documents(texts), PoolkitEmbeddings(llm=tiny_encoder_llm).embed_documents(texts))
    assert asyncio.run(chunked.aembed_documents(texts)) == chunked.embed_documents(texts)


async def test_async_matches_sync_and_does_not_block_loop(tiny_encoder_llm: Any, monkeypatch) -> None:
    """The engine call runs off the event loop: it waits (in its thread) for a callback to run on the loop,
    which could never happen if the call blocked the loop."""
    emb = PoolkitEmbeddings(llm=tiny_encoder_llm, chunk_size=64)
    texts = [f"sentence {i} about the capital of France and Germany" for i in range(512)]
    expected = emb.embed_documents(texts)
    loop_ran = threading.Event()
    real_embed = tiny_encoder_llm.embed

    def embed_after_the_loop_ran(*args: Any, **kwargs: Any) -> Any:
        assert loop_ran.wait(timeout=30), "the event loop was blocked while embedding"
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(tiny_encoder_llm, "embed", embed_after_the_loop_ran)
    asyncio.get_running_loop().call_soon(loop_ran.set)  # runs only if aembed_documents yields the loop
    vectors = await emb.aembed_documents(texts)
    assert vectors == expected
    assert await emb.aembed_query(texts[0]) == pytest.approx(vectors[0], abs=1e-6)


def test_thread_safe_when_sharing_an_engine(tiny_encoder_llm: Any, tiny_cross_encoder_llm: Any) -> None:
    emb_a = PoolkitEmbeddings(llm=tiny_encoder_llm)
    emb_b = PoolkitEmbeddings(llm=tiny_encoder_llm)
    texts = [f"text {i} on vector search" for i in range(40)]
    expected = emb_a.embed_documents(texts)
    results: list[Any] = []
    errors: list[BaseException] = []

    def work(emb: PoolkitEmbeddings) -> None:
        try:
            for _ in range(3):
                results.append(emb.embed_documents(texts))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e,)) for e in (emb_a, emb_b, emb_a)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 9
    assert all(r == expected for r in results)
    # A reranker on another engine has its own lock; one on the same engine shares it.
    from langchain_poolkit._backends import engine_lock

    assert PoolkitReranker(llm=tiny_encoder_llm).backend.lock is emb_a.backend.lock is engine_lock(tiny_encoder_llm)
    assert PoolkitReranker(llm=tiny_cross_encoder_llm).backend.lock is not emb_a.backend.lock
