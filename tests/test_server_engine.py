"""The async engine and the app in-process (httpx ASGI transport, tiny classifier): classification,
overload (429), failure isolation inside a merged batch, chunking, draining; and the CLI's parsing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time

import httpx
import numpy as np
import pytest

from poolkit import LLM, PoolingParams
from poolkit.async_engine import AsyncPoolingEngine, EngineClosedError, QueueFullError, QueueTimeoutError
from poolkit.entrypoints.cli import engine_args, make_parser
from poolkit.entrypoints.server import build_app
from poolkit.entrypoints.testing import serving, until
from poolkit.settings import EngineArgs

pytestmark = pytest.mark.unit

TEXTS = ["the quick brown fox", "paris", "is the capital of france", "a", "berlin is the capital of germany too"]


@pytest.fixture(scope="module")
def llm(tiny) -> LLM:
    return LLM(str(tiny("classifier")), served_model_name="tiny-cls", dtype="float32")


def ids(n: int) -> list[int]:
    """n token ids inside any tiny vocabulary: [CLS] x ... [SEP]."""
    return [2] + [1] * (n - 2) + [3]


async def test_classify_labels_and_probs_match_offline(llm) -> None:
    async with serving(llm) as (_, client):
        body = (await client.post("/classify", json={"input": TEXTS, "model": "tiny-cls"})).json()
        expected = llm.classify(TEXTS, use_tqdm=False)
        for item, out in zip(body["data"], expected):
            probs = out.outputs.probs
            assert item["probs"] == pytest.approx(probs, abs=1e-5)
            assert item["label"] == llm.model_config.id2label[int(np.argmax(probs))]
            assert item["num_classes"] == 3
        assert body["usage"]["prompt_tokens"] == sum(len(o.prompt_token_ids) for o in expected)
        raw = (await client.post("/classify", json={"input": TEXTS[0], "activation": False})).json()
        assert sum(raw["data"][0]["probs"]) != pytest.approx(1.0)
        for path, body in (("/score", {"text_1": "a", "text_2": "b"}), ("/rerank", {"query": "a", "documents": ["b"]}),
                           ("/v1/embeddings", {"input": "a"})):
            r = await client.post(path, json=body)
            assert r.status_code == 400 and "does not support" in r.json()["message"], path
        assert (await client.get("/health")).status_code == 200


@contextlib.contextmanager
def held_worker(llm: LLM, monkeypatch):
    """The model worker blocks inside its next batch until released: work stays queued by construction."""
    entered, release = threading.Event(), threading.Event()
    real_execute = llm.engine.execute

    def execute(*args, **kwargs):
        entered.set()
        assert release.wait(30), "the test never released the worker"
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(llm.engine, "execute", execute)
    try:
        yield entered
    finally:
        release.set()


@contextlib.contextmanager
def recorded_calls(llm: LLM, monkeypatch, calls: list[list[list[int]]]):
    """:func:`held_worker`, and every engine call's prompts (their token ids) appended to ``calls``."""
    with held_worker(llm, monkeypatch) as entered:
        held = llm.engine.execute

        def record(prompts, *args, **kwargs):
            calls.append([p.input_ids for p in prompts])
            return held(prompts, *args, **kwargs)

        monkeypatch.setattr(llm.engine, "execute", record)
        yield entered


async def test_overload_answers_429_with_retry_after(llm, monkeypatch) -> None:
    async with serving(llm, batch_wait_ms=0, max_queued_tokens=20) as (engine, client):
        with held_worker(llm, monkeypatch) as entered:
            running = asyncio.create_task(client.post("/classify", json={"input": ids(12)}))
            await until(entered.is_set, "the worker to take the first request")
            queued = asyncio.create_task(client.post("/classify", json={"input": ids(12)}))
            await until(lambda: engine.queued_tokens == 12, "the second request to be queued")
            refused = await client.post("/classify", json={"input": ids(12)})  # 12 + 12 > 20
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json() == {"object": "error", "message": refused.json()["message"],
                                      "type": "RateLimitError", "param": None, "code": 429}
        assert (await running).status_code == 200 and (await queued).status_code == 200
        assert (await client.post("/classify", json={"input": ids(12)})).status_code == 200  # room again


def test_admission_by_expected_wait(llm) -> None:
    """Admission is by the time the queued work ahead of a newcomer takes at the measured speed (requests'
    first parts: the worker serves them before the later parts of large requests); Retry-After comes from it."""
    engine = AsyncPoolingEngine(llm, max_queue_wait=2.0)
    engine.admit()  # speed not measured yet: only the token cap applies
    engine._tokens_per_s = 100.0  # what the worker measures from real batches
    engine._queued_first_tokens = 150  # 1.5 s of requests' first parts ahead of a newcomer
    engine._queued_tokens = 10_000  # later parts of large requests: a newcomer is served before them
    engine.admit()
    engine._queued_first_tokens = 450  # 4.5 s
    with pytest.raises(QueueFullError, match=r"waiting ~4\.5 s") as info:
        engine.admit()
    assert info.value.retry_after == 3  # until the expected wait is back under 2 s
    assert AsyncPoolingEngine(llm, max_queue_wait=0)._deadline() == float("inf")


