"""``poolkit embed --prompt-name/--prompt``: the corpus job prompts texts exactly as ``LLM.embed`` does,
and the prompt is part of the job's identity (so a resumed job never mixes prompted and plain shards)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from poolkit import LLM
from poolkit.corpus import MANIFEST_NAME, embedding_matrix, read_corpus_embeddings
from poolkit.entrypoints.embed import main
from poolkit.testing import add_sentence_transformers_files, build_tiny_checkpoint

PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="module")
def prompted(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prompted") / "encoder"
    build_tiny_checkpoint(path, "encoder")
    add_sentence_transformers_files(path, pooling="mean", prompts=PROMPTS)
    return str(path)


@pytest.fixture(scope="module")
def llm(prompted) -> LLM:
    return LLM(prompted, task="embed", device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    words = ["prompts", "tell", "an", "embedding", "model", "whether", "a", "text", "is", "a", "query", "or", "a", "passage"]
    # Rows 7, 17, 27 exceed the tiny model's 128 tokens: truncation happens after the prompt is put in.
    texts = [" ".join(words[(i + k) % len(words)] for k in range(3 + (150 if i % 10 == 7 else i))) for i in range(30)]
    path = tmp_path_factory.mktemp("prompt-corpus") / "c.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return path, texts


def _run(capsys, src: Path, model: str, out: Path, *flags: str) -> dict:
    assert main([str(src), "--model", model, "--out", str(out), "--device", "cpu", "--no-progress", "--json",
                 *flags]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("flags, kwargs", [
    (("--prompt-name", "query"), {"prompt_name": "query"}),
    (("--prompt-name", "document"), {"prompt_name": "document"}),
    (("--prompt", "query: "), {"prompt": "query: "}),
    ((), {}),
])
def test_cli_prompt_changes_vectors_exactly_like_llm_embed(prompted, llm, corpus, tmp_path, capsys, flags, kwargs):
    src, texts = corpus
    summary = _run(capsys, src, prompted, tmp_path / "out", *flags)
    table = read_corpus_embeddings(tmp_path / "out")
    outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False, **kwargs)
    np.testing.assert_array_equal(embedding_matrix(table), np.stack([o.outputs.numpy() for o in outs]))
    assert table.column("num_tokens").to_pylist() == [len(o.prompt_token_ids) for o in outs]
    assert table.column("truncated").to_pylist() == [o.truncated for o in outs]
    assert summary["truncated"] == sum(o.truncated for o in outs) == 3
    assert summary["tokens"] == sum(len(o.prompt_token_ids) for o in outs)
    job = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["job"]
    # Only a job that asks for a prompt records one: jobs without keep their earlier fingerprint.
    assert {k: job[k] for k in ("prompt_name", "prompt") if k in job} == kwargs


def test_prompt_changes_the_vectors(llm, corpus):
    _, texts = corpus
    plain, query, document = (
        np.stack([o.outputs.numpy() for o in llm.embed(texts[:5], use_tqdm=False, **kw)])
        for kw in ({}, {"prompt_name": "query"}, {"prompt_name": "document"}))
    assert not np.allclose(plain, query, atol=1e-3) and not np.allclose(query, document, atol=1e-3)


def test_prompt_is_part_of_the_job(prompted, corpus, tmp_path, capsys):
    src, _ = corpus
    out = tmp_path / "out"
    _run(capsys, src, prompted, out, "--prompt-name", "query")
    with pytest.raises(SystemExit, match=r"different job.*prompt_name: 'query' → 'document'"):
        main([str(src), "--model", prompted, "--out", str(out), "--prompt-name", "document", "--no-progress"])
    with pytest.raises(SystemExit, match=r"different job.*prompt_name: 'query' → None"):
        main([str(src), "--model", prompted, "--out", str(out), "--no-progress"])
    with pytest.raises(SystemExit, match="Prompt name 'nope' not found; the model's prompts: document, query"):
        main([str(src), "--model", prompted, "--out", str(tmp_path / "other"), "--prompt-name", "nope"])
    again = _run(capsys, src, prompted, out, "--prompt-name", "query")
    assert again["rows"] == 0 and again["shards_skipped"] == 1 and again["complete"]
