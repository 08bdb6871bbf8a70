"""Cohere's ``/v2/embed`` in-process (httpx ASGI transport, tiny encoders): every embedding type against the
offline engine and the core's quantization helpers, input_type → the model's prompts, output_dimension,
truncate, errors, billed tokens, and the shared engine path (batching with /v1/embeddings, 429)."""

from __future__ import annotations

import asyncio
import base64
import copy
import threading

import httpx
import numpy as np
import pytest

from poolkit import LLM, PoolingParams
from poolkit.entrypoints.testing import serving, until
from poolkit.params import matryoshka_dimension_unsupported, matryoshka_unsupported
from poolkit.quantize import (
    quantize_binary,
    quantize_binary_signed,
    quantize_int8_per_vector,
    quantize_uint8_per_vector,
)

pytestmark = pytest.mark.unit

TEXTS = ["the quick brown fox", "paris", "is the capital of france", "a", "berlin is the capital of germany too"]
PROMPTS = {"query": "query: ", "document": "passage: "}
ATOL = 1e-5
ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
# Much longer than the tiny models' 128 tokens, and different at both ends (so START and END cut differently).
LONG = "paris is the capital of france " + "vectors and more vectors here " * 40 + "berlin is a city"


@pytest.fixture(scope="module")
def prompted(tiny) -> LLM:
    """Mean pooling, normalized, with query/document prompts; no Matryoshka support."""
    return LLM(str(tiny("encoder", pooling="mean", prompts=PROMPTS)), served_model_name="tiny-st", dtype="float32")


@pytest.fixture(scope="module")
def mrl(tiny) -> LLM:
    path = tiny("encoder", pooling="mean", config={"matryoshka_dimensions": [8, 16]})
    return LLM(str(path), served_model_name="tiny-mrl", dtype="float32")


def offline(llm: LLM, texts, **kwargs) -> np.ndarray:
    return np.stack([np.asarray(o.outputs.embedding, dtype=np.float32)
                     for o in llm.embed(texts, use_tqdm=False, **kwargs)])


def floats(body) -> np.ndarray:
    return np.asarray(body["embeddings"]["float"], dtype=np.float32)


def assert_error(response: httpx.Response, status: int, message: str | None = None) -> str:
    body = response.json()
    assert response.status_code == status == body["code"], body
    assert body["object"] == "error" and body["param"] is None, body
    if message is not None:
        assert body["message"] == message
    return str(body["message"])


async def test_every_embedding_type_matches_the_offline_vectors(prompted) -> None:
    async with serving(prompted) as (_, client):
        r = await client.post("/v2/embed", json={"texts": TEXTS, "model": "tiny-st", "embedding_types": ALL_TYPES})
        assert r.status_code == 200, r.text
        body = r.json()
    expected = offline(prompted, TEXTS)
    embeddings = body["embeddings"]
    assert set(embeddings) == set(ALL_TYPES)
    assert np.allclose(floats(body), expected, atol=ATOL, rtol=0)
    # the quantized forms are the core helpers applied to the offline vectors, exactly
    assert embeddings["int8"] == quantize_int8_per_vector(expected).tolist()
    assert embeddings["uint8"] == quantize_uint8_per_vector(expected).tolist()
    assert embeddings["binary"] == quantize_binary_signed(expected).tolist()
    assert embeddings["ubinary"] == quantize_binary(expected).tolist()
    assert len(embeddings["ubinary"][0]) == expected.shape[1] // 8  # 32 dimensions: 4 bytes
    # base64: the float32 little-endian bytes of the float vectors
    decoded = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in embeddings["base64"]])
    assert np.array_equal(decoded, floats(body))
    assert body["texts"] == TEXTS
    assert body["id"].startswith("embd-")
    assert body["response_type"] == "embeddings_by_type"
    # billed tokens: the prompt tokens the model read (nothing was cut: no warnings)
    tokens = sum(len(o.prompt_token_ids) for o in prompted.embed(TEXTS, use_tqdm=False))
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}}


async def test_default_type_is_float_and_only_requested_types_are_sent(prompted) -> None:
    async with serving(prompted) as (_, client):
        plain = (await client.post("/v2/embed", json={"texts": TEXTS[:2]})).json()
        assert list(plain["embeddings"]) == ["float"]
        assert np.allclose(floats(plain), offline(prompted, TEXTS[:2]), atol=ATOL, rtol=0)
        null = (await client.post("/v2/embed", json={"texts": TEXTS[:2], "embedding_types": None})).json()
        assert list(null["embeddings"]) == ["float"]
        some = (await client.post("/v2/embed", json={"texts": TEXTS[:2], "embedding_types": ["ubinary", "int8",
                                                                                             "int8"]})).json()
        assert set(some["embeddings"]) == {"ubinary", "int8"}


