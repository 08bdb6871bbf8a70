"""`poolkit serve` under hostile load: real server processes on 127.0.0.1, clients that misbehave on purpose.

Body limits while streaming (413, memory bounded), stalled bodies (408), slow headers (closed), the
connection limit (503), Host checks (400), protocol errors and lone surrogates (400 in the error
shape), a small request served while a huge one is being tokenized, shedding before tokenization
(429), client disconnects (499, queued work dropped) and the shutdown deadline (503, exit 0).

Work is held in flight by the gate of ``RemoteServer(gated=True)`` (model worker, tokenizer lanes),
never by a guess at the machine's speed. Latency figures live in ``benchmarks/soak_server.py``;
:func:`test_soak_short` runs it briefly.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import signal
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from poolkit import LLM
from poolkit.entrypoints.server import build_app
from poolkit.entrypoints.testing import RawHTTP, RemoteServer, parse_metric, wait_until

REPO = Path(__file__).resolve().parents[1]
FLOAT32 = ("--dtype", "float32")
ATOL = 1e-5
LIMIT_BYTES = 2 << 20  # --max-request-bytes of the `limits` server
MAX_CONNECTIONS = 4
WORDS = ("the", "capital", "of", "france", "is", "paris", "berlin", "a", "city", "dog", "vectors", "and", "more")


@functools.cache
def text_of(chars: int, seed: int = 0) -> str:
    """Text of ``chars`` characters from words the tiny tokenizer knows."""
    words: list[str] = []
    length, i = 0, seed
    while length < chars:
        words.append(WORDS[i % len(WORDS)])
        length += len(words[-1]) + 1
        i = (i * 7 + 3) % 1009
    return " ".join(words)[:chars]


@pytest.fixture(scope="module")
def checkpoint(tiny) -> str:
    return str(tiny("encoder"))


@pytest.fixture(scope="module")
def servers(checkpoint):
    """``limits``: small HTTP limits; ``lanes``: room for a 2,048 x 5,000-character request, a small token queue."""
    limits = RemoteServer(checkpoint, ["--task", "embed", *FLOAT32, "--max-request-bytes", str(LIMIT_BYTES),
                                       "--body-timeout", "3", "--header-timeout", "1",
                                       "--max-connections", str(MAX_CONNECTIONS), "--max-request-chars", "30000",
                                       "--allowed-hosts", "127.0.0.1", "localhost"], gated=True)
    lanes = RemoteServer(checkpoint, ["--task", "embed", *FLOAT32, "--max-queue-wait", "0",
                                      "--max-queued-tokens", "4096", "--max-request-chars", "12000000"], gated=True)
    try:
        for s in (limits, lanes):
            s.start()
        for s in (limits, lanes):
            s.wait_ready()
        yield {"limits": limits, "lanes": lanes}
    finally:
        for s in (limits, lanes):
            s.close()


@pytest.fixture(scope="module")
def limits(servers) -> RemoteServer:
    return servers["limits"]


@pytest.fixture(scope="module")
def lanes(servers) -> RemoteServer:
    return servers["lanes"]


@pytest.fixture(scope="module")
def llm(checkpoint) -> LLM:
    return LLM(checkpoint, task="embed", dtype="float32")


def offline(llm: LLM, texts: list[str]) -> np.ndarray:
    outputs = llm.embed(texts, use_tqdm=False, truncate_prompt_tokens=-1)
    return np.array([o.outputs.embedding for o in outputs], dtype=np.float32)


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def assert_error(status: int, body: bytes | str, expected: int, message: str | None = None) -> dict:
    """An answer in the server's one error shape, with the HTTP status equal to its code."""
    assert status == expected, body
    error = json.loads(body)
    assert set(error) == {"object", "message", "type", "param", "code"}, error
    assert error["object"] == "error" and error["code"] == expected, error
    if message is not None:
        assert message in error["message"], error["message"]
    return error


def assert_response_error(response: httpx.Response, expected: int, message: str | None = None) -> dict:
    assert response.headers["content-type"] == "application/json", response.headers
    return assert_error(response.status_code, response.text, expected, message)


def still_serves(server: RemoteServer) -> None:
    response = httpx.post(server.url_for("/v1/embeddings"), json={"input": ["a dog", "paris"]}, timeout=60)
    assert vectors(response).shape[0] == 2


