"""Soak test of `poolkit serve` with a PASS/FAIL verdict: many clients, overload, a huge request, memory.

    .venv/bin/python benchmarks/soak_server.py --seconds 60

Starts `poolkit serve MODEL --dtype float32` on a free loopback port (or uses --url, with --pid for its
memory), then, bounded in time (about --seconds + 2 x --probe-seconds + the offline check):

1. soak: --clients async clients (64) for --seconds send 1-4 texts per request; each text carries a
   unique tag, so every returned vector can be matched to its text;
2. overload: a growing flood of large requests until the server sheds (429); one-text probes measure how
   fast a 429 comes back; the flood is then abandoned (its connections closed: the server drops its work);
3. huge request: a 2,048 x 5,000-character request, and one-text probes while it runs (the server tokenizes
   small requests on their own lane); then it is abandoned too;
4. check: every vector of the soak against the offline `LLM.embed` of the same text (float32 on both sides),
   after the server has stopped.

Prints the figures (p50/p99 latency, 429/503 counts, RSS start/peak/end of the server process, the 429
latency, the small requests' latency during the huge one) and one PASS/FAIL line: FAIL on any wrong or
missing vector, any 5xx but shedding (429s and queue 503s are shedding), any failed connection in the soak,
or an RSS at the end over 1.5 times the one after the soak phase (a leak: the start of the process is no
baseline, since the kernels and the allocator warm up under the first load).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from poolkit.entrypoints.testing import RemoteServer, parse_metric, process_rss

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "bench_corpus.jsonl"
ATOL = 1e-4  # batch composition differs between the server and the offline run; a mixed-up vector is ~0.1 off
HUGE_TEXTS, HUGE_CHARS = 2048, 5000
LEAK_FACTOR = 1.5  # end RSS over this times the RSS after the soak phase: FAIL
SERVER_ARGS = ("--dtype", "float32", "--max-request-chars", str(HUGE_TEXTS * HUGE_CHARS + 1000),
               "--disable-access-log")


def load_corpus(n: int = 4000) -> list[str]:
    with open(CORPUS, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh)]


def ms(seconds: list[float], q: float) -> str:
    if not seconds:
        return "-"
    return f"{1000 * float(np.percentile(seconds, q)):.1f} ms"


class RssSampler(threading.Thread):
    """The server's resident memory every 0.2 s: start, peak and the latest value."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.start_rss = self.peak = self.last = process_rss(pid) if pid else 0
        self.running = True

    def run(self) -> None:
        while self.running and self.pid:
            try:
                self.last = process_rss(self.pid)
            except (OSError, RuntimeError):
                return
            self.peak = max(self.peak, self.last)
            time.sleep(0.2)

    def stop(self) -> int:
        self.running = False
        if self.pid:
            self.last = process_rss(self.pid)
            self.peak = max(self.peak, self.last)
        return self.last


@dataclass
class Soak:
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # of the 200s
    results: list[tuple[list[str], np.ndarray]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


def shedding(response: httpx.Response) -> bool:
    """429, or a 503 of the queue (overloaded, or waited past its deadline)."""
    if response.status_code == 429:
        return True
    if response.status_code == 503:
        message = response.json().get("message", "")
        return "overloaded" in message or "waited more than" in message
    return False


def decode(response: httpx.Response) -> np.ndarray:
    data = response.json()["data"]
    if [d["index"] for d in data] != list(range(len(data))):
        raise ValueError("data out of order")
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])


