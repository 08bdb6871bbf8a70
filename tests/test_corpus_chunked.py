"""``poolkit embed --chunked`` / ``embed_corpus(chunked=True)``: texts longer than the model embedded whole, in
chunks merged into one vector, exactly as ``LLM.embed(text, enable_chunked_processing=True)``; the options
travel as one :class:`~poolkit.corpus.EmbedOptions`, and jobs without ``chunked`` keep their fingerprints."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from poolkit import LLM, PoolingParams
from poolkit.corpus import (
    MANIFEST_NAME,
    CorpusJob,
    CorpusSource,
    Embedder,
    EmbedOptions,
    embed_corpus,
    embedding_matrix,
    read_corpus_embeddings,
)
from poolkit.entrypoints.embed import main
from poolkit.testing import SAMPLE_TEXTS

LONG = " ".join(SAMPLE_TEXTS * 8)  # ~750 tokens; the tiny models take 128
ATOL = 1e-5


def _texts() -> list[str]:
    """Short and long rows mixed (long ones of different lengths, in several shards and batches)."""
    texts = list(SAMPLE_TEXTS[:9])
    texts.insert(1, LONG)
    texts.insert(4, " ".join(reversed(SAMPLE_TEXTS * 5)))
    texts.insert(8, LONG + " " + SAMPLE_TEXTS[2])
    texts.append(" ".join(SAMPLE_TEXTS * 2))  # just over 128 tokens
    return texts


@pytest.fixture(scope="module")
def encoder(tiny) -> str:
    return str(tiny("encoder", pooling="mean"))


@pytest.fixture(scope="module")
def llm(encoder) -> LLM:
    return LLM(encoder, task="embed", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    texts = _texts()
    path = tmp_path_factory.mktemp("chunked-corpus") / "c.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path, texts


def _chunked(llm: LLM, texts: list[str], **kwargs) -> tuple[np.ndarray, list]:
    """The reference: each text alone through ``LLM.embed(..., enable_chunked_processing=True)``."""
    outs = [o for t in texts for o in llm.embed(t, enable_chunked_processing=True, use_tqdm=False, **kwargs)]
    return np.stack([o.outputs.numpy() for o in outs]), outs


def _run(capsys, src: Path, model: str, out: Path, *flags: str) -> dict:
    assert main([str(src), "--model", model, "--out", str(out), "--device", "cpu", "--dtype", "float32",
                 "--no-progress", "--json", "--shard-size", "5", "--batch-size", "3", *flags]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.unit
def test_cli_chunked_equals_llm_embed(encoder, llm, corpus, tmp_path, capsys):
    src, texts = corpus
    limit = llm.model_config.max_model_len
    long_rows = [i for i, t in enumerate(texts) if len(llm.tokenizer(t)["input_ids"]) > limit]
    assert long_rows == [1, 4, 8, 12]
    summary = _run(capsys, src, encoder, tmp_path / "out", "--chunked")
    table = read_corpus_embeddings(tmp_path / "out")
    expected, outs = _chunked(llm, texts)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(texts))]  # order kept
    np.testing.assert_allclose(embedding_matrix(table), expected, atol=ATOL)
    # A chunked row's num_tokens is its whole text's token count; nothing is truncated.
    whole = [len(llm.tokenizer(t)["input_ids"]) for t in texts]
    assert table.column("num_tokens").to_pylist() == whole == [len(o.prompt_token_ids) for o in outs]
    assert table.column("truncated").to_pylist() == [False] * len(texts)
    assert summary["truncated"] == 0 and summary["tokens"] == sum(whole) and summary["complete"]
    # Short rows are the vectors a plain job gives them.
    short = [i for i in range(len(texts)) if i not in long_rows]
    plain = np.stack([o.outputs.numpy() for o in llm.embed([texts[i] for i in short], use_tqdm=False)])
    np.testing.assert_allclose(embedding_matrix(table)[short], plain, atol=ATOL)
    job = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["job"]
    assert job["chunked"] is True and job["truncate"] is None


@pytest.mark.unit
def test_chunked_with_dimensions_through_the_api(encoder, corpus, tmp_path):
    src, texts = corpus
    matryoshka = {"hf_overrides": {"matryoshka_dimensions": [32, 16]}}
    summary = embed_corpus(src, tmp_path / "out", model=encoder, chunked=True, dimensions=16, shard_size=4,
                           batch_size=2, progress=False, engine_kwargs={"dtype": "float32", **matryoshka})
    assert summary.complete and summary.truncated == 0
    llm = LLM(encoder, task="embed", device="cpu", dtype="float32", **matryoshka)
    expected, _ = _chunked(llm, texts, pooling_params=PoolingParams(dimensions=16))
    np.testing.assert_allclose(embedding_matrix(read_corpus_embeddings(tmp_path / "out")), expected, atol=ATOL)


@pytest.mark.unit
def test_chunked_is_part_of_the_job(encoder, corpus, tmp_path, capsys):
    src, _ = corpus
    out = tmp_path / "out"
    _run(capsys, src, encoder, out, "--chunked")
    again = _run(capsys, src, encoder, out, "--chunked", "--truncate", "none")  # the same job: no truncation
    assert again["rows"] == 0 and again["shards_skipped"] == 3 and again["complete"]
    with pytest.raises(SystemExit, match=r"different job.*truncate: None → -1, chunked: True → None"):
        main([str(src), "--model", encoder, "--out", str(out), "--no-progress"])


@pytest.mark.unit
def test_chunked_with_a_truncation_count_is_refused(encoder, corpus, tmp_path):
    src, _ = corpus
    with pytest.raises(SystemExit, match=r"--chunked embeds whole texts \(in chunks\) and cannot be combined with "
                                         r"--truncate 64"):
        main([str(src), "--model", encoder, "--out", str(tmp_path / "a"), "--chunked", "--truncate", "64"])
    with pytest.raises(ValueError, match=r"chunked embeds whole texts .* truncate=64"):
        embed_corpus(src, tmp_path / "b", model=encoder, chunked=True, truncate=64, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything ran


@pytest.mark.unit
def test_over_max_embed_len_names_shard_and_row(encoder, llm, corpus, tmp_path):
    src, texts = corpus
    n = len(llm.tokenizer(texts[1])["input_ids"])
    cap = {"override_pooler_config": {"max_embed_len": n - 1}}
    with pytest.raises(ValueError, match=rf"shard 0, rows 0-1: Prompt 1 has {n} tokens, more than "
                                         rf"max_embed_len={n - 1}"):
        embed_corpus(src, tmp_path / "out", model=encoder, chunked=True, shard_size=5, batch_size=2,
                     progress=False, engine_kwargs=cap)


@pytest.mark.unit
def test_a_model_that_cannot_chunk_fails_before_the_first_shard(encoder, llm):
    overlapping = LLM(encoder, task="embed", device="cpu", override_pooler_config={"chunk_overlap": 500})
    Embedder(overlapping)  # fine without chunking
    with pytest.raises(ValueError, match="chunk_overlap must be between 0 and"):
        Embedder(overlapping, EmbedOptions(chunked=True))


@pytest.mark.unit
def test_options_travel_pickled_to_workers(encoder, llm, corpus):
    """A job's tokenizer (pickled to DataLoader workers / Ray actors) prepares the chunked request, which the
    process holding the model runs: the same vectors as in one process."""
    src, texts = corpus
    job = CorpusJob(CorpusSource.open(src, shard_size=5), "/unused", encoder, EmbedOptions(chunked=True),
                    engine_kwargs={"dtype": "float32"})
    tokenizer = pickle.loads(pickle.dumps(job.make_tokenizer()))
    assert tokenizer.options == EmbedOptions(chunked=True, truncate=None)
    request = pickle.loads(pickle.dumps(tokenizer(texts, first_index=0)))
    embedded = Embedder(llm, job.options).run(request)
    np.testing.assert_allclose(embedded.vectors, _chunked(llm, texts)[0], atol=ATOL)
    assert not embedded.truncated.any()


def _old_fingerprint(job: CorpusJob, **extra) -> str:
    """The fingerprint as jobs computed it before the options were bundled (the identity spelled out)."""
    src = job.source
    identity = {
        "version": 1, "input": src.path, "input_bytes": src.size_bytes, "format": src.format,
        "text_column": src.text_column, "id_column": src.id_column, "num_rows": src.num_rows,
        "shard_size": src.shard_size, "model": job.model, "dimensions": job.options.dimensions,
        "truncate": job.options.truncate, "engine_kwargs": {"max_model_len": 64}, **extra,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.mark.unit
@pytest.mark.parametrize("options, extra", [
    (EmbedOptions(), {}),
    (EmbedOptions(dimensions=16, truncate=None), {}),
    (EmbedOptions(truncate=32, prompt_name="query"), {"prompt_name": "query"}),
    (EmbedOptions(prompt="search: "), {"prompt": "search: "}),
])
def test_fingerprints_of_jobs_without_chunked_are_unchanged(corpus, options, extra):
    src, _ = corpus
    job = CorpusJob(CorpusSource.open(src, shard_size=5), "/unused", "m", options,
                    engine_kwargs={"max_model_len": 64, "dtype": "float32"})
    assert "chunked" not in job.identity()
    assert job.fingerprint == _old_fingerprint(job, **extra)
    chunked = CorpusJob(job.source, "/unused", "m", EmbedOptions(options.dimensions, None, options.prompt_name,
                                                                 options.prompt, chunked=True), engine_kwargs={})
    assert chunked.identity()["chunked"] is True and chunked.fingerprint != job.fingerprint


def test_lightning_executor_chunks_like_llm_embed(encoder, llm, corpus, tmp_path):
    """The ``lightning`` executor gets the job's options (its module and its collate) and chunks the same."""
    pytest.importorskip("poolkit_lightning")
    src, texts = corpus
    summary = embed_corpus(src, tmp_path / "out", model=encoder, engine="lightning", workers=1, device="cpu",
                           chunked=True, shard_size=5, progress=False, engine_kwargs={"dtype": "float32"})
    assert summary.complete and summary.truncated == 0
    table = read_corpus_embeddings(tmp_path / "out")
    np.testing.assert_allclose(embedding_matrix(table), _chunked(llm, texts)[0], atol=ATOL)
    assert table.column("truncated").to_pylist() == [False] * len(texts)