async def test_a_small_request_is_served_before_the_rest_of_a_large_one(llm, monkeypatch) -> None:
    engine = AsyncPoolingEngine(llm, batch_wait_ms=0, max_batch_tokens=32, max_queue_wait=0)
    engine.start()
    batches: list[list[list[int]]] = []  # the token ids of each engine call's prompts
    try:
        with recorded_calls(llm, monkeypatch, batches) as entered:
            first = asyncio.create_task(engine.process("classify", ids(5)))
            await until(entered.is_set, "the worker to take the first request")
            large = asyncio.create_task(engine.process("classify", [ids(10)] * 21))  # 7 parts of 30 tokens
            await until(lambda: engine.queued_tokens == 210, "the large request to be queued")
            small = asyncio.create_task(engine.process("classify", ids(7)))
            await until(lambda: engine.queued_tokens == 217, "the small request to be queued")
        await asyncio.gather(first, large, small)
    finally:
        await engine.close()
    served_at = next(i for i, batch in enumerate(batches) if ids(7) in batch)
    assert served_at <= 2  # after the first request and the large one's first part, not after all 7 parts
    assert sum(batch.count(ids(10)) for batch in batches) == 21


async def test_large_request_parts_make_short_engine_calls(llm, monkeypatch) -> None:
    """A request over max_batch_tokens is queued in parts of max_bulk_batch_tokens, and a call takes such parts
    only up to that budget; the first parts of other requests still fill a whole batch."""
    engine = AsyncPoolingEngine(llm, batch_wait_ms=0, max_batch_tokens=64, max_bulk_batch_tokens=20,
                                max_queue_wait=0)
    engine.start()
    calls: list[list[list[int]]] = []
    try:
        with recorded_calls(llm, monkeypatch, calls) as entered:
            first = asyncio.create_task(engine.process("classify", ids(5)))
            await until(entered.is_set, "the worker to take the first request")
            large = asyncio.create_task(engine.process("classify", [ids(10)] * 12))  # 120 tokens > 64
            await until(lambda: engine.queued_tokens == 120, "the large request to be queued")
            smalls = [asyncio.create_task(engine.process("classify", ids(n))) for n in (5, 6, 7, 8)]
            await until(lambda: engine.queued_tokens == 146, "the small requests to be queued")
        await asyncio.gather(first, large, *smalls)
    finally:
        await engine.close()
    tokens = [sum(map(len, call)) for call in calls]
    # The large request's first part (20 tokens) and the small requests in one call, no later part with them.
    assert calls[1] == [ids(10)] * 2 + [ids(n) for n in (5, 6, 7, 8)]
    assert tokens[2:] == [20] * 5, tokens
    assert sum(call.count(ids(10)) for call in calls) == 12


class Skips:
    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}

    def observe_queue_wait(self, seconds) -> None: ...

    def observe_batch(self, num_seqs, num_tokens, seconds) -> None: ...

    def set_queued_tokens(self, tokens) -> None: ...

    def add_skipped_tokens(self, reason, tokens) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + tokens


async def test_expired_and_cancelled_work_is_not_run(llm, monkeypatch) -> None:
    stats = Skips()
    engine = AsyncPoolingEngine(llm, batch_wait_ms=0, max_queue_wait=0.05, stats=stats)
    engine.start()
    ran: list[list[int]] = []
    try:
        with held_worker(llm, monkeypatch) as entered:
            real = llm.engine.execute

            def record(prompts, *args, **kwargs):
                ran.extend(p.input_ids for p in prompts)
                return real(prompts, *args, **kwargs)

            monkeypatch.setattr(llm.engine, "execute", record)
            first = asyncio.create_task(engine.process("classify", ids(5)))
            await until(entered.is_set, "the worker to take the first request")
            expired = asyncio.create_task(engine.process("classify", ids(6)))
            abandoned = asyncio.create_task(engine.process("classify", ids(7)))
            await until(lambda: engine.queued_tokens == 13, "both requests to be queued")
            abandoned.cancel()  # the caller went away while its work was queued
            deadline = time.monotonic() + 2 * 0.05
            await until(lambda: time.monotonic() > deadline, "the queued request's deadline to pass")
        assert len((await first)[0].outputs.probs) == 3
        with pytest.raises(QueueTimeoutError, match=r"waited more than 0\.1 s"):
            await expired
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        await until(lambda: engine.queued_tokens == 0, "the queue to empty")
    finally:
        await engine.close()
    assert ids(6) not in ran and ids(7) not in ran
    assert stats.skipped == {"expired": 6, "cancelled": 7}


