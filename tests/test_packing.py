"""Padding-free (packed) batches: the attention kernel, the runner's choice, and results vs padded.

fp32 throughout: packed and padded runs of the same model agree to 1e-5, and
the attention kernel matches SDPA on each sequence alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import poolkit.attention as attention
import poolkit.runner as runner_module
from poolkit import LLM
from poolkit.attention import length_runs, run_attention
from poolkit.settings import EngineArgs
from poolkit.testing import SAMPLE_TEXTS

pytestmark = pytest.mark.unit

TEXTS = SAMPLE_TEXTS + ["short", "x", "a somewhat longer sentence about vector search and rerankers in retrieval"]


def test_length_runs_group_consecutive_equal_lengths() -> None:
    assert length_runs([5, 5, 3, 5]) == [(0, 2, 5, 5), (10, 1, 3, 3), (13, 1, 5, 5)]
    assert length_runs([5, 5, 5], keys=[5, 3, 3]) == [(0, 1, 5, 5), (5, 2, 5, 3)]
    assert length_runs([]) == []


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_run_attention_matches_sdpa_per_sequence(causal: bool, kv_heads: int, dtype: torch.dtype) -> None:
    """Each sequence of a packed batch attends only to itself; fp32 to 1e-5, bf16 to 2e-2 of the fp32 result."""
    torch.manual_seed(0)
    lengths = [7, 7, 7, 3, 9, 1, 3, 3]  # runs, singletons, and a length seen again later
    heads, dim, total = 4, 8, sum(lengths)
    # Transformers' layout: (H, T, d) views of a (T, H, d) projection.
    q = torch.randn(total, heads, dim).transpose(0, 1)
    k, v = (torch.randn(total, kv_heads, dim).transpose(0, 1) for _ in range(2))
    got = run_attention(q.to(dtype), k.to(dtype), v.to(dtype), length_runs(lengths), dim**-0.5, causal)
    assert got.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    start = 0
    for n in lengths:
        span = slice(start, start + n)
        ref = F.scaled_dot_product_attention(
            q[None, :, span], k[None, :, span], v[None, :, span], is_causal=causal, enable_gqa=kv_heads != heads
        )[0]
        torch.testing.assert_close(got[span].float(), ref.transpose(0, 1), rtol=tolerance, atol=tolerance)
        start += n


@pytest.mark.parametrize("causal", [False, True])
def test_run_attention_sliding_window_and_hidden_keys(causal: bool) -> None:
    """A window and keys hidden from every query (ColBERT query expansion) match SDPA with the explicit mask."""
    torch.manual_seed(1)
    lengths, visible, window = [6, 6, 4], [4, 4, 4], 3
    heads, dim, total = 2, 8, sum(lengths)
    q, k, v = (torch.randn(heads, total, dim) for _ in range(3))
    got = run_attention(q, k, v, length_runs(lengths, visible), dim**-0.5, causal, window=window)
    start = 0
    for n, keys in zip(lengths, visible):
        span = slice(start, start + n)
        positions = torch.arange(n)
        allowed = ((positions[:, None] - positions[None, :]).abs() < window) & (positions[None, :] < keys)
        if causal:
            allowed &= positions[None, :] <= positions[:, None]
        ref = F.scaled_dot_product_attention(q[None, :, span], k[None, :, span], v[None, :, span], attn_mask=allowed)
        torch.testing.assert_close(got[span], ref[0].transpose(0, 1), rtol=1e-5, atol=1e-5)
        start += n


@pytest.mark.parametrize(
    "kind", ["encoder", "roberta-encoder", "decoder", "decoder-classifier", "classifier", "roberta-cross-encoder"]
)
def test_packed_matches_padded(tiny, kind: str) -> None:
    path = str(tiny(kind))
    packed = LLM(path, dtype="float32", packing="on", max_num_batched_tokens=128)
    padded = LLM(path, dtype="float32", packing="off", max_num_batched_tokens=128)
    assert packed.engine.runner.packing and not padded.engine.runner.packing
    got = [o.outputs.data for o in packed.encode(TEXTS, use_tqdm=False)]
    ref = [o.outputs.data for o in padded.encode(TEXTS, use_tqdm=False)]
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_packed_encoder_matches_transformers_per_sequence(tiny) -> None:
    import transformers as tf

    path = str(tiny("roberta-encoder"))
    llm = LLM(path, task="encode", dtype="float32")
    assert llm.engine.runner.packing
    model = tf.AutoModel.from_pretrained(path).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    for text, out in zip(TEXTS, llm.encode(TEXTS, use_tqdm=False)):
        with torch.no_grad():
            ref = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        torch.testing.assert_close(out.outputs.data, ref, rtol=1e-4, atol=1e-5)


def test_cross_encoder_pairs_packed_match_padded(tiny) -> None:
    path = str(tiny("cross-encoder"))
    packed, padded = LLM(path, dtype="float32"), LLM(path, dtype="float32", packing="off")
    assert packed.engine.runner.packing  # backbone packed, BERT pooler + classifier on the unpacked rows
    query, docs = "what is the capital of France?", SAMPLE_TEXTS
    got = [o.outputs.score for o in packed.score(query, docs, use_tqdm=False)]
    ref = [o.outputs.score for o in padded.score(query, docs, use_tqdm=False)]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_models_whose_head_cannot_run_on_rows_stay_padded(tiny) -> None:
    path = str(tiny("reward"))  # LlamaForTokenClassification: its head is not a sequence head
    assert not LLM(path, dtype="float32").engine.runner.packing
    with pytest.raises(ValueError, match="packing=on is not possible for LlamaForTokenClassification"):
        LLM(path, dtype="float32", packing="on")


def test_probe_keeps_a_model_padded_when_packed_results_differ(tiny, monkeypatch) -> None:
    monkeypatch.setattr(runner_module, "position_offset", lambda model: 7)  # a wrong position convention
    llm = LLM(str(tiny("encoder")), dtype="float32")
    assert not llm.engine.runner.packing
    # ... and the padded path it fell back to is still right.
    reference = LLM(str(tiny("encoder")), dtype="float32", packing="off")
    np.testing.assert_allclose(
        [o.outputs.embedding for o in llm.embed(TEXTS, use_tqdm=False)],
        [o.outputs.embedding for o in reference.embed(TEXTS, use_tqdm=False)],
        atol=1e-6,
    )


def test_packing_option_and_env(monkeypatch) -> None:
    assert EngineArgs(packing="off").packing == "off"
    assert EngineArgs(packing=True).packing == "on"
    monkeypatch.setenv("POOLKIT_PACKING", "on")
    assert EngineArgs.resolve().packing == "on"
    assert EngineArgs.resolve(packing="off").packing == "off"  # an explicit argument beats the environment
    monkeypatch.delenv("POOLKIT_PACKING")
    assert EngineArgs.resolve().packing == "auto"
    with pytest.raises(ValueError, match="expected auto, on or off"):
        EngineArgs(packing="sometimes")
    monkeypatch.setenv("POOLKIT_PACKING", "sometimes")
    with pytest.raises(ValueError, match="POOLKIT_PACKING='sometimes'"):
        EngineArgs.resolve()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention varlen runs on CUDA only (benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("causal", [False, True])
def test_flash_varlen_matches_run_attention_on_gpu(causal: bool) -> None:
    if not attention.use_flash_varlen(torch.device("cuda"), torch.bfloat16):
        pytest.fail("this torch has no torch.nn.attention.varlen: the GPU path would fall back to per-run SDPA")
    torch.manual_seed(0)
    lengths = [33, 33, 7, 100, 1, 64]
    heads, kv_heads, dim, total = 8, 4, 64, sum(lengths)
    q = torch.randn(total, heads, dim, device="cuda").transpose(0, 1)
    k, v = (torch.randn(total, kv_heads, dim, device="cuda").transpose(0, 1) for _ in range(2))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32, device="cuda")
    got = attention._flash_varlen(q.bfloat16(), k.bfloat16(), v.bfloat16(), cu, max(lengths), dim**-0.5, causal)
    ref = run_attention(q, k, v, length_runs(lengths), dim**-0.5, causal)  # fp32, SDPA per run
    torch.testing.assert_close(got.float(), ref, rtol=0, atol=3e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 packed vs padded on a GPU (benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_gpu_bf16_packed_matches_padded(tiny, kind: str) -> None:
    path = str(tiny(kind))
    packed = LLM(path, dtype="bfloat16", device="cuda", packing="on")
    padded = LLM(path, dtype="bfloat16", device="cuda", packing="off")
    got = np.array([o.outputs.embedding for o in packed.embed(TEXTS, use_tqdm=False)])
    ref = np.array([o.outputs.embedding for o in padded.embed(TEXTS, use_tqdm=False)])
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.999  # bf16 tolerance, as for the CPU default


def test_packed_rows_take_few_lengths_on_cpu(tiny) -> None:
    runner = LLM(str(tiny("encoder")), dtype="float32").engine.runner
    rounded = {t: runner.packed_row_length(t) for t in range(1, 8193)}
    assert len(set(rounded.values())) <= 120  # oneDNN keeps memory per distinct matmul shape
    assert all(t <= r <= max(16, t * 1.125) for t, r in rounded.items())
    assert all(r - t < 128 for t, r in rounded.items() if t > 1024)
