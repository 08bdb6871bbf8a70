"""Real `poolkit serve` processes on tiny checkpoints: a cross-encoder (score, rerank, classify) and a
Matryoshka embedder (flags --hf_overrides / --task), property-based runs over the OpenAPI spec,
and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from unittest.mock import ANY

import httpx
import jsonschema
import numpy as np
import openai
import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure
from schemathesis.engine import Status, events, from_schema
from schemathesis.python.asgi import shutdown_lifespans

from poolkit import LLM, PoolingParams
from poolkit.async_engine import AsyncPoolingEngine
from poolkit.entrypoints.server import build_app
from poolkit.entrypoints.server_args import ServerArgs
from poolkit.entrypoints.testing import RemoteServer, wait_until
from poolkit.params import matryoshka_dimension_unsupported
from poolkit.testing import build_tiny_checkpoint

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
    # Small input limits keep the fuzz's boundary cases (the largest valid request) cheap to run.
    limits = ["--max-inputs-per-request", "64", "--max-input-chars", "2000"]
    ce = RemoteServer(checkpoints["ce"], ["--served-model-name", "tiny-ce", "--batch-wait-ms", "1", *FLOAT32,
                                          *limits])
    enc = RemoteServer(checkpoints["enc"], ["--task", "embed", "--served-model-name", "tiny-mrl",
                                            "--hf_overrides", '{"matryoshka_dimensions": [8, 16]}', *FLOAT32,
                                            *limits], gated=True)
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


# -- property-based: schemathesis, all its checks, over each server's published OpenAPI schema ---------------------
#
# What `st run --checks all` does, in-process: schemathesis' engine runs its phases (examples: the schema has none;
# coverage: boundary values, missing and wrong fields, undeclared methods; fuzzing: hypothesis; stateful: no links,
# so not applicable), positive and negative data, and every check:
# - not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
#   response_headers_conformance (no headers are documented, so it has nothing to compare);
# - positive_data_acceptance: schema-valid data must be answered 200 (not schemathesis' default, which also takes
#   401/403/404/409/429/5xx) — run through `accepts_valid_data`, which lets only INEXPRESSIBLE 400s through;
# - negative_data_rejection: schema-invalid data must be answered 400 (401 without the API key, 404 for an
#   unknown model name);
# - unsupported_method and allow_header_conformance: a method a path does not take is a 405 with `Allow`;
# - missing_required_header and ignored_auth: only with an API key, which the schema then declares (the in-process
#   run with KEY below);
# - use_after_free, ensure_resource_availability and object_level_authorization look at resources created by one
#   call and used by another: this API creates none (stateful testing finds no links), so they have nothing to do;
# plus `errors_in_error_shape`: every 4xx/5xx is an ErrorResponse as published, JSON, with code = HTTP status.

# Schema-valid requests the server still rejects (400, in the error shape), for reasons a JSON schema cannot state.
# Everything else schema-valid must be answered 200. (Limits that depend on the server or the model — inputs per
# request, characters per text, token ids, truncate_prompt_tokens, Matryoshka sizes, prompt names, served names —
# are in each server's schema, so they are no exception.)
INEXPRESSIBLE = re.compile("|".join([
    # An input's length in tokens: the model's maximum (max_model_len in /v1/models; truncate_prompt_tokens cuts
    # inputs to it) counts tokens, which depend on the tokenizer; a schema counts characters or list items.
    r"^Prompt \d+ has \d+ tokens, more than ",
    # ... and a text that has no tokens at all (with a model that adds no special tokens, e.g. " ").
    r"^Prompt \d+ is empty: it has no tokens to pool$",
    # /score pairs texts 1:1, 1:N or N:N: text_1 is one text or as many as text_2, and a schema cannot compare
    # the lengths of two lists.
    r"^score\(\) takes 1:1, 1:N or N:N inputs",
    # --max-request-chars bounds the characters of all the texts of a request together: a sum over fields.
    r" characters in all, more than this server's limit of \d+ characters per request$",
]))
KEY = "sk-fuzz"
# Examples per operation in the fuzzing phase (the coverage phase's cases are a fixed set per schema, with lists of
# --max-inputs-per-request texts, which the model runs): the four runs over the servers take about 30 s together
# on two busy cores.
FUZZ_EXAMPLES = 8
# Aliases: the same handler and the same request and response schemas as /score and /rerank (asserted in
# test_openapi_declares_response_schemas), so they are left out of the runs.
ALIASES = ["/v1/score", "/v1/rerank"]


def _error_message(response) -> str:
    try:
        return str(response.json().get("message", ""))
    except ValueError:
        return ""


@schemathesis.check
def accepts_valid_data(ctx, response, case) -> bool | None:
    """positive_data_acceptance (200 only, as configured), except for the INEXPRESSIBLE 400s."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except Failure:
        if response.status_code == 400 and INEXPRESSIBLE.search(_error_message(response)):
            return None
        raise