def embed_request(texts: list[str] | str, **extra: object) -> bytes:
    """An embeddings body as JSON escapes only (a lone surrogate stays a ``\\ud800`` escape)."""
    return json.dumps({"input": texts, "truncate_prompt_tokens": -1, **extra}).encode()


POST_HEAD = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")


# -- the body: size and time -----------------------------------------------------------------------------


def send_chunked(port: int, chunk: bytes, total: int) -> tuple[int, bytes]:
    """POST ``total`` bytes of ``chunk`` chunks, or until the server answers or cuts the connection: (status,
    body)."""
    sent = 0
    with RawHTTP(port) as conn:
        conn.send(POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < total and not conn.readable():
                conn.send_chunk(chunk)
                sent += len(chunk)
            conn.send_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):  # the server may cut a long drain short; the answer is there
            pass
        status, _, body = conn.read_response()
    return status, body


def test_chunked_body_over_the_limit_is_413_and_not_buffered(limits) -> None:
    """20 MiB sent chunked (no Content-Length to check up front) to a 2 MiB limit: 413 in the error shape, and
    the server's memory grows by less than twice the limit (the body is counted as it comes, not kept)."""
    chunk = b"[" + b'"a dog a dog",' * 4681 + b'"x"]'  # ~64 KiB of a JSON array that never ends
    # First use: the allocator keeps the memory of one limit-sized body (and the chunked path's own); what is
    # measured is what 20 MiB more do.
    status, body = send_chunked(limits.port, embed_request(["a dog"]), 1)
    assert status == 200, body
    assert send_chunked(limits.port, chunk, LIMIT_BYTES + len(chunk))[0] == 413
    before = limits.rss_bytes()
    status, body = send_chunked(limits.port, chunk, 20 << 20)
    assert_error(status, body, 413, f"larger than this server's limit of {LIMIT_BYTES} bytes")
    growth = limits.rss_bytes() - before
    assert growth < 2 * LIMIT_BYTES, f"RSS grew by {growth / 2**20:.1f} MiB for a {LIMIT_BYTES >> 20} MiB limit"
    still_serves(limits)


def test_declared_length_over_the_limit_is_413_before_the_body(limits) -> None:
    with RawHTTP(limits.port) as conn:  # the body never comes: the answer cannot wait for it
        conn.send(POST_HEAD + b"Content-Length: %d\r\n\r\n" % (3 << 20))
        status, _, body = conn.read_response(timeout=30)
    assert_error(status, body, 413, f"Request body of {3 << 20} bytes is larger than this server's limit")


def test_stalled_body_is_408_and_closed(limits) -> None:
    with RawHTTP(limits.port) as conn:
        conn.send(POST_HEAD + b"Content-Length: 1000\r\n\r\n" + b'{"input": "a dog')  # then nothing
        status, headers, body = conn.read_response(timeout=60)
        assert_error(status, body, 408, "not received within this server's limit of 3 s")
        assert headers["connection"] == "close"
        assert conn.closed_within(30)
    still_serves(limits)


# -- headers and connections -------------------------------------------------------------------------------


def test_slow_headers_close_the_connection(limits) -> None:
    """--header-timeout 1: a connection that sends part of a request's headers, or nothing at all, is closed;
    so is a kept-alive connection whose next request's headers stall."""
    before = limits.metric("poolkit_http_rejections_total", reason="header_timeout")
    with RawHTTP(limits.port) as partial, RawHTTP(limits.port) as silent, RawHTTP(limits.port) as kept:
        partial.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        kept.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept.read_response()[0] == 200
        kept.send(b"GET /health HTTP/1.1\r\nHost: 127.0")  # the next request on the kept-alive connection
        for conn in (partial, silent, kept):
            assert conn.closed_within(30), "the server kept a connection with incomplete headers open"
        status, _, body = RawHTTP.parse_response(partial.received)
        assert_error(status, body, 408, "headers were not received within this server's limit of 1 s")
    wait_until(lambda: limits.metric("poolkit_http_rejections_total", reason="header_timeout") >= before + 3, 30,
               "3 header timeouts counted")
    still_serves(limits)


