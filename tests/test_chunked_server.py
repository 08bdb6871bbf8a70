"""Chunked processing through `poolkit serve`: a 10,000-token document with the openai client, the per-request
switch on /v1/embeddings and /pooling, usage counting every token run, and long and short requests mixed."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import openai
import pytest

from poolkit import LLM
from poolkit.entrypoints.testing import RemoteServer
from poolkit.testing import SAMPLE_TEXTS

CONFIG = {"enable_chunked_processing": True, "max_embed_len": 16384}
ATOL = 1e-5


def document(tokens: int, llm: LLM) -> str:
    words = " ".join(SAMPLE_TEXTS).split()
    text = ""
    i = 0
    while len(llm.tokenizer(text, verbose=False)["input_ids"]) < tokens:
        text += " ".join(words[i % len(words)] for i in range(i, i + 200)) + " "
        i += 200
    return text


@pytest.fixture(scope="module")
def path(tiny) -> str:
    return str(tiny("encoder", pooling="mean"))


@pytest.fixture(scope="module")
def llm(path) -> LLM:
    return LLM(path, dtype="float32", override_pooler_config=CONFIG)


@pytest.fixture(scope="module")
def server(path):
    with RemoteServer(path, ["--dtype", "float32", "--pooler-config", json.dumps(CONFIG),
                             "--served-model-name", "tiny"]) as srv:
        yield srv


def test_ten_thousand_token_document_with_the_openai_client(server, llm) -> None:
    doc = document(10_000, llm)
    (expected,) = llm.embed(doc, use_tqdm=False)
    assert len(expected.prompt_token_ids) >= 10_000
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    got = client.embeddings.create(model="tiny", input=doc)
    np.testing.assert_allclose(got.data[0].embedding, expected.outputs.numpy(), atol=ATOL)
    assert got.usage.prompt_tokens == expected.num_processed_tokens > len(expected.prompt_token_ids)


def test_per_request_switch_and_pooling_endpoint(tiny, llm) -> None:
    path = str(tiny("encoder", pooling="mean"))
    doc = document(600, llm)
    expected = llm.embed(doc, use_tqdm=False)[0].outputs.numpy()
    with RemoteServer(path, ["--dtype", "float32"]) as plain:  # chunking off by default
        refused = httpx.post(plain.url_for("/v1/embeddings"), json={"input": doc})
        assert refused.status_code == 400 and "more than the model's maximum" in refused.json()["message"]
        for route, key in (("/v1/embeddings", "embedding"), ("/pooling", "data")):
            body = httpx.post(plain.url_for(route), json={"input": doc, "enable_chunked_processing": True}).json()
            np.testing.assert_allclose(body["data"][0][key], expected, atol=ATOL)


def test_long_and_short_requests_mixed(server, llm) -> None:
    docs = [document(n, llm) for n in (300, 1200, 2500)]
    bodies = [[SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]] if i % 2 else [docs[i % 3], SAMPLE_TEXTS[i % 5]] for i in range(16)]
    flat = list({t: None for body in bodies for t in body})
    expected = dict(zip(flat, (o.outputs.numpy() for o in llm.embed(flat, use_tqdm=False))))

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json={"input": b}) for b in bodies))

    for body, response in zip(bodies, asyncio.run(main())):
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, np.stack([expected[t] for t in body]), atol=ATOL)