@schemathesis.check
def errors_in_error_shape(ctx, response, case) -> bool | None:
    """Every 4xx and 5xx — the documented ones (content_type_conformance and response_schema_conformance check
    those too) and the others, e.g. 405 — is the published ErrorResponse, sent as application/json (the media
    type every error is documented with), with ``code`` equal to the HTTP status."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type == "application/json", f"{response.status_code} sent as {content_type!r}"
    body = response.json()
    schema = case.operation.schema.raw_schema["components"]["schemas"]["ErrorResponse"]
    jsonschema.validate(body, schema)
    assert body["code"] == response.status_code, body
    return None


def _fuzz_config(mode: str, headers: dict[str, str] | None = None, fuzzing: bool = True) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict({
        "workers": 1,
        "continue-on-failure": True,
        "suppress-health-check": ["all"],
        "headers": headers or {},
        "phases": {"fuzzing": {"enabled": fuzzing}},
        "generation": {"mode": mode, "max-examples": FUZZ_EXAMPLES, "deterministic": True},
        "checks": {
            "enabled": True,
            # run by accepts_valid_data, with its documented exceptions
            "positive_data_acceptance": {"enabled": False, "expected-statuses": ["200"]},
            "negative_data_rejection": {"expected-statuses": ["400", "401", "404"]},
        },
    })


def _fuzz(schema) -> Counter[str]:
    """Run every phase and check over ``schema`` and fail with each distinct failure. Returns what was sent and
    answered: ``"<positive|negative> <status>"``, or ``"undeclared method <status>"``."""
    outcomes: Counter[str] = Counter()
    failures: dict[tuple[str, str, str], str] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, interaction in recorder.interactions.items():
                case = recorder.cases[case_id].value
                status = interaction.response.status_code if interaction.response is not None else "no response"
                if case.method.upper() != case.operation.method.upper():
                    outcomes[f"undeclared method {status}"] += 1
                elif case.meta is not None:
                    outcomes[f"{case.meta.generation.mode.value} {status}"] += 1
            for case_id, nodes in recorder.checks.items():
                for node in nodes:
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        case = recorder.cases[case_id].value
                        interaction = recorder.interactions.get(case_id)
                        response = interaction.response if interaction is not None else None
                        status = response.status_code if response is not None else "no response"
                        reason = _error_message(response) if response is not None else ""
                        key = (recorder.label, node.name, re.sub(r"\d+", "N", reason))
                        failures.setdefault(key, f"{recorder.label} [{node.name}] {status} {reason!r}: "
                                                 f"{node.failure_info.failure.title}; body={case.body!r:.300}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures[("error", repr(event), "")] = f"schemathesis error: {getattr(event, 'info', event)}"
        elif isinstance(event, events.EngineFinished):
            for failure in event.failures:
                failures[("after run", failure.title, "")] = f"{failure.title}: {failure.message}"
    assert not failures, "\n".join(failures.values())
    return outcomes


# schemathesis' pytest plugin (from_fixture) does not work with pytest 9: run its engine, as `st run` does.
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("which", ["ce", "enc"])
def test_openapi_fuzz_has_no_failures(servers, which, mode) -> None:
    schema = schemathesis.openapi.from_url(servers[which].url + "/openapi.json", config=_fuzz_config(mode))
    outcomes = _fuzz(schema.exclude(path=ALIASES))
    # the checks had something to look at: valid data answered 200, invalid data 400, undeclared methods 405
    if mode == "positive":
        assert outcomes["positive 200"] >= 100, outcomes
    else:
        assert outcomes["negative 400"] >= 100 and outcomes["undeclared method 405"] > 0, outcomes


@pytest.fixture
def keyed_app(enc_llm):
    """The embedder's app in-process, with an API key and small limits (schemathesis runs its lifespan: the
    engine)."""
    settings = ServerArgs(api_key=KEY, max_inputs_per_request=16, max_input_chars=300)
    app = build_app(AsyncPoolingEngine(enc_llm), settings)
    try:
        yield app
    finally:
        shutdown_lifespans()  # drains and stops the engine


def test_openapi_fuzz_with_api_key_and_other_limits(keyed_app) -> None:
    """The schema declares the key (bearer) on every route but /health, and this server's limits; the server
    enforces both: missing_required_header and ignored_auth have something to check."""
    auth = {"Authorization": f"Bearer {KEY}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", keyed_app,
                                            config=_fuzz_config("all", auth, fuzzing=False), headers=auth)
    spec = schema.raw_schema
    assert spec["components"]["securitySchemes"]["APIKey"] == {"type": "http", "scheme": "bearer", "description": ANY}
    assert spec["paths"]["/v1/embeddings"]["post"]["security"] == [{"APIKey": []}]
    assert "security" not in spec["paths"]["/health"]["get"]
    texts = spec["components"]["schemas"]["EmbeddingRequest"]["properties"]["input"]["anyOf"][1]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (16, 300)
    outcomes = _fuzz(schema.exclude(path=ALIASES))
    assert outcomes["negative 401"] > 0 and outcomes["positive 200"] > 0, outcomes


def test_openapi_declares_response_schemas(ce, enc) -> None:
    """Every 200 is documented with its real schema (not FastAPI's ``{"type": "string"}`` fallback), and
    requests with the rules and limits the server enforces: this server's and this model's."""
    spec = ce.get("/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    for path, method, model in [("/score", "post", "ScoreResponse"), ("/v2/rerank", "post", "RerankV2Response"),
                                ("/classify", "post", "ClassificationResponse"), ("/v1/models", "get", "ModelList")]:
        content = paths[path][method]["responses"]["200"]["content"]
        assert content == {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}, path
        assert "422" not in paths[path][method]["responses"]
        assert paths[path][method]["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    assert paths["/metrics"]["get"]["responses"]["200"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    for alias, path in zip(ALIASES, ["/score", "/rerank"]):  # what lets the fuzz runs leave the aliases out
        for part in ("requestBody", "responses"):
            assert paths[alias]["post"][part] == paths[path]["post"][part]
    # responses: what is always sent is required
    assert schemas["ErrorResponse"]["required"] == ["object", "message", "type", "param", "code"]
    assert set(schemas["ScoreResponse"]["required"]) == {"id", "object", "created", "model", "data", "usage"}
    assert "document" not in schemas["RerankResult"]["required"]  # left out unless documents are returned
    # requests: emptiness and the server's limits (these servers: 64 inputs, 2000 characters)
    inputs = schemas["ClassificationRequest"]["properties"]["input"]["anyOf"]
    assert inputs[0] == {"type": "string", "minLength": 1, "maxLength": 2000}
    assert all(alternative["minItems"] == 1 for alternative in inputs[1:])
    assert inputs[1]["maxItems"] == inputs[3]["maxItems"] == 64
    assert schemas["RerankRequest"]["properties"]["documents"]["minItems"] == 1
    assert schemas["RerankRequest"]["properties"]["top_n"]["anyOf"][0]["minimum"] == 0
    # the model's limits: token ids, truncation
    max_model_len = ce.get("/v1/models").json()["data"][0]["max_model_len"]
    truncate = schemas["ClassificationRequest"]["properties"]["truncate_prompt_tokens"]["anyOf"][0]
    assert truncate["anyOf"] == [{"const": -1}, {"minimum": 1, "maximum": max_model_len}]
    assert inputs[2]["items"]["minimum"] == 0 and inputs[2]["items"]["maximum"] > 0
    # model options: a cross-encoder takes no Matryoshka size; the embedder lists its sizes
    assert schemas["ScoreRequest"]["properties"]["dimensions"]["type"] == "null"
    assert schemas["ScoreRequest"]["properties"]["model"]["anyOf"][0]["enum"] == ["tiny-ce", ""]
    enc_spec = enc.get("/openapi.json").json()
    enc_schemas = enc_spec["components"]["schemas"]
    # Cohere's /v2/embed: on embedding models only, documented like the others, with the model's Matryoshka sizes
    assert "/v2/embed" not in paths
    embed = enc_spec["paths"]["/v2/embed"]["post"]["responses"]
    assert embed["200"]["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/CohereEmbedResponse"}}}
    assert "422" not in embed and embed["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"}
    assert enc_schemas["CohereEmbedRequest"]["properties"]["output_dimension"]["anyOf"][0] == {"type": "integer",
                                                                                             "enum": [8, 16]}
    assert not set(enc_schemas["CohereEmbeddingsByType"].get("required", []))  # only the requested types are sent
    assert enc_schemas["EmbeddingRequest"]["properties"]["dimensions"]["anyOf"][0] == {"type": "integer",
                                                                                     "enum": [8, 16]}
    assert enc_schemas["ScoreRequest"]["properties"]["activation"]["type"] == "null"  # scored by cosine
    for extension in ("prompt", "prompt_name"):
        assert enc_schemas["EmbeddingRequest"]["properties"][extension]["description"].startswith("Extension")
    assert enc_schemas["UsageInfo"]["properties"]["truncated_inputs"]["description"].startswith("Extension")
    assert enc_schemas["RerankRequest"]["properties"]["dimensions"]["description"].startswith("Extension")
    assert "x-poolkit-limits" not in enc.get("/openapi.json").text  # every placeholder is filled in


def test_wrong_method_is_an_error_in_shape(ce) -> None:
    r = ce.get("/score")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.headers["content-type"] == "application/json"
    assert r.json() == {"object": "error", "message": "Method Not Allowed: GET /score", "type": "MethodNotAllowedError",
                        "param": None, "code": 405}


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
    assert server.proc.wait(60) == 0  # a clean stop on SIGTERM (uvicorn alone would re-raise it: -15)
    log = server.log()
    assert "Shutting down: draining" in log and "Model worker stopped" in log
    assert "Application shutdown complete" in log
    with pytest.raises(httpx.ConnectError):
        httpx.post(server.url_for("/v1/embeddings"), json={"input": "late"})


def test_server_does_not_start_with_a_refused_model(tmp_path) -> None:
    """A model refused at load (here a CLIP config routed to its text half alone) stops the server before it
    reports healthy."""
    path = build_tiny_checkpoint(tmp_path, "clip")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["CLIPTextModelWithProjection"]
    (path / "config.json").write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "poolkit.entrypoints.cli", "serve", str(path), "--port", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "CLIPTextModelWithProjection is a multimodal model" in result.stderr
