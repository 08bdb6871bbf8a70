"""`poolkit serve default` as a real process: the official openai client, every endpoint over httpx,
64 concurrent clients, bad inputs. Results must equal the offline engine's (DESIGN.md §5)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from poolkit import LLM
from poolkit.entrypoints.testing import RemoteServer, wait_until
from poolkit.params import matryoshka_unsupported

NAME = "sentence-transformers/all-MiniLM-L6-v2"
ALIAS = "minilm"
KEY = "sk-poolkit-test"
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bench_corpus.jsonl"
TEXTS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "I like green apples.",
         "Vector search finds the nearest neighbours of a query."]
ATOL = 2e-5  # batch composition differs between server and offline runs
# float32 on both sides: bf16 (the default on CPUs with AMX) is not batch-invariant to ATOL.
FLOAT32 = ("--dtype", "float32")


def corpus(n: int) -> list[str]:
    with open(CORPUS, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh)]


@pytest.fixture(scope="module")
def server():
    with RemoteServer("default", ["--served-model-name", NAME, ALIAS, "--max-input-chars", "20000", *FLOAT32],
                      api_key=KEY, gated=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(dtype="float32")


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)


def offline_embed(llm: LLM, texts, **kw) -> np.ndarray:
    return np.array([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False, **kw)], dtype=np.float32)


def assert_error(response: httpx.Response, status: int, message: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"object", "message", "type", "param", "code"}, body
    assert body["object"] == "error" and body["code"] == status and body["param"] is None
    if status == 400:
        assert body["type"] == "BadRequestError"
    if message is not None:
        assert re.search(message, body["message"]), body["message"]
    return body


# -- the official openai client ----------------------------------------------------------------------


def test_openai_embeddings_base64_and_float_agree_with_offline(client, llm) -> None:
    default = client.embeddings.create(model=NAME, input=TEXTS)  # the client asks for base64
    floats = client.embeddings.create(model=ALIAS, input=TEXTS, encoding_format="float")
    a = np.array([d.embedding for d in default.data], dtype=np.float32)
    b = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert a.shape == (4, 384)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, offline_embed(llm, TEXTS), atol=ATOL)
    assert [d.index for d in default.data] == [0, 1, 2, 3]
    assert default.model == NAME and floats.model == ALIAS
    tokens = sum(len(o.prompt_token_ids) for o in llm.embed(TEXTS, use_tqdm=False))
    assert default.usage.prompt_tokens == default.usage.total_tokens == tokens


def test_openai_dimensions_on_non_matryoshka_model(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=NAME, input="hello", dimensions=128)
    assert info.value.status_code == 400
    assert info.value.body["message"] == matryoshka_unsupported(NAME)
    assert info.value.body["type"] == "BadRequestError"


def test_openai_models_and_unknown_model(client) -> None:
    assert [m.id for m in client.models.list().data] == [NAME, ALIAS]
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert info.value.body["message"] == "The model `text-embedding-3-small` does not exist."
    assert info.value.body["code"] == 404


def test_openai_wrong_key(server) -> None:
    bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=NAME, input="hello")


# -- every endpoint over httpx ---------------------------------------------------------------------------


def test_embeddings_raw_shape_and_base64_layout(http, llm) -> None:
    r = http.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "base64", "user": "u1"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert re.fullmatch(r"embd-[0-9a-f]{32}", body["id"]) and body["object"] == "list"
    assert isinstance(body["created"], int) and body["model"] == NAME
    (item,) = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, offline_embed(llm, ["hello world"])[0], atol=ATOL)
    r = http.post("/v1/embeddings", json={"input": "hello world"})  # float by default: exact offline floats
    assert r.json()["data"][0]["embedding"] == pytest.approx(vector.tolist(), abs=ATOL)


def test_embeddings_token_ids_equal_text(http) -> None:
    ids = http.post("/tokenize", json={"prompt": TEXTS[0]}).json()["tokens"]
    by_text = http.post("/v1/embeddings", json={"input": TEXTS[0]}).json()["data"][0]["embedding"]
    single = http.post("/v1/embeddings", json={"input": ids}).json()
    nested = http.post("/v1/embeddings", json={"input": [ids, ids[:3]]}).json()
    assert single["data"][0]["embedding"] == pytest.approx(by_text, abs=ATOL)
    assert nested["data"][0]["embedding"] == pytest.approx(by_text, abs=ATOL)
    assert len(nested["data"]) == 2 and nested["usage"]["prompt_tokens"] == len(ids) + 3


def test_embeddings_truncation_and_long_input(http, llm) -> None:
    long_text = " ".join(["word"] * 400)
    assert_error(http.post("/v1/embeddings", json={"input": long_text}), 400,
                 r"has 402 tokens, more than the model's maximum of 256 tokens.*truncate_prompt_tokens")
    r = http.post("/v1/embeddings", json={"input": long_text, "truncate_prompt_tokens": -1})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256
    expected = offline_embed(llm, [long_text], truncate_prompt_tokens=-1)[0]
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], expected, atol=ATOL)


def test_score_and_rerank_use_cosine_like_offline(http, llm) -> None:
    query, docs = "What is the capital of France?", TEXTS
    offline = [o.outputs.score for o in llm.score(query, docs, use_tqdm=False)]
    for path in ("/score", "/v1/score"):
        body = http.post(path, json={"model": ALIAS, "text_1": query, "text_2": docs}).json()
        assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
        assert [d["object"] for d in body["data"]] == ["score"] * 4
        assert [d["score"] for d in body["data"]] == pytest.approx(offline, abs=ATOL)
    zipped = http.post("/score", json={"text_1": docs[:2], "text_2": docs[2:]}).json()
    assert [d["score"] for d in zipped["data"]] == pytest.approx(
        [o.outputs.score for o in llm.score(docs[:2], docs[2:], use_tqdm=False)], abs=ATOL)
    assert_error(http.post("/score", json={"text_1": docs[:2], "text_2": docs[:3]}), 400, "1:1, 1:N or N:N")

    order = sorted(range(4), key=lambda i: -offline[i])
    body = http.post("/rerank", json={"query": query, "documents": [docs[0], {"text": docs[1]}, *docs[2:]],
                                      "top_n": 2}).json()
    assert set(body) == {"id", "model", "usage", "results"}
    assert [r["index"] for r in body["results"]] == order[:2]
    assert [r["document"]["text"] for r in body["results"]] == [docs[i] for i in order[:2]]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([offline[i] for i in order[:2]], abs=ATOL)
    body = http.post("/v1/rerank", json={"query": query, "documents": docs, "return_documents": False}).json()
    assert [r["index"] for r in body["results"]] == order and "document" not in body["results"][0]
    v2 = http.post("/v2/rerank", json={"model": NAME, "query": query, "documents": docs, "top_n": 3}).json()
    assert [r["index"] for r in v2["results"]] == order[:3] and "document" not in v2["results"][0]
    assert v2["meta"]["api_version"]["version"] == "2"


def test_pooling_tokenize_models_health_metrics(http, server, llm) -> None:
    body = http.post("/pooling", json={"input": TEXTS[:2]}).json()
    assert [d["object"] for d in body["data"]] == ["pooling", "pooling"]
    expected = [o.outputs.data.numpy() for o in llm.encode(TEXTS[:2], use_tqdm=False)]
    for got, want in zip(body["data"], expected):
        np.testing.assert_allclose(np.array(got["data"]), want, atol=ATOL)
    tok = http.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert tok == {"tokens": llm.tokenizer("Hello world")["input_ids"], "count": 4, "max_model_len": 256}
    assert http.post("/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"] == "[CLS] hello world [SEP]"
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [NAME, ALIAS]
    assert httpx.get(server.url_for("/health")).status_code == 200  # no key needed
    assert_error(httpx.get(server.url_for("/metrics")), 401)
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
    for name in ("poolkit_requests_total", "poolkit_request_latency_seconds_bucket", "poolkit_queue_wait_seconds",
                 "poolkit_batch_tokens_bucket", "poolkit_batch_size", "poolkit_queued_tokens"):
        assert name in metrics.text
    assert http.get("/openapi.json").json()["paths"].keys() >= {"/v1/embeddings", "/score", "/v2/rerank"}
    assert "/classify" not in http.get("/openapi.json").json()["paths"]  # not this model's task
    assert_error(http.post("/classify", json={"input": "x"}), 400, r"does not support the Classification API")


# -- concurrency -------------------------------------------------------------------------------------------


def _batches(http: httpx.Client) -> float:
    match = re.search(r"^poolkit_batch_size_count (\S+)$", http.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def test_64_concurrent_clients_get_their_own_answers(server, http, llm) -> None:
    texts = [t for t in corpus(400) if len(t) < 200][:150] + [t for t in corpus(400) if len(t) > 1500][:4]
    # 64 clients with different inputs: single strings, lists of 2-4 texts, token ids, over-long texts.
    requests: list = [texts[i] if i % 4 == 0 else texts[2 * i: 2 * i + 1 + i % 4] for i in range(64)]
    requests[5] = llm.tokenizer(texts[140])["input_ids"][:200]
    requests[9] = texts[-4:]
    flat = [[r] if isinstance(r, str) or isinstance(r[0], int) else r for r in requests]
    unique = list({json.dumps(p): p for r in flat for p in r}.values())
    vectors = dict(zip((json.dumps(p) for p in unique), offline_embed(llm, unique, truncate_prompt_tokens=-1)))
    expected = [np.stack([vectors[json.dumps(p)] for p in r]) for r in flat]
    before = _batches(http)

    async def one(client: httpx.AsyncClient, i: int):
        fmt = "base64" if i % 2 else "float"
        r = await client.post("/v1/embeddings", json={"input": requests[i], "encoding_format": fmt,
                                                      "truncate_prompt_tokens": -1})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        if fmt == "base64":
            return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
        return np.array([d["embedding"] for d in data], dtype=np.float32)

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120, limits=limits) as c:
            # Hold the model until all 64 requests are inside the server, so that merging is by construction.
            server.gate.hold()
            try:
                tasks = [asyncio.create_task(one(c, i)) for i in range(64)]
                await asyncio.to_thread(wait_until, lambda: server.requests_in_progress("/v1/embeddings") == 64, 60,
                                        "64 requests in progress")
            finally:
                server.gate.release()
            return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    for got, want in zip(results, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ATOL)
    assert _batches(http) - before < 64, "requests were not merged into shared batches"


# -- bad inputs: 4xx in the reference shape, and the server keeps serving ---------------------------------------

BAD = [
    ("empty string", "/v1/embeddings", {"input": ""}, 400, "empty string"),
    ("empty string in list", "/v1/embeddings", {"input": ["ok", ""]}, 400, "item 1 is an empty string"),
    ("empty list", "/v1/embeddings", {"input": []}, 400, "must not be empty"),
    ("empty token list", "/v1/embeddings", {"input": [[]]}, 400, "empty list of token ids"),
    ("number", "/v1/embeddings", {"input": 42}, 400, "input"),
    ("null item", "/v1/embeddings", {"input": ["a", None]}, 400, "input"),
    ("mixed item types", "/v1/embeddings", {"input": ["a", 1]}, 400, "input"),
    ("bool token", "/v1/embeddings", {"input": [True, False]}, 400, "input"),
    ("float token", "/v1/embeddings", {"input": [1.5]}, 400, "input"),
    ("token outside vocab", "/v1/embeddings", {"input": [10**12]}, 400, "outside the vocabulary"),
    ("negative token", "/v1/embeddings", {"input": [[101, -1]]}, 400, "outside the vocabulary"),
    ("missing input", "/v1/embeddings", {"model": NAME}, 400, "input: Field required"),
    ("bad encoding_format", "/v1/embeddings", {"input": "a", "encoding_format": "hex"}, 400, "encoding_format"),
    ("string dimensions", "/v1/embeddings", {"input": "a", "dimensions": "8"}, 400, "dimensions"),
    ("over-long text", "/v1/embeddings", {"input": "word " * 300}, 400, "more than the model's maximum"),
    ("too many characters", "/v1/embeddings", {"input": "x" * 20001}, 400, "20001 characters"),
    ("huge batch", "/v1/embeddings", {"input": ["a"] * 2049}, 400, "2049 items, more than .* 2048"),
    ("bad truncation", "/v1/embeddings", {"input": "a", "truncate_prompt_tokens": 0}, 400, "truncate_prompt_tokens"),
    ("truncation above limit", "/v1/embeddings", {"input": "a", "truncate_prompt_tokens": 9999}, 400, "exceeds"),
    ("unknown model", "/v1/embeddings", {"input": "a", "model": "nope"}, 404, "does not exist"),
    ("body is a list", "/v1/embeddings", ["a"], 400, "JSON object"),
    ("score mismatch", "/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, "1:1, 1:N or N:N"),
    ("score null", "/score", {"text_1": None, "text_2": "a"}, 400, "text_1"),
    ("rerank no documents", "/rerank", {"query": "q", "documents": []}, 400, "must not be empty"),
    ("rerank bad document", "/rerank", {"query": "q", "documents": [{"txt": "a"}]}, 400, "documents"),
    ("rerank negative top_n", "/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, 400, "top_n"),
    ("tokenize wrong type", "/tokenize", {"prompt": ["a"]}, 400, "prompt"),
    ("detokenize bad id", "/detokenize", {"tokens": [-5]}, 400, "outside the vocabulary"),
]


@pytest.mark.parametrize("path,body,status,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_rejected_in_reference_shape(http, path, body, status, message) -> None:
    assert_error(http.post(path, json=body), status, message)


def test_raw_protocol_errors_and_server_keeps_serving(http, server) -> None:
    assert_error(http.post("/v1/embeddings", content=b'{"input": "a"', headers={"content-type": "application/json"}),
                 400, "Malformed JSON")
    assert_error(http.post("/v1/embeddings", content=b"input=a",
                           headers={"content-type": "application/x-www-form-urlencoded"}), 400, "JSON object")
    assert_error(http.post("/v1/embeddings", content=b""), 400, "Field required")
    assert_error(http.get("/v1/nothing-here"), 404, "Not Found")
    assert_error(http.get("/v1/embeddings"), 405, "Method Not Allowed")
    assert_error(httpx.post(server.url_for("/v1/embeddings"), json={"input": "a"}), 401, "API key")
    assert_error(httpx.post(server.url_for("/v1/embeddings"), json={"input": "a"},
                            headers={"Authorization": "Bearer " + KEY + "x"}), 401)
    assert_error(httpx.post(server.url_for("/v1/embeddings"), json={"input": "a"},
                            headers={"Authorization": "Basic " + KEY}), 401)
    r = http.post("/v1/embeddings", json={"input": ["still", "serving"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2


def test_bad_request_among_concurrent_good_ones(server, http, llm) -> None:
    """A bad input is rejected before batching and never fails the requests around it."""
    good = corpus(40)[20:40]
    bodies = [{"input": t} for t in good]
    bodies[3:3] = [{"input": "word " * 400}, {"input": [999999999]}, {"input": ["fine", ""]}]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/embeddings", json=b) for b in bodies))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses].count(400) == 3
    ok = [r.json()["data"][0]["embedding"] for r in responses if r.status_code == 200]
    np.testing.assert_allclose(np.array(ok, dtype=np.float32), offline_embed(llm, good), atol=ATOL)