async def test_failure_inside_merged_batch_fails_only_its_request(llm, monkeypatch) -> None:
    poison = ids(9)
    real_execute = llm.engine.execute
    calls: list[int] = []

    def execute(prompts, options, use_tqdm=False, progress=None):
        calls.append(len(prompts))
        if any(p.input_ids == poison for p in prompts):
            raise RuntimeError("poisoned batch")
        return real_execute(prompts, options, use_tqdm, progress)

    monkeypatch.setattr(llm.engine, "execute", execute)
    bodies = [{"input": t} for t in TEXTS]
    bodies.insert(2, {"input": poison})
    # The batch closes when its token budget is full, i.e. once every request is queued: merged by construction.
    budget = sum(len(p) for p in llm.prepare("classify", TEXTS).prompts) + len(poison)
    async with serving(llm, batch_wait_ms=60_000, max_batch_tokens=budget) as (_, client):
        responses = await asyncio.gather(*(client.post("/classify", json=b) for b in bodies))
    assert calls[0] == len(bodies)  # all requests were merged into one engine call
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200, 200]
    error = responses[2].json()
    assert error["type"] == "InternalServerError" and error["code"] == 500
    assert "poisoned batch" in error["message"]
    good = [r.json()["data"][0]["probs"] for r in responses if r.status_code == 200]
    expected = [o.outputs.probs for o in llm.classify(TEXTS, use_tqdm=False)]
    np.testing.assert_allclose(good, expected, atol=1e-5)


async def test_large_request_is_chunked_and_keeps_order(llm, monkeypatch) -> None:
    real_execute = llm.engine.execute
    sizes: list[int] = []

    def execute(prompts, options, use_tqdm=False, progress=None):
        sizes.append(len(prompts))
        return real_execute(prompts, options, use_tqdm, progress)

    monkeypatch.setattr(llm.engine, "execute", execute)
    texts = [TEXTS[i % len(TEXTS)] + " x" * (i % 7) for i in range(40)]
    async with serving(llm, max_batch_tokens=32, batch_wait_ms=0) as (_, client):
        body = (await client.post("/classify", json={"input": texts})).json()
    assert len(sizes) > 3 and sum(sizes) == 40
    np.testing.assert_allclose([d["probs"] for d in body["data"]],
                               [o.outputs.probs for o in llm.classify(texts, use_tqdm=False)], atol=1e-5)


async def test_model_workers_run_batches_side_by_side_on_their_share_of_the_threads(llm, monkeypatch) -> None:
    """Two workers (the second joins as soon as one token waits): two batches run at the same time; a lone
    batch runs on all the CPU threads; results as offline."""
    import torch

    total = torch.get_num_threads()
    real_execute = llm.engine.execute
    side_by_side = threading.Barrier(2, timeout=30)  # passes only when two engine calls are in flight together
    calls: list[tuple[str, int]] = []  # (worker, its CPU threads) per engine call
    numbered = itertools.count()

    def execute(*args, **kwargs):
        calls.append((threading.current_thread().name, torch.get_num_threads()))
        if next(numbered) < 2:  # the first two calls wait for each other
            with contextlib.suppress(threading.BrokenBarrierError):
                side_by_side.wait()
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(llm.engine, "execute", execute)
    engine = AsyncPoolingEngine(llm, batch_wait_ms=0, max_batch_tokens=16, model_workers=2, worker_spill_tokens=1,
                                max_queue_wait=0)
    engine.start()
    texts = [TEXTS[i % len(TEXTS)] + " x" * (i % 5) for i in range(40)]
    try:
        results = await asyncio.gather(*(engine.process("classify", text) for text in texts))
        assert engine.is_running  # no worker died taking work the other had just taken
        calls.clear()
        await engine.process("classify", TEXTS[0])  # alone
    finally:
        await engine.close()
    assert not side_by_side.broken, "the two workers never ran a batch at the same time"
    assert calls == [(calls[0][0], total)]
    expected = llm.classify(texts, use_tqdm=False)
    np.testing.assert_allclose([r[0].outputs.probs for r in results], [e.outputs.probs for e in expected], atol=1e-5)
    assert torch.get_num_threads() == total  # the caller's own threads are untouched


