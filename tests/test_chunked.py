"""Chunked processing of long inputs (vLLM's enable_chunked_processing) against transformers forward passes over
the same chunks: MEAN is the token-weighted mean of the chunk means (exact), CLS/LAST the token-weighted mean of the
chunks' first/last-token vectors (the documented approximation); the head (Dense, Matryoshka, normalize) runs after
merging; special tokens are re-added to every chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from poolkit import LLM, PoolingParams
from poolkit.testing import SAMPLE_TEXTS

pytestmark = pytest.mark.unit

LONG = " ".join(SAMPLE_TEXTS * 8)  # ~750 tokens; the tiny models take 128
SHORT = SAMPLE_TEXTS[:3]
ATOL = 1e-5


def chunk_ids(ids: list[int], limit: int, overlap: int = 0, framed: bool = True) -> list[list[int]]:
    """The chunks the documented rule makes: special tokens re-added, ``overlap`` tokens shared."""
    prefix, suffix = (ids[:1], ids[-1:]) if framed else ([], [])
    body = ids[len(prefix):len(ids) - len(suffix)]
    room = limit - len(prefix) - len(suffix)
    chunks, start = [], 0
    while True:
        chunks.append(prefix + body[start:start + room] + suffix)
        if start + room >= len(body):
            return chunks
        start += room - overlap


def reference(path: str, ids: list[int], pooling: str, overlap: int = 0, framed: bool = True) -> np.ndarray:
    """Token-weighted mean of the chunks' pooled vectors, from transformers."""
    model = tf.AutoModel.from_pretrained(path).eval()
    vectors, weights = [], []
    for chunk in chunk_ids(ids, 128, overlap, framed):
        with torch.no_grad():
            states = model(torch.tensor([chunk])).last_hidden_state[0]
        vectors.append({"mean": states.mean(0), "cls": states[0], "lasttoken": states[-1]}[pooling].numpy())
        weights.append(len(chunk))
    return (np.array(weights)[:, None] * np.stack(vectors)).sum(0) / sum(weights)


def _vec(outputs) -> np.ndarray:
    return np.stack([o.outputs.numpy() for o in outputs])


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_chunks_merge_as_documented(tiny, pooling) -> None:
    path = str(tiny("encoder", pooling=pooling, normalize=False))
    llm = LLM(path, dtype="float32", override_pooler_config={"enable_chunked_processing": True})
    (out,) = llm.embed(LONG, use_tqdm=False)
    ids = llm.tokenizer(LONG)["input_ids"]
    np.testing.assert_allclose(out.outputs.numpy(), reference(path, ids, pooling), atol=ATOL)
    assert out.prompt_token_ids == ids and not out.truncated
    assert out.num_processed_tokens == sum(len(c) for c in chunk_ids(ids, 128)) > len(ids)


def test_normalize_and_matryoshka_run_after_merging(tiny) -> None:
    path = tiny("encoder", pooling="mean", normalize=True, config={"matryoshka_dimensions": [8, 16]})
    llm = LLM(str(path), dtype="float32", override_pooler_config={"enable_chunked_processing": True})
    merged = reference(str(path), llm.tokenizer(LONG)["input_ids"], "mean")
    (full,) = llm.embed(LONG, use_tqdm=False)
    np.testing.assert_allclose(full.outputs.numpy(), merged / np.linalg.norm(merged), atol=ATOL)
    (cut,) = llm.embed(LONG, PoolingParams(dimensions=8), use_tqdm=False)
    np.testing.assert_allclose(cut.outputs.numpy(), merged[:8] / np.linalg.norm(merged[:8]), atol=ATOL)
    assert abs(np.linalg.norm(cut.outputs.numpy()) - 1) < 1e-5


def test_dense_layers_run_once_on_the_merged_vector(tiny) -> None:
    from sentence_transformers import SentenceTransformer

    path = str(tiny("encoder", pooling="mean", normalize=True, dense_out=16))
    llm = LLM(path, dtype="float32", override_pooler_config={"enable_chunked_processing": True})
    merged = torch.tensor(reference(path, llm.tokenizer(LONG)["input_ids"], "mean"), dtype=torch.float32)
    st = SentenceTransformer(path, device="cpu")
    dense = next(m for m in st if type(m).__name__ == "Dense")
    with torch.no_grad():
        expected = dense({"sentence_embedding": merged[None]})["sentence_embedding"][0]
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(llm.embed(LONG, use_tqdm=False)[0].outputs.numpy(), expected, atol=ATOL)