async def test_input_type_picks_the_models_prompts(prompted) -> None:
    async with serving(prompted) as (_, client):
        async def embed(input_type):
            r = await client.post("/v2/embed", json={"texts": TEXTS, "input_type": input_type})
            assert r.status_code == 200, r.text
            return r.json()

        query, document = await embed("search_query"), await embed("search_document")
        plain = await embed(None)
        for input_type in ("classification", "clustering"):  # no prompt of that name: the default (none)
            assert np.array_equal(floats(await embed(input_type)), floats(plain))
    assert np.allclose(floats(query), offline(prompted, TEXTS, prompt_name="query"), atol=ATOL, rtol=0)
    assert np.allclose(floats(document), offline(prompted, TEXTS, prompt_name="document"), atol=ATOL, rtol=0)
    assert np.allclose(floats(plain), offline(prompted, TEXTS), atol=ATOL, rtol=0)
    assert not np.allclose(floats(query), floats(plain), atol=1e-3)  # the prompt made a difference
    # the prompt's tokens are billed
    prompted_tokens = sum(len(o.prompt_token_ids) for o in prompted.embed(TEXTS, use_tqdm=False, prompt_name="query"))
    assert query["meta"]["billed_units"]["input_tokens"] == prompted_tokens
    assert prompted_tokens > plain["meta"]["billed_units"]["input_tokens"]