def test_connections_beyond_the_limit_get_503_json(limits) -> None:
    """--max-connections 4: three requests held in flight (gate) and one idle client hold the four; a fifth
    connection's request is answered 503 in the error shape and closed."""
    gate = limits.gate

    def open_connections(client: httpx.Client) -> float:
        response = client.get("/metrics")
        return parse_metric(response.text, "poolkit_open_connections") if response.status_code == 200 else -1

    async def main() -> list[httpx.Response]:
        limits_3 = httpx.Limits(max_connections=3)
        async with httpx.AsyncClient(base_url=limits.url, timeout=60, limits=limits_3) as client:
            gate.hold()
            try:
                tasks = [asyncio.create_task(client.post("/v1/embeddings", json={"input": f"a dog {i}"}))
                         for i in range(3)]
                await asyncio.to_thread(wait_until, lambda: limits.requests_in_progress("/v1/embeddings") == 3, 60,
                                        "3 requests in progress")
                with httpx.Client(base_url=limits.url, timeout=60) as idle:  # the 4th connection, kept alive
                    await asyncio.to_thread(wait_until, lambda: open_connections(idle) == MAX_CONNECTIONS, 60,
                                            f"exactly {MAX_CONNECTIONS} open connections")
                    with RawHTTP(limits.port) as fifth:
                        fifth.send(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                        status, headers, body = fifth.read_response()
                        assert_error(status, body, 503, f"too many open connections (limit {MAX_CONNECTIONS})")
                        assert headers["connection"] == "close" and headers["retry-after"] == "1"
                        assert fifth.closed_within(30)
                assert not any(t.done() for t in tasks)
            finally:
                gate.release()
            return await asyncio.gather(*tasks)

    assert [r.status_code for r in asyncio.run(main())] == [200] * 3
    assert limits.metric("poolkit_http_rejections_total", reason="max_connections") >= 1
    still_serves(limits)


def test_allowed_hosts(limits) -> None:
    """--allowed-hosts 127.0.0.1 localhost: any port of those; other hosts get 400 in the error shape, except on
    /health (probes address servers by IP)."""
    url = limits.url_for("/v1/embeddings")
    for host in ("evil.example", "127.0.0.2", "localhost.evil.example", ""):
        response = httpx.post(url, json={"input": "a dog"}, headers={"Host": host})
        assert_response_error(response, 400, f"Invalid Host header {host!r}")
    for host in ("localhost:9999", "LOCALHOST", "127.0.0.1"):
        assert vectors(httpx.post(url, json={"input": "a dog"}, headers={"Host": host})).shape == (1, 32)
    assert httpx.get(limits.url_for("/health"), headers={"Host": "10.0.0.7:8000"}).status_code == 200


def test_head_health(limits) -> None:
    response = httpx.head(limits.url_for("/health"))
    assert response.status_code == 200 and response.content == b""


def test_protocol_errors_are_400_json(limits) -> None:
    """What uvicorn answers itself (h11 cannot parse the request) is in the error shape too."""
    for raw in (POST_HEAD + b"Content-Length: abc\r\n\r\n{}",
                POST_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                b"NOT AN HTTP REQUEST\r\n\r\n",
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n"):
        with RawHTTP(limits.port) as conn:
            conn.send(raw)
            status, headers, body = conn.read_response()
            assert_error(status, body, 400, "Invalid HTTP request")
            assert headers["content-type"] == "application/json" and conn.closed_within(30)
    still_serves(limits)


# -- inputs: checked before tokenizing -------------------------------------------------------------------


def test_lone_surrogate_and_request_character_limit(limits) -> None:
    url = limits.url_for("/v1/embeddings")
    headers = {"Content-Type": "application/json"}
    response = httpx.post(url, content=embed_request(["a dog", "paris", "ok", "bad \ud800 text"]), headers=headers)
    assert_response_error(response, 400, "'input' item 3 is not valid Unicode (lone surrogate U+D800 at character 4)")
    response = httpx.post(url, content=embed_request("a dog", prompt="\udc00x"), headers=headers)
    assert_response_error(response, 400, "'prompt' is not valid Unicode (lone surrogate U+DC00 at character 0)")
    response = httpx.post(limits.url_for("/rerank"), headers=headers,
                          content=json.dumps({"query": "q", "documents": ["a", "\ud83d"]}).encode())
    assert_response_error(response, 400, "'documents' item 1 is not valid Unicode")
    # a valid pair is one character, not an error
    assert vectors(httpx.post(url, content=embed_request(["paris \ud83d\ude00"]), headers=headers)).shape[0] == 1
    # --max-request-chars 30000: the sum over all the inputs (each under the per-input limit)
    response = httpx.post(url, json={"input": [text_of(10_000)] * 4})
    assert_response_error(response, 400, "have 40000 characters in all, more than this server's limit of 30000")
    response = httpx.post(limits.url_for("/score"), json={"text_1": text_of(20_000), "text_2": text_of(15_000)})
    assert_response_error(response, 400, "have 35000 characters in all")
    response = httpx.post(url, json={"input": ["a dog"] * 10, "prompt": text_of(3_001)})
    assert_response_error(response, 400, "have 30060 characters in all")  # the prompt counts once per input
    response = httpx.post(url, json={"input": "x" * 100_001})
    assert_response_error(response, 400, "item 0 has 100001 characters, more than this server's limit of 100000")
    still_serves(limits)


# -- load: lanes, shedding, disconnects --------------------------------------------------------------------


def test_small_request_answered_while_a_huge_one_is_tokenized(lanes, llm) -> None:
    """A 2,048 x 5,000-character request is held *in tokenization* (its bulk lane is gated at its first slice);
    a one-text request is answered meanwhile (express lane), and the huge one then completes."""
    gate = lanes.gate
    big_texts = [text_of(5_000, seed=i % 7) for i in range(2048)]
    expected = offline(llm, [big_texts[0], big_texts[-1], "a small request"])

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=lanes.url, timeout=300) as client:
            gate.hold_lane("bulk")
            try:
                before = gate.lane_entered("bulk")
                big = asyncio.create_task(client.post("/v1/embeddings", content=embed_request(big_texts),
                                                      headers={"Content-Type": "application/json"}))
                await asyncio.to_thread(gate.wait_lane_entered, "bulk", before + 1)
                small = await client.post("/v1/embeddings", json={"input": "a small request"})
                assert not big.done(), "the huge request finished while its tokenization was held"
                assert await asyncio.to_thread(lanes.requests_in_progress, "/v1/embeddings") == 1
                assert gate.lane_entered("bulk") == before + 1  # the small one never went through the bulk lane
            finally:
                gate.release_lane("bulk")
            return small, await big

    small, big = asyncio.run(main())
    np.testing.assert_allclose(vectors(small), expected[2:], atol=ATOL)
    got = vectors(big)
    assert got.shape[0] == 2048
    np.testing.assert_allclose(got[[0, -1]], expected[:2], atol=ATOL)


def test_overload_is_429_with_retry_after_before_tokenizing(lanes) -> None:
    """--max-queued-tokens 4096: with the model held and more than that queued, a new request is refused at once
    (429, Retry-After) while both tokenizer lanes are held too: it was refused before any tokenization."""
    gate = lanes.gate

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=lanes.url, timeout=120) as client:
            gate.hold()
            try:
                entered = gate.entered
                running = asyncio.create_task(client.post("/v1/embeddings", json={"input": ["a dog"] * 4}))
                await asyncio.to_thread(gate.wait_entered, entered + 1)
                queued = asyncio.create_task(client.post(
                    "/v1/embeddings", json={"input": [text_of(600, seed=i) for i in range(48)],
                                            "truncate_prompt_tokens": -1}))
                await asyncio.to_thread(wait_until, lambda: lanes.metric("poolkit_queued_tokens") >= 4096, 60,
                                        "4096 tokens queued")
                for lane in gate.LANES:
                    gate.hold_lane(lane)
                tokenized = [gate.lane_entered(lane) for lane in gate.LANES]
                refused = await client.post("/v1/embeddings", json={"input": "one more"})
                assert_response_error(refused, 429, "overloaded")
                assert int(refused.headers["retry-after"]) >= 1
                assert [gate.lane_entered(lane) for lane in gate.LANES] == tokenized
                assert not running.done() and not queued.done()
            finally:
                gate.release_all()
            return await asyncio.gather(running, queued)

    assert [r.status_code for r in asyncio.run(main())] == [200, 200]
    still_serves(lanes)


