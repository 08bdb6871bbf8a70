"""Load test of `poolkit serve`: C concurrent clients × N texts per request, against the offline engine.

    .venv/bin/python benchmarks/bench_server.py --clients 16 --texts-per-request 16 --num-texts 1500

Starts `poolkit serve MODEL` on a free loopback port (or uses --url), sends the first K texts of
../shared/data/bench_corpus.jsonl once (K / N requests shared by C clients, with
`truncate_prompt_tokens=-1`; the offline run truncates the same way), then stops the server and
times `LLM.embed` on the same texts in this process. Prints texts/s, p50/p99 latency and errors
for each, and the ratio.

A peer runs the same load side by side: `--peer infinity --infinity-bin PATH/infinity_emb` starts
Infinity on the same model (loopback, `DO_NOT_TRACK=1`) after poolkit's server has stopped, or
`--peer-url URL` uses any running OpenAI-compatible /embeddings server. Infinity must live in its
own venv (it pins other torch/transformers versions), e.g.

    python3 -m venv /tmp/infvenv && /tmp/infvenv/bin/pip install torch==2.13.0 \
        "infinity-emb[server,torch]==0.0.78"

On a shared machine, check `uptime` first: the load generator itself shares the CPU with the server,
so it is aiohttp by default (~2% of a core at 16 x 16 where httpx, `--client httpx`, took ~8%).
`--in-process` also runs the load on the server's batching engine in this process, without HTTP: the
ratios then split the gap to offline into batching (in-process / offline) and HTTP (server / in-process).
`--model-workers N` sets the server's model workers (and the in-process engine's); `--model-workers 1` is the
single worker of earlier sessions' figures.
`--cpu` prints where the CPU went in each round: the server's event-loop thread, its other threads
(model worker, OpenMP team, tokenizer lanes), the load generator, and the offline run's own share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "bench_corpus.jsonl"


def load_texts(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh)]


class LoadClient(Protocol):
    """One keep-alive connection pool of the load generator: POST a JSON body, get (status, body bytes)."""

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]: ...


@contextlib.asynccontextmanager
async def load_client(kind: str, url: str, headers: dict, clients: int) -> AsyncIterator[LoadClient]:
    """A pool of ``clients`` connections to ``url``.

    The load generator shares the machine's cores with the server it loads (2 on the project's VM), so its
    own CPU shows up as lost server throughput. aiohttp (C HTTP parser) took ~2% of a core at 16 x 16 where
    httpx took ~8% (``--cpu``); ``--client httpx`` keeps the older figure comparable.
    """
    headers = {"Content-Type": "application/json", **headers}
    if kind == "aiohttp":
        import aiohttp

        class AiohttpClient:
            def __init__(self, session: aiohttp.ClientSession) -> None:
                self.session = session

            async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
                async with self.session.post(path, data=body) as response:
                    return response.status, await response.read()

        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(url, headers=headers, connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=300)) as session:
            yield AiohttpClient(session)
        return
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as client:

        class HttpxClient:
            async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
                response = await client.post(path, content=body)
                return response.status_code, response.content

        yield HttpxClient()


Send = Callable[[list[str]], Awaitable["str | None"]]  # one request of these texts → an error text, or None


async def closed_loop(send: Send, texts: list[str], clients: int, per_request: int, max_seconds: float,
                      warmup: int) -> dict:
    """``clients`` callers, each sending its next request of ``per_request`` texts once the last one is answered,
    until the texts are sent or ``max_seconds`` pass. The first ``warmup`` requests go first, untimed."""
    batches = [texts[i: i + per_request] for i in range(0, len(texts), per_request)]
    for batch in batches[:warmup]:
        error = await send(batch)
        if error is not None:
            raise RuntimeError(f"warm-up request failed: {error}")
    latencies: list[float] = []
    errors: list[str] = []
    sent_texts = 0
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    deadline = time.perf_counter() + max_seconds

    async def caller() -> None:
        nonlocal sent_texts
        while not queue.empty() and time.perf_counter() < deadline:
            batch = queue.get_nowait()
            start = time.perf_counter()
            try:
                error = await send(batch)
            except Exception as exc:  # connection errors of either client: counted, the load goes on
                error = repr(exc)
            if error is None:
                sent_texts += len(batch)
            else:
                errors.append(error)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"texts": sent_texts, "requests": len(latencies), "seconds": elapsed, "texts_per_s": sent_texts / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "errors": len(errors), "first_errors": errors[:3]}


async def run_load(url: str, path: str, texts: list[str], clients: int, per_request: int, model: str | None,
                   extra: dict, headers: dict, max_seconds: float, warmup: int, client_kind: str = "aiohttp") -> dict:
    """The closed-loop load on an OpenAI-compatible embeddings endpoint (base64 vectors)."""
    async with load_client(client_kind, url, headers, clients) as client:

        async def send(batch: list[str]) -> str | None:
            payload = {"input": batch, "encoding_format": "base64", **extra}
            if model:
                payload["model"] = model
            status, content = await client.post(path, json.dumps(payload).encode())
            if status != 200:
                return f"{status}: {content[:200].decode(errors='replace')}"
            if len(json.loads(content)["data"]) != len(batch):
                return "wrong number of embeddings"
            return None

        return await closed_loop(send, texts, clients, per_request, max_seconds, warmup)


async def run_in_process(llm: Any, texts: list[str], clients: int, per_request: int, max_seconds: float,
                         warmup: int, model_workers: int | None = None) -> dict:
    """The same load on the server's batching engine (``AsyncPoolingEngine``, default batching settings but
    ``model_workers``, None: the default) over ``llm``, called from this process's event loop: the server without
    HTTP, its event loop and its clients."""
    from poolkit.async_engine import AsyncPoolingEngine

    engine = AsyncPoolingEngine(llm, model_workers=model_workers)
    engine.start()
    try:

        async def send(batch: list[str]) -> str | None:
            outputs = await engine.process("embed", batch, truncate_prompt_tokens=-1)
            return None if len(outputs) == len(batch) else "wrong number of embeddings"

        return await closed_loop(send, texts, clients, per_request, max_seconds, warmup)
    finally:
        await engine.close()


def scrape_batches(url: str, headers: dict) -> dict:
    text = httpx.get(url + "/metrics", headers=headers, timeout=30).text

    def value(name: str) -> float:
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(match.group(1)) if match else float("nan")

    count = value("poolkit_batch_size_count")
    return {"batches": count, "mean_batch_seqs": value("poolkit_batch_size_sum") / count,
            "mean_batch_tokens": value("poolkit_batch_tokens_sum") / count,
            "engine_seconds": value("poolkit_batch_execute_seconds_sum")}


def start_infinity(binary: str, model_path: str, name: str, port: int) -> subprocess.Popen:
    log = tempfile.NamedTemporaryFile(prefix="infinity-", suffix=".log", delete=False)
    env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([binary, "v2", "--model-id", model_path, "--served-model-name", name, "--host",
                             "127.0.0.1", "--port", str(port), "--engine", "torch", "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"infinity exited: {open(log.name).read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError("infinity did not start")


class Offline:
    """``LLM.embed`` on the same texts, truncated the same way, in this process."""

    def __init__(self, model: str) -> None:
        from poolkit import LLM

        self.llm = LLM(None if model == "default" else model)

    def run(self, texts: list[str]) -> dict:
        self.llm.embed(texts[:64], truncate_prompt_tokens=-1, use_tqdm=False)  # warm-up
        start, cpu = time.perf_counter(), os.times()
        self.llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
        seconds, after = time.perf_counter() - start, os.times()
        cpu_seconds = after.user - cpu.user + after.system - cpu.system
        return {"texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / seconds,
                "cpu_share": cpu_seconds / seconds}


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process ``pid``, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


class CpuShares:
    """Where the CPU went during a load round: the server's event-loop (main) thread, its other threads (the
    model worker with its OpenMP team, tokenizer lanes), and this process (the load generator)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.summary = ""

    def __enter__(self) -> CpuShares:
        self.start, self.threads, self.own = time.perf_counter(), thread_cpu(self.pid), os.times()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.start
        after, own = thread_cpu(self.pid), os.times()
        used = {tid: after[tid] - self.threads.get(tid, 0.0) for tid in after}
        main = used.pop(self.pid, 0.0)
        client = own.user - self.own.user + own.system - self.own.system
        self.summary = (f"{'':<10} CPU, % of one core: server event loop {main / wall:.0%}, server other threads "
                        f"{sum(used.values()) / wall:.0%}, load generator {client / wall:.0%} "
                        f"(of {os.cpu_count()} cores)")


