"""One behaviour, every front-end: the task layer makes the offline API, the server, LangChain (in-process and
against the server), the FAISS helper and the corpus CLI agree on prompts, truncation reports, Matryoshka
cosine scores and the truncation of token-id prompts.

Each front-end is driven the way its users drive it; the reference is sentence-transformers (prompts) or the
offline engine computed in the same test."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from poolkit import LLM, PoolingParams
from poolkit.entrypoints.testing import RemoteServer
from poolkit.testing import SAMPLE_TEXTS

PROMPTS = {"query": "query: ", "document": "passage: "}
NAME = "tiny-prompted"
TEXTS = SAMPLE_TEXTS[:5]
LONG = " ".join(SAMPLE_TEXTS * 4)  # over the tiny model's 128 tokens
ATOL = 1e-5


@pytest.fixture(scope="module")
def model_path(tiny) -> str:
    path = tiny("encoder", pooling="mean", prompts=PROMPTS, default_prompt_name="document", include_prompt=False,
                config={"matryoshka_dimensions": [8, 16]})
    return str(path)


@pytest.fixture(scope="module")
def llm(model_path) -> LLM:
    return LLM(model_path, dtype="float32", served_model_name=NAME)


@pytest.fixture(scope="module")
def server(model_path):
    with RemoteServer(model_path, ["--dtype", "float32", "--served-model-name", NAME]) as srv:
        yield srv


@dataclass
class Frontend:
    """How one front-end embeds (``prompt_name`` None: the model's default), counts truncation and scores."""

    embed: Callable[[list[str], str | None], np.ndarray]
    count_truncated: Callable[[list[str], Any], int]  # (texts, caplog) -> how many were cut
    score: Callable[[str, list[str], int | None], list[float]] | None = None


def _offline(llm: LLM, server: Any, tmp: Path) -> Frontend:
    def embed(texts, prompt_name):
        return np.stack([o.outputs.numpy() for o in llm.embed(texts, prompt_name=prompt_name, use_tqdm=False)])

    def count(texts, caplog):
        return sum(o.truncated for o in llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False))

    def score(query, docs, dimensions):
        params = PoolingParams(dimensions=dimensions) if dimensions else None
        return [o.outputs.score for o in llm.score(query, docs, pooling_params=params, use_tqdm=False)]

    return Frontend(embed, count, score)


def _server(llm: LLM, server: Any, tmp: Path) -> Frontend:
    def post(path, body):
        response = httpx.post(server.url_for(path), json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def embed(texts, prompt_name):
        body = {"input": texts, "model": NAME, **({"prompt_name": prompt_name} if prompt_name else {})}
        return np.array([d["embedding"] for d in post("/v1/embeddings", body)["data"]], dtype=np.float32)

    def count(texts, caplog):
        return post("/v1/embeddings", {"input": texts, "truncate_prompt_tokens": -1})["usage"]["truncated_inputs"]

    def score(query, docs, dimensions):
        body = {"text_1": query, "text_2": docs, **({"dimensions": dimensions} if dimensions else {})}
        return [d["score"] for d in post("/score", body)["data"]]

    return Frontend(embed, count, score)


def _langchain(base_url: bool) -> Callable[[LLM, Any, Path], Frontend]:
    def make(llm: LLM, server: Any, tmp: Path) -> Frontend:
        from langchain_poolkit import PoolkitEmbeddings, PoolkitReranker

        where: dict[str, Any] = {"base_url": server.url, "model": NAME} if base_url else {"llm": llm}

        def embed(texts, prompt_name):
            # LangChain's roles: queries get the "query" prompt, documents the document (here: default) prompt.
            embeddings = PoolkitEmbeddings(**where)
            return np.array(embeddings.embed_queries(texts) if prompt_name == "query"
                            else embeddings.embed_documents(texts), dtype=np.float32)

        def count(texts, caplog):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="langchain_poolkit"):
                PoolkitEmbeddings(**where).embed_documents(texts)
            (record,) = [r for r in caplog.records if "truncated" in r.getMessage()]
            return int(record.getMessage().split(" of ")[0].rsplit(" ", 1)[-1])

        def score(query, docs, dimensions):
            return PoolkitReranker(**where, dimensions=dimensions, top_n=None).score(query, docs)

        return Frontend(embed, count, score)

    return make


