"""Generate notebooks/03_serving.ipynb (outputs stripped; nbmake executes it)."""

from pathlib import Path

import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
md("""# Serving with `poolkit serve`

`poolkit serve MODEL` exposes a pooling model over an OpenAI-compatible HTTP API (flags follow `vllm serve`):
`/v1/embeddings`, `/score`, `/rerank` (also `/v1/rerank`, `/v2/rerank` in the Jina/Cohere shapes), `/classify`,
`/pooling`, `/tokenize`, `/health` and Prometheus `/metrics`. Requests arriving together are merged into one model
batch. This notebook starts a server on a free port, calls it with the official `openai` client, with plain `httpx`
and through LangChain, reads its metrics, and stops it.

From a shell the same server is `poolkit serve default --port 8000` (`default` is the bundled all-MiniLM-L6-v2)."""),
md("""## Start the server

A small helper runs `poolkit serve` as a subprocess (with this kernel's Python, so the same environment), waits for
`/health`, and stops it with SIGTERM: the server then finishes the requests in flight and exits. If the start fails
the process is stopped before the error is raised, and `atexit` stops it if the kernel exits early (for example when
a later cell fails), so no server is left running."""),
code("""import atexit
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PoolkitServer:
    \"\"\"`poolkit serve ARGS` in a subprocess on a free port; `stop()` is idempotent and also runs at exit.\"\"\"

    def __init__(self, *args: str, startup_timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkdtemp(prefix="poolkit-serve-")) / "server.log"
        self._log = self.log_path.open("w")
        command = [sys.executable, "-m", "poolkit.entrypoints.cli", "serve", *args,
                   "--port", str(self.port), "--disable-access-log"]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        try:
            self._wait_healthy(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"poolkit serve exited with {self.proc.returncode}:\\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"poolkit serve not healthy after {timeout:.0f} s:\\n{self.log_tail()}")

    def log_tail(self, lines: int = 12) -> str:
        return "\\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)   # graceful: drain in-flight requests, then exit
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()
        return self.proc.returncode


start = time.perf_counter()
server = PoolkitServer("default")
print(f"{server.url} healthy after {time.perf_counter() - start:.1f} s")
print(json.dumps(httpx.get(f"{server.url}/v1/models").json()["data"][0], indent=1))"""),
md("""## The official `openai` client

Point `base_url` at `/v1`; the API key is not checked unless the server was started with `--api-key`.
The SDK asks for **base64** by default (smaller responses) and decodes it; `encoding_format="float"` returns JSON
numbers. Both give the same vectors, 384-d and L2-normalized."""),
code("""from openai import OpenAI

client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
model = client.models.list().data[0].id

passages = [
    "orjson is a fast, correct JSON library for Python.",
    "The json module in the standard library encodes and decodes JSON.",
    "FAISS finds nearest neighbours among millions of vectors.",
    "uvicorn is an ASGI web server implementation for Python.",
    "Rerankers reorder retrieved passages by relevance to the query.",
    "Pillow is the friendly fork of the Python Imaging Library.",
]
as_float = client.embeddings.create(model=model, input=passages, encoding_format="float")
as_base64 = client.embeddings.create(model=model, input=passages)
a = np.array([d.embedding for d in as_float.data])
b = np.array([d.embedding for d in as_base64.data])
print(a.shape, "norms", np.linalg.norm(a, axis=1).round(4), as_float.usage)
print("float vs base64, max |diff|:", float(np.abs(a - b).max()))
assert np.allclose(a, b, atol=1e-6)"""),
md("""Without the SDK, base64 is the little-endian float32 bytes of the vector:"""),
code("""import base64

raw = httpx.post(f"{server.url}/v1/embeddings", json={"input": passages[0], "encoding_format": "base64"}).json()
encoded = raw["data"][0]["embedding"]
print(encoded[:48] + "...")
print(np.allclose(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), a[0]))"""),
md("""## Errors

Every error has the reference shape `{"object": "error", "message", "type", "param", "code"}`, with the HTTP status
equal to `code`; the SDK raises the matching exception. all-MiniLM-L6-v2 is not Matryoshka-trained, so `dimensions`
is refused (as vLLM does). An over-long input is an error too, unless truncation is asked for."""),
code("""import openai

try:
    client.embeddings.create(model=model, input="hello", dimensions=128)
except openai.BadRequestError as err:
    print(err.status_code, json.dumps(err.body, indent=1))
    assert set(err.body) == {"object", "message", "type", "param", "code"} and err.body["code"] == 400

long_text = "retrieval " * 300
response = httpx.post(f"{server.url}/v1/embeddings", json={"input": long_text})
print(response.status_code, response.json()["message"])
cut = client.embeddings.create(model=model, input=long_text, extra_body={"truncate_prompt_tokens": -1})
print("with truncate_prompt_tokens=-1:", cut.usage)"""),
md("""## `/score` and `/rerank` with httpx

An embedding model scores by cosine similarity; a cross-encoder served the same way (`poolkit serve
BAAI/bge-reranker-base` on a machine with the model) scores each query-passage pair in one forward pass, with the
same request and response shapes."""),
code("""http = httpx.Client(base_url=server.url, timeout=60)
query = "How do I parse JSON quickly in Python?"

scores = http.post("/score", json={"model": model, "text_1": query, "text_2": passages}).json()
for item in scores["data"]:
    print(f"{item['score']:.3f}  {passages[item['index']]}")

ranked = http.post("/rerank", json={"model": model, "query": query, "documents": passages, "top_n": 2}).json()
print(json.dumps(ranked["results"], indent=1), ranked["usage"])"""),
md("""## LangChain through the server

`PoolkitEmbeddings` and `PoolkitReranker` take `base_url=` (the server root; a `/v1` suffix is accepted too) and then
call `/v1/embeddings` and `/rerank`, with retries on 429/5xx. Nothing is loaded in this process: the vector store
keeps the vectors, the server computes them."""),
code("""from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_poolkit import PoolkitEmbeddings, PoolkitFAISS, PoolkitReranker

embeddings = PoolkitEmbeddings(base_url=server.url)
reranker = PoolkitReranker(base_url=server.url, top_n=2)
print(embeddings)

store = PoolkitFAISS.from_texts(passages, embeddings, metadatas=[{"n": i} for i in range(len(passages))])
retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=store.as_retriever(search_kwargs={"k": 4}))
for doc in retriever.invoke(query):
    print(f"{doc.metadata['relevance_score']:.3f}  {doc.page_content}")
print("same vector as the openai client:", np.allclose(embeddings.embed_documents(passages[:1])[0], a[0], atol=1e-6))"""),
md("""## Concurrent requests are batched

Forty small requests sent at once are merged into a few model batches (the server waits up to `--batch-wait-ms` for
company, bounded by `--max-batch-tokens`). The Prometheus `/metrics` show it: `poolkit_batch_size` is a histogram of
sequences per model batch; its `_count` and `_sum` before and after the burst give the batches and sequences it took."""),
code("""import asyncio


def metric(text: str, name: str) -> float:
    \"\"\"Sum of one metric's samples over all its label sets, from the Prometheus text format.\"\"\"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in "{ ")


async def burst(n: int = 40) -> float:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as ac:
        start = time.perf_counter()
        responses = await asyncio.gather(
            *(ac.post("/v1/embeddings", json={"input": f"{passages[i % len(passages)]} (request {i})"}) for i in range(n))
        )
        assert all(r.status_code == 200 for r in responses)
        return time.perf_counter() - start


before = http.get("/metrics").text
seconds = await burst(40)
after = http.get("/metrics").text
batches = metric(after, "poolkit_batch_size_count") - metric(before, "poolkit_batch_size_count")
sequences = metric(after, "poolkit_batch_size_sum") - metric(before, "poolkit_batch_size_sum")
print(f"40 concurrent requests in {seconds:.2f} s: {sequences:.0f} sequences in {batches:.0f} model batch(es)")"""),
code("""for line in after.splitlines():
    if line.startswith(("poolkit_requests_total", "poolkit_prompt_tokens_total", "poolkit_batch_size_count",
                        "poolkit_batch_size_sum", "poolkit_request_latency_seconds_count")):
        print(line)"""),
md("""## Stop the server

SIGTERM (what a process manager or Kubernetes sends) makes the server stop accepting connections, drain what is
queued, and exit; the return code `-15` means "ended by SIGTERM". The `finally` makes sure it is stopped even if
closing the clients fails."""),
code("""try:
    http.close()
    embeddings.close()
    reranker.close()
    client.close()
finally:
    returncode = server.stop()
print("return code", returncode)
print(server.log_tail(6))
shutil.rmtree(server.log_path.parent, ignore_errors=True)"""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, Path(__file__).resolve().parents[1] / "03_serving.ipynb")
