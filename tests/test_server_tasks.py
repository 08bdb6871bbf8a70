"""Real `poolkit serve` processes on tiny checkpoints: a cross-encoder (score, rerank, classify) and a
Matryoshka embedder (flags --hf_overrides / --task), property-based runs over the OpenAPI spec,
and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import socket

import httpx
import numpy as np
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from poolkit import LLM, PoolingParams
from poolkit.entrypoints.testing import RemoteServer, wait_until
from poolkit.params import matryoshka_dimension_unsupported

QUERY = "what is the capital of france"
# Distinct lengths: the tiny tokenizers know few words, so length is what tells texts apart.
DOCS = ["paris", "the capital of france is paris", "berlin is a city", "a dog", "vectors and more vectors here"]
ATOL = 1e-5
# float32 on both sides: bf16 (the default on CPUs with AMX) is not batch-invariant to ATOL.
FLOAT32 = ("--dtype", "float32")


@pytest.fixture(scope="module")
def checkpoints(tiny):
    return {"ce": str(tiny("cross-encoder")), "enc": str(tiny("encoder"))}


@pytest.fixture(scope="module")
def servers(checkpoints):
    ce = RemoteServer(checkpoints["ce"], ["--served-model-name", "tiny-ce", "--batch-wait-ms", "1", *FLOAT32])
    enc = RemoteServer(checkpoints["enc"], ["--task", "embed", "--served-model-name", "tiny-mrl",
                                            "--hf_overrides", '{"matryoshka_dimensions": [8, 16]}', *FLOAT32],
                       gated=True)
    try:
        for s in (ce, enc):
            s.start()
        for s in (ce, enc):
            s.wait_ready()
        yield {"ce": ce, "enc": enc}
    finally:
        for s in (ce, enc):
            s.close()


@pytest.fixture(scope="module")
def ce(servers):
    with httpx.Client(base_url=servers["ce"].url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def enc(servers):
    with httpx.Client(base_url=servers["enc"].url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def ce_llm(checkpoints) -> LLM:
    return LLM(checkpoints["ce"], served_model_name="tiny-ce", dtype="float32")


@pytest.fixture(scope="module")
def enc_llm(checkpoints) -> LLM:
    return LLM(checkpoints["enc"], task="embed", served_model_name="tiny-mrl",
               hf_overrides={"matryoshka_dimensions": [8, 16]}, dtype="float32")


def scores(llm: LLM, a, b) -> list[float]:
    return [o.outputs.score for o in llm.score(a, b, use_tqdm=False)]


# -- cross-encoder ---------------------------------------------------------------------------------------------


def test_cross_encoder_score_matches_offline(ce, ce_llm) -> None:
    cases = [(QUERY, DOCS[0]), (QUERY, DOCS), (DOCS[:2], DOCS[2:4])]
    for text_1, text_2 in cases:
        body = ce.post("/v1/score", json={"model": "tiny-ce", "text_1": text_1, "text_2": text_2}).json()
        assert [d["score"] for d in body["data"]] == pytest.approx(scores(ce_llm, text_1, text_2), abs=ATOL)
        assert body["usage"]["prompt_tokens"] == sum(
            len(o.prompt_token_ids) for o in ce_llm.score(text_1, text_2, use_tqdm=False))


def test_cross_encoder_rerank_matches_offline(ce, ce_llm) -> None:
    expected = scores(ce_llm, QUERY, DOCS)
    order = sorted(range(len(DOCS)), key=lambda i: -expected[i])
    body = ce.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 3}).json()
    assert [r["index"] for r in body["results"]] == order[:3]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([expected[i] for i in order[:3]], abs=ATOL)
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i in order[:3]]
    scores_seen = [r["relevance_score"] for r in ce.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
                   .json()["results"]]
    assert scores_seen == sorted(scores_seen, reverse=True) and len(scores_seen) == len(DOCS)


def test_cross_encoder_classify_pooling_and_disabled_embeddings(ce, ce_llm) -> None:
    body = ce.post("/classify", json={"input": DOCS[:3]}).json()
    expected = [o.outputs.probs for o in ce_llm.classify(DOCS[:3], use_tqdm=False)]
    assert [d["probs"] for d in body["data"]] == [pytest.approx(p, abs=ATOL) for p in expected]
    assert [(d["label"], d["num_classes"]) for d in body["data"]] == [("LABEL_0", 1)] * 3
    pooled = ce.post("/pooling", json={"input": [DOCS[1]], "encoding_format": "float"}).json()["data"][0]["data"]
    assert pooled == pytest.approx(ce_llm.encode(DOCS[1], use_tqdm=False)[0].outputs.data.tolist(), abs=ATOL)
    r = ce.post("/v1/embeddings", json={"input": "x"})
    assert r.status_code == 400 and "does not support the Embeddings API" in r.json()["message"]
    assert "/v1/embeddings" not in ce.get("/openapi.json").json()["paths"]


# -- Matryoshka embedder: --hf_overrides, dimensions ------------------------------------------------------------------


def test_matryoshka_dimensions(servers, enc, enc_llm) -> None:
    client = openai.OpenAI(base_url=servers["enc"].base_url, api_key="unused", max_retries=0)
    got = client.embeddings.create(model="tiny-mrl", input=DOCS, dimensions=16)
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    expected = [o.outputs.embedding for o in enc_llm.embed(DOCS, PoolingParams(dimensions=16), use_tqdm=False)]
    assert vectors.shape == (len(DOCS), 16)
    np.testing.assert_allclose(vectors, expected, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny-mrl", input="x", dimensions=12)
    assert info.value.body["message"] == matryoshka_dimension_unsupported("tiny-mrl", [8, 16])
    full = enc.post("/v1/embeddings", json={"input": "paris"}).json()["data"][0]["embedding"]
    assert len(full) == enc_llm.model_config.embedding_dim


# -- property-based: no 5xx, and every response as the published OpenAPI schema says -----------------------------

# Every response: not a 5xx, a documented status, a documented content type, a body valid against the schema.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(url: str, mode: GenerationMode, max_examples: int) -> None:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=60)

    run()


# schemathesis' pytest plugin (from_fixture) does not work with pytest 9, so drive hypothesis directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
@pytest.mark.parametrize("which", ["ce", "enc"])
def test_openapi_fuzz_responses_conform_to_schema(servers, which, mode) -> None:
    _fuzz(servers[which].url, mode, max_examples=60)


def test_openapi_declares_response_schemas(ce) -> None:
    """Every 200 is documented with its real schema (not FastAPI's ``{"type": "string"}`` fallback), and
    requests with the emptiness rules the server enforces."""
    spec = ce.get("/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    for path, method, model in [("/score", "post", "ScoreResponse"), ("/v2/rerank", "post", "RerankV2Response"),
                                ("/classify", "post", "ClassificationResponse"), ("/v1/models", "get", "ModelList")]:
        content = paths[path][method]["responses"]["200"]["content"]
        assert content == {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}, path
        assert "422" not in paths[path][method]["responses"]
    assert paths["/metrics"]["get"]["responses"]["200"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    inputs = schemas["ClassificationRequest"]["properties"]["input"]["anyOf"]
    assert inputs[0] == {"type": "string", "minLength": 1}
    assert all(alternative["minItems"] == 1 for alternative in inputs[1:])
    assert schemas["RerankRequest"]["properties"]["documents"]["minItems"] == 1


# -- graceful shutdown (last: it stops the embedder) ------------------------------------------------------------


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_graceful_shutdown_drains_in_flight_requests(servers, enc_llm) -> None:
    """Work is held in flight by a gate on the model worker (not by a guess at the machine's speed):
    SIGTERM while it is held refuses new connections, then every in-flight request completes with 200."""
    server = servers["enc"]
    gate = server.gate
    texts = [f"{DOCS[i % len(DOCS)]} {i}" for i in range(40)]
    expected = np.array([o.outputs.embedding for o in enc_llm.embed(texts, use_tqdm=False)], dtype=np.float32)
    batches_before = gate.entered

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            gate.hold()
            tasks = [asyncio.create_task(client.post("/v1/embeddings", json={"input": texts})) for _ in range(6)]
            # Every request is inside the server, and the model worker is blocked inside a batch.
            await asyncio.to_thread(wait_until, lambda: server.requests_in_progress("/v1/embeddings") == 6, 60,
                                    "6 requests in progress")
            await asyncio.to_thread(gate.wait_entered, batches_before + 1)
            assert not any(t.done() for t in tasks), "a request finished while the model was held"
            server.proc.send_signal(signal.SIGTERM)  # stop accepting, drain, exit
            # New connections are refused while draining (uvicorn logs "Shutting down" just before it closes
            # its listening socket, so poll for the refusal rather than assume the order of two processes).
            await asyncio.to_thread(wait_until, lambda: _refuses_connections(server.port), 60,
                                    "the server to refuse new connections")
            assert not any(t.done() for t in tasks), "in-flight requests were dropped at SIGTERM"
            gate.release()
            return await asyncio.gather(*tasks)

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 6
    for response in responses:
        got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=ATOL)
    # uvicorn re-raises the SIGTERM it caught once the graceful shutdown is done
    assert server.proc.wait(60) in (0, -signal.SIGTERM)
    log = server.log()
    assert "Shutting down: draining" in log and "Model worker stopped" in log
    assert "Application shutdown complete" in log
    with pytest.raises(httpx.ConnectError):
        httpx.post(server.url_for("/v1/embeddings"), json={"input": "late"})