async def soak(client: httpx.AsyncClient, clients: int, seconds: float, corpus: list[str]) -> Soak:
    out = Soak()
    deadline = time.perf_counter() + seconds

    async def one_client(cid: int) -> None:
        seq = 0
        while time.perf_counter() < deadline:
            n = 1 + (cid + seq) % 4
            texts = [f"[soak {cid}-{seq}-{j}] {corpus[(cid * 7919 + seq * 4 + j) % len(corpus)]}" for j in range(n)]
            seq += 1
            start = time.perf_counter()
            try:
                response = await client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64",
                                                                      "truncate_prompt_tokens": -1})
            except httpx.HTTPError as exc:
                out.problems.append(f"client {cid}: {type(exc).__name__}: {exc}")
                continue
            out.count(response.status_code)
            if response.status_code == 200:
                out.latencies.append(time.perf_counter() - start)
                try:
                    out.results.append((texts, decode(response)))
                except (ValueError, KeyError) as exc:
                    out.problems.append(f"bad 200 body: {exc}")
            elif shedding(response):
                await asyncio.sleep(min(1.0, float(response.headers.get("retry-after", "1"))))
            else:
                out.problems.append(f"status {response.status_code}: {response.text[:200]}")

    await asyncio.gather(*(one_client(c) for c in range(clients)))
    return out