async def test_a_second_worker_joins_only_when_enough_work_waits(llm, monkeypatch) -> None:
    """worker_spill_tokens=30: while the first worker is busy, 20 queued tokens wait for it; once 35 wait, the
    second worker takes them all in one batch beside it, on its half of the threads."""
    import torch

    engine = AsyncPoolingEngine(llm, batch_wait_ms=0, model_workers=2, worker_spill_tokens=30, max_queue_wait=0)
    engine.start()
    calls: list[list[list[int]]] = []
    threads: list[int] = []
    try:
        with recorded_calls(llm, monkeypatch, calls) as entered:
            recorded = llm.engine.execute

            def execute(*args, **kwargs):
                threads.append(torch.get_num_threads())
                return recorded(*args, **kwargs)

            monkeypatch.setattr(llm.engine, "execute", execute)
            first = asyncio.create_task(engine.process("classify", ids(5)))
            await until(entered.is_set, "the first worker to take the first request")
            waiting = asyncio.create_task(engine.process("classify", ids(20)))
            await until(lambda: engine.queued_tokens == 20, "20 tokens to wait")
            spilled = asyncio.create_task(engine.process("classify", ids(15)))
            await until(lambda: len(calls) == 2, "the second worker to take the waiting work")
            assert calls[1] == [ids(20), ids(15)]  # not the 20 tokens alone, before the 15 came
        await asyncio.gather(first, waiting, spilled)
    finally:
        await engine.close()
    assert threads[1] == max(1, torch.get_num_threads() // 2)


def test_model_workers_are_validated(llm, monkeypatch) -> None:
    import torch

    with pytest.raises(ValueError, match="model_workers must be >= 1"):
        AsyncPoolingEngine(llm, model_workers=0)
    monkeypatch.setattr(llm.engine.runner, "device", torch.device("cuda"))
    with pytest.raises(ValueError, match="several model workers run CPU engines only"):
        AsyncPoolingEngine(llm, model_workers=2)


async def test_close_drains_queued_work_then_refuses(llm) -> None:
    # A batch window of a minute keeps everything queued until close(), which runs it before it stops.
    engine = AsyncPoolingEngine(llm, batch_wait_ms=60_000, max_queue_wait=0)
    app = build_app(engine)
    engine.start()
    total = sum(len(p) for p in llm.prepare("classify", TEXTS).prompts)
    pending = [asyncio.create_task(engine.process("classify", [text])) for text in TEXTS]
    await until(lambda: engine.queued_tokens == total, "every request to be queued")
    await engine.close()
    results = [await p for p in pending]
    assert all(len(r) == 1 and r[0].outputs.num_classes == 3 for r in results)
    with pytest.raises(EngineClosedError):
        await engine.process("classify", TEXTS, PoolingParams())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/health")).status_code == 503
        r = await client.post("/classify", json={"input": "late"})
        assert r.status_code == 503 and r.json()["type"] == "ServiceUnavailableError"


# -- CLI -----------------------------------------------------------------------------------------------------


def test_cli_flags_follow_vllm(monkeypatch) -> None:
    monkeypatch.setenv("POOLKIT_API_KEY", "from-env")
    monkeypatch.setenv("POOLKIT_BATCH_WAIT_MS", "7.5")
    args = make_parser().parse_args([
        "serve", "/models/x", "--task", "score", "--hf_overrides", '{"is_matryoshka": true}',
        "--override-pooler-config", '{"pooling_type": "MEAN"}', "--served-model-name", "a", "b",
        "--trust-remote-code", "--dtype", "bfloat16", "--device", "cpu", "--max-model-len", "128", "--port", "9000",
    ])
    assert (args.api_key, args.batch_wait_ms, args.port, args.host) == ("from-env", 7.5, 9000, "127.0.0.1")
    assert engine_args(args) == EngineArgs(
        model="/models/x", task="score", override_pooler_config={"pooling_type": "MEAN"},
        hf_overrides={"is_matryoshka": True}, trust_remote_code=True, dtype="bfloat16", device="cpu",
        max_model_len=128, served_model_name=["a", "b"], max_num_batched_tokens=None,
    )
    assert args.served_model_name == ["a", "b"]
    assert engine_args(make_parser().parse_args(["serve", "default"])).model is None
    assert engine_args(make_parser().parse_args(["serve"])).model is None
    assert make_parser().parse_args(["serve", "--api-key", "cli"]).api_key == "cli"


@pytest.mark.parametrize("argv", [["serve", "--hf-overrides", "{not json"], ["serve", "--hf-overrides", "[1]"],
                                  ["serve", "--task", "generate"], ["serve", "--port", "x"]])
def test_cli_rejects_bad_flags(argv, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        make_parser().parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_json_helper_roundtrip() -> None:
    args = make_parser().parse_args(["serve", "--hf-overrides", json.dumps({"matryoshka_dimensions": [8]})])
    assert engine_args(args).hf_overrides == {"matryoshka_dimensions": [8]}


def test_serve_with_bad_flags_exits_with_one_line(tiny) -> None:
    from poolkit.entrypoints.server import run_server

    args = make_parser().parse_args(["serve", str(tiny("encoder")), "--task", "classify"])
    with pytest.raises(SystemExit) as info:
        run_server(args)
    assert str(info.value).startswith("poolkit serve: error: task='classify' needs a sequence-classification")