async def test_output_dimension_is_matryoshka(mrl, prompted) -> None:
    async with serving(mrl) as (_, client):
        r = await client.post("/v2/embed", json={"texts": TEXTS, "output_dimension": 8,
                                                 "embedding_types": ["float", "int8", "ubinary"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert_error(await client.post("/v2/embed", json={"texts": TEXTS, "output_dimension": 12}), 400,
                     matryoshka_dimension_unsupported("tiny-mrl", [8, 16]))
        spec = (await client.get("/openapi.json")).json()["components"]["schemas"]["CohereEmbedRequest"]
        assert spec["properties"]["output_dimension"]["anyOf"][0] == {"type": "integer", "enum": [8, 16]}
    expected = offline(mrl, TEXTS, pooling_params=PoolingParams(dimensions=8))
    assert floats(body).shape == (len(TEXTS), 8)
    assert np.allclose(floats(body), expected, atol=ATOL, rtol=0)
    assert np.allclose(np.linalg.norm(floats(body), axis=1), 1.0, atol=1e-5)  # normalized again after the cut
    assert body["embeddings"]["int8"] == quantize_int8_per_vector(expected).tolist()  # from the cut vector
    assert body["embeddings"]["ubinary"] == quantize_binary(expected).tolist() and len(body["embeddings"]["ubinary"][0]) == 1
    async with serving(prompted) as (_, client):
        r = await client.post("/v2/embed", json={"texts": TEXTS, "output_dimension": 8})
        assert_error(r, 400, matryoshka_unsupported("tiny-st"))


async def test_truncate_end_start_and_none(prompted) -> None:
    limit = prompted.model_config.max_model_len
    full = len(prompted.tokenizer(LONG)["input_ids"])
    assert full > limit
    async with serving(prompted) as (_, client):
        async def embed(truncate):
            body = {"texts": [TEXTS[0], LONG], "embedding_types": ["float"]}
            if truncate is not None:
                body["truncate"] = truncate
            return await client.post("/v2/embed", json=body)

        refused = await embed("NONE")
        assert_error(refused, 400)
        assert refused.json()["message"].startswith(f"Prompt 1 has {full} tokens, more than the model's maximum "
                                                    f"of {limit} tokens")
        end, default, start = (await embed("END")).json(), (await embed(None)).json(), (await embed("START")).json()
    # END (Cohere's default) = truncate_prompt_tokens=-1: the tokenizer drops the end
    assert np.allclose(floats(end), offline(prompted, [TEXTS[0], LONG], truncate_prompt_tokens=-1), atol=ATOL, rtol=0)
    assert np.array_equal(floats(default), floats(end))
    # START drops the start, special tokens kept: what the tokenizer itself gives with truncation_side="left"
    # (on a copy: the served tokenizer is never reconfigured)
    left = copy.deepcopy(prompted.tokenizer)
    left.truncation_side = "left"
    kept = left(LONG, truncation=True, max_length=limit)["input_ids"]
    assert kept[0] == prompted.tokenizer.cls_token_id and kept[-1] == prompted.tokenizer.sep_token_id
    assert np.allclose(floats(start)[1], offline(prompted, [kept])[0], atol=ATOL, rtol=0)
    assert np.allclose(floats(start)[0], floats(end)[0], atol=ATOL, rtol=0)  # the short text is not cut
    assert not np.allclose(floats(start)[1], floats(end)[1], atol=1e-3)
    assert prompted.tokenizer.truncation_side == "right"
    # the offline task layer takes the same per-request side
    request = prompted.prepare("embed", [LONG], truncate_prompt_tokens=-1, truncation_side="left")
    assert request.prompts[0].input_ids == kept and request.prompts[0].num_input_tokens == full
    # billed: the tokens the model read (the long text as cut); the cut is reported in meta.warnings
    short = len(prompted.tokenizer(TEXTS[0])["input_ids"])
    for body, side in ((end, "end"), (start, "start")):
        assert body["meta"]["billed_units"]["input_tokens"] == short + limit
        (warning,) = body["meta"]["warnings"]
        assert warning.startswith("1 of the texts (index 1) were longer than the model's maximum of 128 tokens")
        assert f"cut at the {side}" in warning


async def test_truncate_start_keeps_the_prompt(prompted) -> None:
    """START drops the start of the text, not the prompt that input_type put before it."""
    limit = prompted.model_config.max_model_len
    async with serving(prompted) as (_, client):
        r = await client.post("/v2/embed", json={"texts": [LONG], "input_type": "search_query", "truncate": "START"})
        assert r.status_code == 200, r.text
    full = prompted.tokenizer(PROMPTS["query"] + LONG)["input_ids"]
    head = len(prompted.tokenizer(PROMPTS["query"])["input_ids"]) - 1  # [CLS] and the prompt's tokens
    kept = full[:head] + full[len(full) - (limit - head):]  # ... then the end of the text, [SEP] included
    assert len(kept) == limit and kept[-1] == prompted.tokenizer.sep_token_id
    request = prompted.prepare("embed", [LONG], truncate_prompt_tokens=-1, truncation_side="left", prompt_name="query")
    assert request.prompts[0].input_ids == kept
    assert np.allclose(floats(r.json())[0], offline(prompted, [kept])[0], atol=ATOL, rtol=0)


async def test_errors_in_the_reference_shape(prompted) -> None:
    async with serving(prompted) as (_, client):
        bad_type = await client.post("/v2/embed", json={"texts": TEXTS, "embedding_types": ["float", "int4"]})
        assert "embedding_types" in assert_error(bad_type, 400)
        for body in ({"texts": TEXTS, "embedding_types": []}, {"texts": TEXTS, "truncate": "MIDDLE"},
                     {"texts": TEXTS, "input_type": "image"}, {"texts": "one text"}, {"input": TEXTS},
                     {"texts": TEXTS, "output_dimension": 0}):
            assert_error(await client.post("/v2/embed", json=body), 400)
        assert_error(await client.post("/v2/embed", json={"texts": []}), 400, "'texts' must not be empty")
        assert_error(await client.post("/v2/embed", json={"texts": ["a", ""]}), 400,
                     "'texts' item 1 is an empty string; inputs must not be empty")
        assert_error(await client.post("/v2/embed", json={"texts": TEXTS, "model": "nope"}), 404,
                     "The model `nope` does not exist.")


async def test_shares_the_engine_path_with_v1_embeddings(prompted, monkeypatch) -> None:
    """Requests of both APIs are merged into one batch, and /v2/embed is refused (429) when the queue is full."""
    entered, release = threading.Event(), threading.Event()
    real_execute = prompted.engine.execute
    batches: list[int] = []

    def execute(prompts, *args, **kwargs):
        entered.set()
        assert release.wait(30), "the test never released the worker"
        batches.append(len(prompts))
        return real_execute(prompts, *args, **kwargs)

    monkeypatch.setattr(prompted.engine, "execute", execute)

    try:
        async with serving(prompted, batch_wait_ms=0, max_queued_tokens=40) as (engine, client):
            first = asyncio.create_task(client.post("/v2/embed", json={"texts": ["a"]}))
            await until(entered.is_set, "the worker to take the first request")
            v1 = asyncio.create_task(client.post("/v1/embeddings", json={"input": TEXTS[:2]}))
            v2 = asyncio.create_task(client.post("/v2/embed", json={"texts": TEXTS[2:4]}))
            await until(lambda: engine.queued_tokens > 0 and len(engine._queue) == 2, "both requests to be queued")
            refused = await client.post("/v2/embed", json={"texts": [LONG], "truncate": "END"})  # 128 more tokens
            assert_error(refused, 429)
            assert int(refused.headers["Retry-After"]) >= 1
            release.set()
            responses = [await first, await v1, await v2]
    finally:
        release.set()
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert batches == [1, 4]  # the /v1/embeddings and /v2/embed requests ran together
    expected = offline(prompted, TEXTS[:4])
    assert np.allclose(np.asarray([d["embedding"] for d in responses[1].json()["data"]]), expected[:2], atol=ATOL)
    assert np.allclose(floats(responses[2].json()), expected[2:], atol=ATOL, rtol=0)