async def in_progress(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return parse_metric(text, "poolkit_requests_in_progress", endpoint="/v1/embeddings")


async def wait_idle(client: httpx.AsyncClient, timeout: float = 120.0) -> bool:
    """Until no request is in progress and nothing is queued (abandoned work is dropped as the model reaches it)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        text = (await client.get("/metrics")).text
        if (parse_metric(text, "poolkit_requests_in_progress", endpoint="/v1/embeddings") == 0
                and parse_metric(text, "poolkit_queued_tokens") == 0):
            return True
        await asyncio.sleep(0.1)
    return False


async def probe(client: httpx.AsyncClient, text: str) -> tuple[int, float]:
    start = time.perf_counter()
    response = await client.post("/v1/embeddings", json={"input": text})
    return response.status_code, time.perf_counter() - start


async def abandon(tasks: list[asyncio.Task[Any]]) -> dict[int, int]:
    """Cancel what is still running (its connections close: the server cancels the requests); statuses of
    the requests that had finished."""
    for task in tasks:
        task.cancel()
    statuses: dict[int, int] = {}
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, httpx.Response):
            statuses[result.status_code] = statuses.get(result.status_code, 0) + 1
    return statuses


async def overload(url: str, headers: dict[str, str], corpus: list[str], seconds: float,
                   flooders: int = 32) -> dict[str, Any]:
    """``flooders`` clients send 256-text requests back to back (again at once after a 429) for ``seconds``;
    meanwhile, once the server sheds, a one-text probe every 0.1 s: how fast does a 429 come back?"""
    limits = httpx.Limits(max_connections=flooders + 64, max_keepalive_connections=flooders + 64)
    statuses: dict[int, int] = {}
    shedding_seen = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as client:

        # Bodies made once: the flood must load the server, not this process's event loop (it also times probes).
        bodies = [json.dumps({"input": [f"[flood {i}-{j}] {corpus[(i * 256 + j) % len(corpus)]}" for j in range(256)],
                              "encoding_format": "base64", "truncate_prompt_tokens": -1}).encode()
                  for i in range(8)]
        json_type = {"Content-Type": "application/json"}

        async def flood(fid: int) -> None:
            seq = 0
            while True:
                seq += 1
                response = await client.post("/v1/embeddings", content=bodies[(fid + seq) % len(bodies)],
                                             headers=json_type)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if shedding(response):
                    shedding_seen.set()
                    await asyncio.sleep(0.1)

        flooding = [asyncio.create_task(flood(i)) for i in range(flooders)]
        deadline = time.perf_counter() + seconds
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(shedding_seen.wait(), seconds)
        probes: list[asyncio.Task[tuple[int, float]]] = []
        while shedding_seen.is_set() and time.perf_counter() < deadline:
            probes.append(asyncio.create_task(probe(client, f"probe {len(probes)} under overload")))
            await asyncio.sleep(0.1)
        await abandon(flooding)
        results = [r for r in await asyncio.gather(*probes, return_exceptions=True) if isinstance(r, tuple)]
        idle = await wait_idle(client)
    return {"flooders": flooders, "flood_statuses": dict(sorted(statuses.items())), "probes": len(results),
            "shed": [s for code, s in results if code == 429], "admitted": [s for code, s in results if code == 200],
            "probe_statuses": sorted({code for code, _ in results}), "idle": idle}


async def huge(url: str, headers: dict[str, str], corpus: list[str], seconds: float) -> dict[str, Any]:
    """A 2,048 x 5,000-character request; one-text probes while it runs; then it is abandoned."""
    joined = " ".join(corpus)
    texts = [joined[(i * 997) % (len(joined) - HUGE_CHARS):][:HUGE_CHARS] for i in range(HUGE_TEXTS)]
    body = json.dumps({"input": texts, "encoding_format": "base64", "truncate_prompt_tokens": -1}).encode()
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as big_client, \
            httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
        start = time.perf_counter()
        big = asyncio.create_task(big_client.post("/v1/embeddings", content=body,
                                                  headers={"Content-Type": "application/json"}))
        while await in_progress(client) < 1 and not big.done():
            await asyncio.sleep(0.01)
        during: list[tuple[int, float]] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline and not big.done() and len(during) < 50:
            status, latency = await probe(client, f"small request {len(during)} next to a huge one")
            if not big.done():
                during.append((status, latency))
            await asyncio.sleep(0.2)
        finished = big.done()
        big_status = big.result().status_code if finished else None
        elapsed = time.perf_counter() - start
        await abandon([big])
        idle = await wait_idle(client)
    return {"during": during, "finished": finished, "big_status": big_status, "elapsed": elapsed, "idle": idle,
            "body_mb": len(body) / 1e6}


def verify(model: str, results: list[tuple[list[str], np.ndarray]]) -> tuple[int, int, float]:
    """(wrong, missing, max difference) of the soak's vectors against the offline engine."""
    from poolkit import LLM

    texts = [t for batch, _ in results for t in batch]
    if not texts:
        return 0, 0, 0.0
    llm = LLM(model, dtype="float32")
    outputs = llm.embed(texts, use_tqdm=False, truncate_prompt_tokens=-1)
    expected = {t: np.asarray(o.outputs.embedding, dtype=np.float32) for t, o in zip(texts, outputs)}
    wrong = missing = 0
    worst = 0.0
    for batch, got in results:
        if got.shape[0] != len(batch):
            missing += abs(len(batch) - got.shape[0])
        for text, vector in zip(batch, got):
            diff = float(np.max(np.abs(vector - expected[text])))
            worst = max(worst, diff)
            wrong += diff > ATOL
    return wrong, missing, worst


def run(args: argparse.Namespace) -> bool:
    corpus = load_corpus()
    server = None
    began = time.perf_counter()
    if args.url:
        url, headers, pid = args.url.rstrip("/"), ({"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}), args.pid
    else:
        server = RemoteServer(args.model, [*SERVER_ARGS, *args.server_arg], api_key=args.api_key)
        server.__enter__()
        url, headers, pid = server.url, server.headers, server.proc.pid if server.proc else None
    startup = time.perf_counter() - began
    rss = RssSampler(pid)
    rss.start()
    try:
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

        after: dict[str, int] = {}  # RSS after each phase

        async def load() -> tuple[Soak, dict[str, Any], dict[str, Any], str]:
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as client:
                result = await soak(client, args.clients, args.seconds, corpus)
                after["soak"] = rss.last
                await wait_idle(client)
            over = await overload(url, headers, corpus, args.probe_seconds)
            after["overload"] = rss.last
            big = await huge(url, headers, corpus, args.probe_seconds)
            after["huge"] = rss.last
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
                metrics = (await client.get("/metrics")).text
            return result, over, big, metrics

        wall = time.perf_counter()
        result, over, big, metrics = asyncio.run(load())
        wall = time.perf_counter() - wall
        end_rss = rss.stop()
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    checked = time.perf_counter()
    wrong, missing, worst = verify(args.model, result.results)
    checked = time.perf_counter() - checked

    vectors = sum(len(batch) for batch, _ in result.results)
    requests = sum(result.statuses.values())
    shed = result.statuses.get(429, 0) + result.statuses.get(503, 0)
    print(f"soak: {args.clients} clients x {args.seconds:g} s: {requests} requests "
          f"({requests / args.seconds:.0f}/s; statuses {dict(sorted(result.statuses.items()))}), {vectors} vectors "
          f"checked: {wrong} wrong, {missing} missing (max |diff| {worst:.1e}); latency p50 {ms(result.latencies, 50)}"
          f", p99 {ms(result.latencies, 99)}; 429/503: {result.statuses.get(429, 0)}/{result.statuses.get(503, 0)}")
    if pid:
        phases = ", ".join(f"{name} {value / 2**20:.0f}" for name, value in after.items())
        print(f"rss: start {rss.start_rss / 2**20:.0f} MiB, peak {rss.peak / 2**20:.0f} MiB, "
              f"end {end_rss / 2**20:.0f} MiB (after each phase: {phases} MiB)")
    print(f"overload: {over['flooders']} clients flooding 256-text requests (statuses {over['flood_statuses']}); "
          f"{over['probes']} one-text probes once shedding: {len(over['shed'])} got 429 in p50 {ms(over['shed'], 50)}"
          f" (p99 {ms(over['shed'], 99)}), {len(over['admitted'])} admitted and answered in p50 "
          f"{ms(over['admitted'], 50)}")
    during = big["during"]
    served = [s for code, s in during if code == 200]
    refused = [s for code, s in during if code != 200]
    outcome = (f"finished with {big['big_status']}" if big["finished"] else "abandoned") + f" after {big['elapsed']:.1f} s"
    print(f"huge request ({HUGE_TEXTS} x {HUGE_CHARS} chars, {big['body_mb']:.1f} MB) {outcome}; "
          f"{len(during)} one-text requests meanwhile: {len(served)} answered in p50 {ms(served, 50)} "
          f"(max {ms(served, 100)}), {len(refused)} shed in p50 {ms(refused, 50)}")
    print(f"server: skipped tokens cancelled {parse_metric(metrics, 'poolkit_skipped_tokens_total', reason='cancelled'):.0f}"
          f", expired {parse_metric(metrics, 'poolkit_skipped_tokens_total', reason='expired'):.0f}; "
          f"{parse_metric(metrics, 'poolkit_requests_total', endpoint='/v1/embeddings', method='POST', status='499'):.0f}"
          f" requests closed by their client (499); time: start {startup:.0f} s, load {wall:.0f} s, offline check "
          f"{checked:.0f} s")

    failures = list(result.problems[:5])
    if len(result.problems) > 5:
        failures.append(f"... {len(result.problems) - 5} more")
    if wrong or missing:
        failures.append(f"{wrong} wrong and {missing} missing vectors")
    if not vectors:
        failures.append("no vector came back")
    unexpected = {code: n for code, n in result.statuses.items() if code >= 500 and code != 503}
    if unexpected:
        failures.append(f"server errors {unexpected}")
    other = [code for code, _ in during if code not in (200, 429, 503)]
    if other:
        failures.append(f"small requests next to the huge one got {sorted(set(other))}")
    if not (over["idle"] and big["idle"]):
        failures.append("abandoned requests still in progress on the server")
    # A leak, not a warm-up: the server's RSS after the soak phase (oneDNN's kernels and the allocator's
    # arenas warmed up) is the baseline; the overload and huge phases must not grow it by half again.
    warm = after.get("soak", rss.start_rss)
    if pid and end_rss > LEAK_FACTOR * warm:
        failures.append(f"RSS grew from {warm / 2**20:.0f} MiB after the soak phase to {end_rss / 2**20:.0f} MiB")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return False
    print(f"PASS: {vectors} vectors right ({shed} soak requests shed), no unexpected 5xx, RSS end/warm "
          f"{end_rss / max(warm, 1):.2f}" if pid else f"PASS: {vectors} vectors right, {shed} shed")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the soak phase (default 60)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--probe-seconds", type=float, default=15.0,
                        help="longest each of the overload and huge-request phases runs (default 15)")
    parser.add_argument("--model", default="default", help="served model, also used for the offline check")
    parser.add_argument("--url", help="use this running server (loopback) instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory")
    parser.add_argument("--api-key")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra flag for the started server (repeat; e.g. --server-arg=--max-queue-wait=2)")
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address")
    return 0 if run(args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