def test_overlap_and_per_request_switch(tiny) -> None:
    path = str(tiny("encoder", pooling="mean", normalize=False))
    llm = LLM(path, dtype="float32", override_pooler_config={"chunk_overlap": 16})
    ids = llm.tokenizer(LONG)["input_ids"]
    with pytest.raises(ValueError, match="more than the model's maximum"):
        llm.embed(LONG, use_tqdm=False)  # off by default: the usual error
    (out,) = llm.embed(LONG, enable_chunked_processing=True, use_tqdm=False)
    np.testing.assert_allclose(out.outputs.numpy(), reference(path, ids, "mean", overlap=16), atol=ATOL)
    assert out.num_processed_tokens == sum(len(c) for c in chunk_ids(ids, 128, 16))
    (cut,) = llm.embed(LONG, truncate_prompt_tokens=-1, enable_chunked_processing=True, use_tqdm=False)
    assert cut.truncated and len(cut.prompt_token_ids) == 128  # truncation asked for wins: nothing is too long


def test_batched_equals_single_and_order_is_kept(tiny) -> None:
    path = str(tiny("encoder", pooling="mean", normalize=True))
    llm = LLM(path, dtype="float32", override_pooler_config={"enable_chunked_processing": True})
    plain = LLM(path, dtype="float32")
    mixed = [SHORT[0], LONG, SHORT[1], LONG + " " + SHORT[2], SHORT[2]]
    batched = _vec(llm.embed(mixed, use_tqdm=False))
    singles = np.concatenate([_vec(llm.embed(t, use_tqdm=False)) for t in mixed])
    np.testing.assert_allclose(batched, singles, atol=ATOL)
    # Short inputs are not touched by chunking.
    np.testing.assert_allclose(batched[[0, 2, 4]], _vec(plain.embed(SHORT[:2] + SHORT[2:], use_tqdm=False)),
                               atol=ATOL)
    assert not np.allclose(batched[1], batched[3], atol=1e-3)


def test_max_embed_len_edges(tiny) -> None:
    path = str(tiny("encoder", pooling="mean"))
    probe = LLM(path, dtype="float32")
    n = len(probe.tokenizer(LONG)["input_ids"])
    at_limit = LLM(path, dtype="float32",
                   override_pooler_config={"enable_chunked_processing": True, "max_embed_len": n})
    assert len(at_limit.embed(LONG, use_tqdm=False)[0].prompt_token_ids) == n
    below = LLM(path, dtype="float32",
                override_pooler_config={"enable_chunked_processing": True, "max_embed_len": n - 1})
    with pytest.raises(ValueError, match=f"Prompt 1 has {n} tokens, more than max_embed_len={n - 1}.*max_embed_len"):
        below.embed([SHORT[0], LONG], use_tqdm=False)


def test_token_ids_without_special_tokens_are_cut_as_they_are(tiny) -> None:
    path = str(tiny("encoder", pooling="mean", normalize=False))
    llm = LLM(path, dtype="float32", override_pooler_config={"enable_chunked_processing": True})
    bare = llm.tokenizer(LONG, add_special_tokens=False)["input_ids"]
    (out,) = llm.embed([bare], use_tqdm=False)
    np.testing.assert_allclose(out.outputs.numpy(), reference(path, bare, "mean", framed=False), atol=ATOL)


def test_async_engine_merges_chunks_like_the_offline_api(tiny) -> None:
    import asyncio

    from poolkit.async_engine import AsyncPoolingEngine

    llm = LLM(str(tiny("encoder", pooling="mean")), dtype="float32",
              override_pooler_config={"enable_chunked_processing": True})
    texts = [SHORT[0], LONG, SHORT[1]] * 40  # large enough to be tokenized in slices on the bulk lane

    async def served() -> np.ndarray:
        engine = AsyncPoolingEngine(llm, max_batch_tokens=256)
        engine.start()
        try:
            return _vec(await engine.process("embed", texts))
        finally:
            await engine.close()

    np.testing.assert_allclose(asyncio.run(served()), _vec(llm.embed(texts, use_tqdm=False)), atol=ATOL)


@pytest.mark.parametrize(("kind", "override", "message"), [
    ("classifier", {"enable_chunked_processing": True}, "applies to embedding models"),
    ("encoder", {"enable_chunked_processing": True, "pooling_type": "ALL"}, "needs one vector per input"),
])
def test_refused_where_it_cannot_work(tiny, kind, override, message) -> None:
    with pytest.raises(ValueError, match=message):
        LLM(str(tiny(kind)), dtype="float32", override_pooler_config=override)


def test_bad_overlap_is_refused(tiny) -> None:
    llm = LLM(str(tiny("encoder")), dtype="float32", override_pooler_config={"chunk_overlap": 200})
    with pytest.raises(ValueError, match="chunk_overlap must be between 0 and 125"):
        llm.embed(LONG, enable_chunked_processing=True, use_tqdm=False)