def test_client_disconnect_cancels_the_request(lanes) -> None:
    """A request queued behind a held batch whose client goes away: counted 499, and its queued tokens are
    skipped as cancelled instead of run."""
    gate = lanes.gate
    m = lanes.metric
    closed_499 = {"endpoint": "/v1/embeddings", "method": "POST", "status": "499"}

    async def main() -> tuple[httpx.Response, float, float, float]:
        async with httpx.AsyncClient(base_url=lanes.url, timeout=120) as client:
            gate.hold()
            try:
                entered = gate.entered
                running = asyncio.create_task(client.post("/v1/embeddings", json={"input": ["a dog"] * 4}))
                await asyncio.to_thread(gate.wait_entered, entered + 1)
                skipped, disconnects, batch_tokens = (m("poolkit_skipped_tokens_total", reason="cancelled"),
                                                      m("poolkit_requests_total", **closed_499),
                                                      m("poolkit_batch_tokens_sum"))
                with RawHTTP(lanes.port) as conn:
                    body = embed_request([text_of(300, seed=i) for i in range(32)])
                    conn.send(POST_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    await asyncio.to_thread(wait_until, lambda: m("poolkit_queued_tokens") > 0, 60,
                                            "the request's tokens queued")
                    queued = m("poolkit_queued_tokens")
                # the client is gone: the server cancels the request before the model is released
                await asyncio.to_thread(wait_until, lambda: m("poolkit_requests_total", **closed_499) == disconnects + 1,
                                        60, "the request counted with status 499")
            finally:
                gate.release()
            response = await running
            await asyncio.to_thread(wait_until, lambda: m("poolkit_skipped_tokens_total", reason="cancelled")
                                    >= skipped + queued, 60, "the cancelled request's tokens skipped")
            processed = m("poolkit_batch_tokens_sum") - batch_tokens - response.json()["usage"]["prompt_tokens"]
            return response, queued, m("poolkit_skipped_tokens_total", reason="cancelled") - skipped, processed

    response, queued, skipped, processed = asyncio.run(main())
    assert response.status_code == 200
    assert skipped == queued > 0
    assert processed < 0.5 * queued, f"the engine ran {processed} of the {queued} tokens of a cancelled request"
    assert lanes.requests_in_progress("/v1/embeddings") == 0
    still_serves(lanes)


# -- shutdown -------------------------------------------------------------------------------------------------


def test_shutdown_timeout_answers_503_and_exits_0(checkpoint) -> None:
    """SIGTERM with a request held in the model past --shutdown-timeout 1: the request is answered 503 in the
    error shape, the process exits 0, and its log has no traceback."""
    with RemoteServer(checkpoint, ["--task", "embed", "--shutdown-timeout", "1"], gated=True) as server:
        gate = server.gate

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                gate.hold()
                entered = gate.entered
                task = asyncio.create_task(client.post("/v1/embeddings", json={"input": ["a dog", "paris"]}))
                await asyncio.to_thread(wait_until, lambda: server.requests_in_progress("/v1/embeddings") == 1, 60,
                                        "the request in progress")
                await asyncio.to_thread(gate.wait_entered, entered + 1)
                server.proc.send_signal(signal.SIGTERM)
                return await task

        response = asyncio.run(main())
        assert_response_error(response, 503, "did not finish within its shutdown timeout of 1 s")
        assert response.headers["connection"] == "close"
        assert server.proc.wait(60) == 0
        log = server.log()
        assert "answering them 503" in log and "Stopped on SIGTERM" in log
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


# -- in-process: nothing left running ----------------------------------------------------------------------------


async def test_no_task_left_behind_in_process(llm) -> None:
    """The middleware's disconnect watcher and deadline wait end with their request (ASGI, no server)."""
    from poolkit.async_engine import AsyncPoolingEngine
    from poolkit.entrypoints.server_args import ServerArgs

    engine = AsyncPoolingEngine(llm)
    app = build_app(engine, ServerArgs(max_request_bytes=1000))
    engine.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            assert vectors(await client.post("/v1/embeddings", json={"input": ["a dog", "paris"]})).shape[0] == 2
            assert_response_error(await client.post("/v1/embeddings", content=b"x" * 2000), 413)
            assert_response_error(await client.get("/nowhere"), 404)
            assert (await client.get("/health")).status_code == 200
        assert asyncio.all_tasks() == {asyncio.current_task()}
    finally:
        await engine.close(timeout=10)


# -- soak (short) --------------------------------------------------------------------------------------------------


def test_soak_short(capsys) -> None:
    """benchmarks/soak_server.py for 20 s: every vector right, no unexpected 5xx, memory steady."""
    spec = importlib.util.spec_from_file_location("soak_server", REPO / "benchmarks" / "soak_server.py")
    assert spec is not None and spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak_server"] = soak
    spec.loader.exec_module(soak)
    code = soak.main(["--seconds", "20", "--clients", "16", "--probe-seconds", "5"])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert code == 0 and last.startswith("PASS"), out