def report(name: str, r: dict) -> None:
    print(f"{name:<10} {r['texts_per_s']:8.1f} texts/s  {r['texts']} texts in {r['seconds']:.2f} s  "
          f"p50 {r['p50_ms']:.0f} ms  p99 {r['p99_ms']:.0f} ms  errors {r['errors']}"
          + (f"  e.g. {r['first_errors'][0]}" if r["errors"] else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="poolkit serve MODEL and the offline LLM (default: %(default)s)")
    p.add_argument("--url", help="Use a running poolkit server instead of starting one")
    p.add_argument("--api-key")
    p.add_argument("--server-args", default="", help="Extra flags for poolkit serve, e.g. '--batch-wait-ms 5'")
    p.add_argument("--model-workers", type=int,
                   help="poolkit serve --model-workers, and the same for the --in-process engine (default: the "
                        "server's: 2 on a CPU)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="Environment of the started server only, e.g. OMP_WAIT_POLICY=passive (repeatable). Not "
                        "OMP_WAIT_POLICY=active: the idle server's spinning threads slow the offline run beside it")
    p.add_argument("--cpu", action="store_true",
                   help="Also print where the CPU went in each poolkit round (per-thread /proc counters; needs the "
                        "server's pid: a started server, or --pid with --url)")
    p.add_argument("--pid", type=int, help="With --url and --cpu: the server's process id")
    p.add_argument("--clients", "-c", type=int, default=16)
    p.add_argument("--texts-per-request", "-n", type=int, default=16)
    p.add_argument("--num-texts", "-k", type=int, default=1500, help="First K corpus texts (default: %(default)s)")
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--warmup", type=int, default=4, help="Untimed requests first (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=600, help="Stop sending after this long")
    p.add_argument("--rounds", type=int, default=1, help="Interleaved rounds of server, peer and offline runs")
    p.add_argument("--no-offline", action="store_true")
    p.add_argument("--peer", choices=["infinity"], help="Start this peer server on the same model and load it too")
    p.add_argument("--infinity-bin", default="/tmp/infvenv/bin/infinity_emb", help="(default: %(default)s)")
    p.add_argument("--peer-url", help="Also load a running OpenAI-compatible peer, e.g. http://127.0.0.1:7997")
    p.add_argument("--peer-path", default="/embeddings")
    p.add_argument("--peer-model", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--peer-body", type=json.loads, default={}, metavar="JSON",
                   help="Extra fields of the peer's requests, e.g. '{\"truncate_prompt_tokens\": -1}' for a second "
                        "poolkit server (Infinity truncates to the model's limit by itself)")
    p.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                   help="The load generator's HTTP client (default: %(default)s, the lighter on the shared CPU)")
    p.add_argument("--in-process", action="store_true",
                   help="Also run the load on the server's batching engine in this process, without HTTP (the "
                        "offline LLM, async callers): what the HTTP layer and its clients cost, in the same run")
    p.add_argument("--json", type=Path, help="Also write the results here")
    args = p.parse_args()
    if args.in_process and args.no_offline:
        p.error("--in-process runs on the offline engine: drop --no-offline")

    texts = load_texts(args.corpus, args.num_texts)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    print(f"{len(texts)} texts, {args.clients} clients x {args.texts_per_request} texts/request, load generator: "
          f"{args.client}", flush=True)
    results: dict = {"config": vars(args) | {"corpus": str(args.corpus), "json": None}}

    stack = contextlib.ExitStack()
    url = args.url
    if url is None:
        from poolkit.entrypoints.testing import RemoteServer

        workers = [] if args.model_workers is None else ["--model-workers", str(args.model_workers)]
        server = RemoteServer(args.model, ["--disable-access-log", *workers, *shlex.split(args.server_args)],
                              api_key=args.api_key,
                              env=dict(item.split("=", 1) for item in args.server_env))
        url = stack.enter_context(server).url
        args.pid = server.proc.pid if server.proc is not None else None
    peer_url = args.peer_url
    if args.peer == "infinity" and not peer_url:
        from poolkit.entrypoints.testing import free_port
        from poolkit.loader import resolve_model_path

        port = free_port()
        proc = start_infinity(args.infinity_bin, resolve_model_path(None if args.model == "default" else args.model),
                              args.peer_model, port)
        stack.callback(lambda: (proc.terminate(), proc.wait(60)))
        peer_url = f"http://127.0.0.1:{port}"
    offline = None if args.no_offline else Offline(args.model)

    # Rounds interleave the systems so that load from other processes hits them alike.
    rounds: list[dict] = []
    with stack:
        for r in range(args.rounds):
            row: dict = {}
            shares = CpuShares(args.pid) if args.cpu and args.pid else None
            with shares or contextlib.nullcontext():
                row["poolkit"] = asyncio.run(run_load(url, "/v1/embeddings", texts, args.clients,
                                                      args.texts_per_request, None, {"truncate_prompt_tokens": -1},
                                                      headers, args.max_seconds, args.warmup, args.client))
            report("poolkit", row["poolkit"])
            if shares is not None:
                print(shares.summary, flush=True)
            if peer_url:
                row["peer"] = asyncio.run(run_load(peer_url, args.peer_path, texts, args.clients,
                                                   args.texts_per_request, args.peer_model, args.peer_body, {},
                                                   args.max_seconds, args.warmup, args.client))
                report(args.peer or "peer", row["peer"])
            if args.in_process and offline is not None:
                row["in_process"] = asyncio.run(run_in_process(offline.llm, texts, args.clients, args.texts_per_request,
                                                               args.max_seconds, args.warmup, args.model_workers))
                report("in-process", row["in_process"])
            if offline is not None:
                row["offline"] = offline.run(texts)
                o = row["offline"]
                print(f"{'offline':<10} {o['texts_per_s']:8.1f} texts/s  LLM.embed on the same {o['texts']} texts "
                      f"in {o['seconds']:.2f} s", flush=True)
                if args.cpu:
                    print(f"{'':<10} CPU, % of one core: {o['cpu_share']:.0%}", flush=True)
            rounds.append(row)
        batching = scrape_batches(url, headers)
    results["rounds"] = rounds
    results["server_batching"] = batching
    print(f"server batching: {batching['batches']:.0f} engine calls, mean {batching['mean_batch_seqs']:.1f} texts / "
          f"{batching['mean_batch_tokens']:.0f} tokens each; engine busy {batching['engine_seconds']:.1f} s in all")
    comparisons = [("poolkit", "offline", "poolkit server / offline"),
                   ("poolkit", "peer", f"poolkit server / {args.peer or 'peer'}"),
                   ("in_process", "offline", "in-process engine / offline"),
                   ("poolkit", "in_process", "poolkit server / in-process engine")]
    for mine, other, label in comparisons:
        ratios = [row[mine]["texts_per_s"] / row[other]["texts_per_s"] for row in rounds if mine in row and other in row]
        if ratios:
            print(f"ratio {label}: " + ", ".join(f"{x:.2f}x" for x in ratios)
                  + (f" (median {statistics.median(ratios):.2f}x)" if len(ratios) > 1 else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 1 if any(row["poolkit"]["errors"] for row in rounds) else 0


if __name__ == "__main__":
    sys.exit(main())
