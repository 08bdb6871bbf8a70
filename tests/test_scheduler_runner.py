"""Scheduler and runner: budgets, buckets, dtype choice, and the compiled path's parity."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from poolkit import LLM
from poolkit.runner import length_buckets, resolve_compile, select_dtype
from poolkit.scheduler import SchedulerConfig, schedule
from poolkit.testing import SAMPLE_TEXTS

pytestmark = pytest.mark.unit


def test_schedule_respects_budget_and_covers_every_index() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(1000)]
    buckets = length_buckets(512)
    pad = lambda n: next(b for b in buckets if b >= n)  # noqa: E731
    config = SchedulerConfig(max_num_batched_tokens=4096, max_num_seqs=64)
    batches = schedule(lengths, config, pad)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    for batch in batches:
        width = pad(max(lengths[i] for i in batch))
        assert len(batch) * width <= 4096 and len(batch) <= 64
    # sorted by length: padding waste stays small
    padded = sum(len(b) * pad(max(lengths[i] for i in b)) for b in batches)
    assert padded / sum(lengths) < 1.6


def test_packed_schedule_counts_real_tokens_and_groups_equal_lengths() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(1, 300) for _ in range(1000)]
    config = SchedulerConfig(max_num_batched_tokens=4096, max_num_seqs=64)
    batches = schedule(lengths, config)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    for batch in batches:
        assert sum(lengths[i] for i in batch) <= 4096 and len(batch) <= 64
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    # Without padding there is no reason to cut early: batches are full but for the last.
    assert all(sum(lengths[i] for i in b) > 4096 - 300 or len(b) == 64 for b in batches[:-1])


def test_single_sequence_over_budget_gets_its_own_batch() -> None:
    assert schedule([600, 10, 10], SchedulerConfig(max_num_batched_tokens=512)) == [[0], [1, 2]]
    assert schedule([600, 10, 10], SchedulerConfig(max_num_batched_tokens=512), lambda n: n) == [[0], [1, 2]]


def test_length_buckets() -> None:
    assert length_buckets(256) == [16, 32, 64, 128, 256]
    assert length_buckets(100) == [16, 32, 64, 100]


def test_dtype_and_compile_resolution() -> None:
    cpu = torch.device("cpu")
    assert select_dtype("float32", cpu) is torch.float32
    assert select_dtype("bf16", cpu) is torch.bfloat16
    assert select_dtype("auto", cpu, cpu_dtype="float32") is torch.float32
    with pytest.raises(ValueError, match="Unknown dtype"):
        select_dtype("int3", cpu)
    assert resolve_compile("off", cpu, torch.bfloat16) is False
    assert resolve_compile("auto", cpu, torch.float32) is False
    assert resolve_compile("auto", cpu, torch.bfloat16) is True
    assert resolve_compile("on", cpu, torch.float32) is True


def test_bucketed_padding_does_not_change_results(tiny) -> None:
    path = str(tiny("encoder", pooling="mean", normalize=True))
    llm = LLM(path, dtype="float32")
    texts = SAMPLE_TEXTS + ["tiny"]
    batched = np.array([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])
    singles = np.array([llm.embed(t, use_tqdm=False)[0].outputs.embedding for t in texts])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_compiled_runner_matches_eager(tiny) -> None:
    path = str(tiny("encoder", pooling="mean", normalize=True))
    eager = LLM(path, dtype="float32", compile="off")
    compiled = LLM(path, dtype="float32", compile="on")
    assert compiled.engine.runner.compiled
    texts = SAMPLE_TEXTS[:5] + ["one"]  # one bucket (16 tokens), several row counts
    ref = np.array([o.outputs.embedding for o in eager.embed(texts, use_tqdm=False)])
    for subset in (texts, texts[:3], texts[:1]):
        got = np.array([o.outputs.embedding for o in compiled.embed(subset, use_tqdm=False)])
        np.testing.assert_allclose(got, ref[: len(subset)], atol=1e-4)


@pytest.mark.parametrize("kind", ["encoder", "classifier", "decoder"])
def test_packed_cpu_linears_match_plain_linears(tiny, kind, monkeypatch) -> None:
    path = str(tiny(kind))
    packed = LLM(path, dtype="float32")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN not available on this build")
    assert packed.engine.runner.prepacked_linears > 0
    monkeypatch.setenv("POOLKIT_CPU_PREPACK", "0")
    plain = LLM(path, dtype="float32")
    assert plain.engine.runner.prepacked_linears == 0
    got = [o.outputs.data for o in packed.encode(SAMPLE_TEXTS, use_tqdm=False)]
    ref = [o.outputs.data for o in plain.encode(SAMPLE_TEXTS, use_tqdm=False)]
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_large_budget_does_not_pad_short_rows_to_long_ones() -> None:
    lengths = [120] * 4 + [12] * 500  # a few long chunks among many one-liners
    buckets = length_buckets(256)
    pad = lambda n: next(b for b in buckets if b >= n)  # noqa: E731
    batches = schedule(lengths, SchedulerConfig(max_num_batched_tokens=16384, max_num_seqs=256), pad)
    padded = sum(len(b) * pad(max(lengths[i] for i in b)) for b in batches)
    assert padded / sum(lengths) < 1.4
    assert all(len({pad(lengths[i]) for i in b}) == 1 for b in batches)