def _faiss(llm: LLM, server: Any, tmp: Path) -> Frontend:
    from poolkit_faiss.embedding import embed_texts

    def embed(texts, prompt_name):
        return embed_texts(llm, texts, prompt_name=prompt_name)

    def count(texts, caplog):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="poolkit_faiss"):
            embed_texts(llm, texts)
        (record,) = [r for r in caplog.records if "truncated" in r.getMessage()]
        return int(record.getMessage().split(" of ")[0])

    return Frontend(embed, count)


def _corpus_cli(llm: LLM, server: Any, tmp: Path) -> Frontend:
    from poolkit.corpus import read_corpus_embeddings
    from poolkit.entrypoints.embed import main

    runs = iter(range(1000))

    def run(texts, *flags):
        n = next(runs)
        source = tmp / f"in-{n}.jsonl"
        source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
        out = tmp / f"out-{n}"
        assert main([str(source), "--out", str(out), "--model", llm.args.model, "--dtype", "float32",
                     "--no-progress", "--json", *flags]) == 0
        return out

    def embed(texts, prompt_name):
        out = run(texts, *(["--prompt-name", prompt_name] if prompt_name else []))
        table = read_corpus_embeddings(out)
        return np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)

    def count(texts, caplog):
        out = run(texts)
        return json.loads((out / "manifest.json").read_text())["runs"][-1]["truncated"]

    return Frontend(embed, count)


FRONTENDS = {
    "offline": _offline,
    "server": _server,
    "langchain": _langchain(base_url=False),
    "langchain-server": _langchain(base_url=True),
    "faiss": _faiss,
    "corpus-cli": _corpus_cli,
}


# The FAISS helper and the corpus CLI only embed.
SCORING = sorted(name for name in FRONTENDS if name not in ("faiss", "corpus-cli"))


@pytest.fixture(params=sorted(FRONTENDS))
def frontend(request, llm, server, tmp_path) -> Frontend:
    return FRONTENDS[request.param](llm, server, tmp_path)


@pytest.mark.parametrize("prompt_name", ["query", None])
def test_prompts_are_sentence_transformers_prompts(frontend, model_path, prompt_name) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(model_path, device="cpu").encode(TEXTS, prompt_name=prompt_name)
    np.testing.assert_allclose(frontend.embed(TEXTS, prompt_name), reference, atol=ATOL)


def test_truncation_is_counted_by_the_engine(frontend, caplog) -> None:
    texts = [TEXTS[0], LONG, TEXTS[1], LONG + " more", TEXTS[2]]
    assert frontend.count_truncated(texts, caplog) == 2


@pytest.mark.parametrize("dimensions", [8, None])
@pytest.mark.parametrize("name", SCORING)
def test_cosine_scores_honour_dimensions(name, llm, server, tmp_path, dimensions) -> None:
    frontend = FRONTENDS[name](llm, server, tmp_path)
    assert frontend.score is not None
    params = PoolingParams(dimensions=dimensions) if dimensions else None
    vectors = np.stack([o.outputs.numpy() for o in llm.embed(TEXTS[:4], params, use_tqdm=False)])
    expected = vectors[1:] @ vectors[0] / np.linalg.norm(vectors[1:], axis=1) / np.linalg.norm(vectors[0])
    np.testing.assert_allclose(frontend.score(TEXTS[0], TEXTS[1:4], dimensions), expected, atol=ATOL)


@pytest.mark.parametrize("name", ["offline", "server"])
def test_token_id_prompts_keep_special_tokens_when_truncated(name, llm, server) -> None:
    ids = llm.tokenizer(LONG)["input_ids"]
    (text_out,) = llm.embed(LONG, prompt="", truncate_prompt_tokens=-1, use_tqdm=False)
    if name == "offline":
        (out,) = llm.embed([ids], truncate_prompt_tokens=-1, use_tqdm=False)
        kept, vector = out.prompt_token_ids, out.outputs.numpy()
    else:
        tokens = httpx.post(server.url_for("/tokenize"), json={"prompt": LONG}).json()["tokens"]
        assert tokens == ids
        body = httpx.post(server.url_for("/v1/embeddings"), json={"input": [ids], "truncate_prompt_tokens": -1}).json()
        kept, vector = None, np.array(body["data"][0]["embedding"], dtype=np.float32)
        assert body["usage"] == {"prompt_tokens": len(text_out.prompt_token_ids),
                                 "total_tokens": len(text_out.prompt_token_ids), "truncated_inputs": 1}
    if kept is not None:
        assert kept == text_out.prompt_token_ids and kept[0] == ids[0] and kept[-1] == ids[-1]  # [CLS] ... [SEP]
    np.testing.assert_allclose(vector, text_out.outputs.numpy(), atol=ATOL)
