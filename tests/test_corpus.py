"""``poolkit embed`` / ``poolkit.corpus`` with the local executor: sharded input, resumable output,
equality with ``LLM.embed``, truncation accounting, the CLI and its summary line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from poolkit import LLM, PoolingParams
from poolkit.corpus import (
    MANIFEST_NAME,
    CorpusSource,
    Embedder,
    embed_corpus,
    embedding_matrix,
    read_corpus_embeddings,
)
from poolkit.entrypoints.embed import main


def _texts(n: int) -> list[str]:
    words = ["the", "corpus", "job", "embeds", "each", "shard", "once", "and", "writes", "it", "atomically", "to", "disk"]
    # Some rows exceed the tiny model's 128-token limit, so truncation is exercised.
    return [" ".join(words[(i * 3 + k) % len(words)] for k in range(1 + (i * 37) % 140)) + f" #{i}" for i in range(n)]


def _write_jsonl(path: Path, texts: list[str], ids: list | None = None) -> Path:
    with open(path, "w") as fh:
        for i, text in enumerate(texts):
            row = {"text": text} if ids is None else {"id": ids[i], "text": text}
            fh.write(json.dumps(row) + "\n")
            if i == 5:
                fh.write("\n")  # blank lines are skipped, not rows
    return path


@pytest.fixture(scope="module")
def encoder(tiny) -> str:
    return str(tiny("encoder"))


@pytest.fixture(scope="module")
def llm(encoder) -> LLM:
    return LLM(encoder, task="embed", device="cpu")


def _reference(llm: LLM, texts: list[str], dimensions: int | None = None) -> np.ndarray:
    params = PoolingParams(dimensions=dimensions) if dimensions else None
    outs = llm.embed(texts, pooling_params=params, truncate_prompt_tokens=-1, use_tqdm=False)
    return np.stack([o.outputs.numpy() for o in outs])


def _assert_same(vectors: np.ndarray, reference: np.ndarray) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    cos = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.999, cos.min()


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("shard-*.parquet"))}


def test_jsonl_every_row_once_equal_to_engine_and_counts(encoder, llm, tmp_path):
    texts = _texts(230)
    ids = [f"doc-{i}" for i in range(230)]
    src = _write_jsonl(tmp_path / "c.jsonl", texts, ids)
    summary = embed_corpus(src, tmp_path / "out", model=encoder, shard_size=50, batch_size=32, progress=False)
    assert summary.complete and summary.rows == 230 and summary.shards_done == 5 and summary.shards_skipped == 0
    table = read_corpus_embeddings(tmp_path / "out")
    assert table.column("id").to_pylist() == ids
    _assert_same(embedding_matrix(table), _reference(llm, texts))

    full = [len(x) for x in llm.tokenizer(texts)["input_ids"]]
    limit = llm.model_config.max_model_len
    assert table.column("truncated").to_pylist() == [n > limit for n in full]
    assert summary.truncated == sum(n > limit for n in full) > 0
    # The count comes from the engine's outputs, exactly as LLM.embed reports it.
    assert summary.truncated == sum(o.truncated for o in llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False))
    assert table.column("num_tokens").to_pylist() == [min(n, limit) for n in full]
    assert summary.tokens == sum(min(n, limit) for n in full)
    line = summary.line()
    for part in ("230 rows", f"{summary.tokens:,} tokens", "rows/s", "tokens/s", f"{summary.truncated} rows truncated"):
        assert part in line

    manifest = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())
    assert manifest["complete"] and sorted(manifest["shards"]) == [f"{i:05d}" for i in range(5)]
    assert sum(s["rows"] for s in manifest["shards"].values()) == 230


def test_parquet_input_row_numbers_as_ids_and_matryoshka(encoder, llm, tmp_path):
    texts = _texts(75)
    src = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": texts}), src, row_group_size=20)  # shards straddle row groups
    summary = embed_corpus(src, tmp_path / "out", model=encoder, text_column="body", shard_size=30, dimensions=16,
                           engine_kwargs={"hf_overrides": {"matryoshka_dimensions": [16, 32]}}, progress=False)
    assert summary.complete and summary.rows == 75
    table = read_corpus_embeddings(tmp_path / "out")
    assert table.column("id").to_pylist() == list(range(75))
    mllm = LLM(encoder, task="embed", device="cpu", hf_overrides={"matryoshka_dimensions": [16, 32]})
    _assert_same(embedding_matrix(table), _reference(mllm, texts, dimensions=16))


def test_resume_after_interruption_recomputes_nothing_finished(encoder, llm, tmp_path, monkeypatch):
    texts = _texts(200)
    src = _write_jsonl(tmp_path / "c.jsonl", texts, list(range(200)))
    out = tmp_path / "out"

    # 1) a time-boxed run: 2 of 8 shards.
    first = embed_corpus(src, out, model=encoder, shard_size=25, max_shards=2, progress=False)
    assert first.shards_done == 2 and not first.complete and "INCOMPLETE" in first.line()

    # 2) a crash in the middle of the 3rd shard of the next run (e.g. a killed process).
    calls = {"n": 0}
    real_embed = Embedder.embed

    def crashing(self, texts, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # shard 4 of 8, 2nd chunk (3 chunks a shard)
            raise KeyboardInterrupt("simulated interruption")
        return real_embed(self, texts, **kwargs)

    monkeypatch.setattr(Embedder, "embed", crashing)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(src, out, model=encoder, shard_size=25, batch_size=10, progress=False)
    monkeypatch.setattr(Embedder, "embed", real_embed)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(manifest["shards"]) == ["00000", "00001", "00002", "00003"]  # 2 more finished before the crash
    assert not list(out.glob(".shard-*.tmp")) and len(_mtimes(out)) == 4
    before = _mtimes(out)

    # 3) the rerun embeds only the 4 missing shards.
    again = embed_corpus(src, out, model=encoder, shard_size=25, progress=False)
    assert again.complete and again.shards_skipped == 4 and again.shards_done == 4 and again.rows == 100
    assert all(_mtimes(out)[name] == mtime for name, mtime in before.items()), "finished shards untouched"
    table = read_corpus_embeddings(out)
    assert table.column("id").to_pylist() == list(range(200))
    _assert_same(embedding_matrix(table), _reference(llm, texts))

    # 4) a deleted shard is re-embedded; a shard file the manifest missed is adopted, not recomputed.
    (out / "shard-00005.parquet").unlink()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["shards"]["00006"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = _mtimes(out)
    third = embed_corpus(src, out, model=encoder, shard_size=25, progress=False)
    assert third.shards_done == 1 and third.rows == 25 and third.complete
    after = _mtimes(out)
    assert all(after[name] == mtime for name, mtime in before.items())
    assert read_corpus_embeddings(out).column("id").to_pylist() == list(range(200))


def test_cli_summary_resume_and_job_mismatch(encoder, tmp_path, capsys):
    src = _write_jsonl(tmp_path / "c.jsonl", _texts(60))
    out = tmp_path / "out"
    args = [str(src), "--model", encoder, "--out", str(out), "--shard-size", "25", "--no-progress"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("embedded 60 rows") and "tokens/s" in line and "3/3 shards" in line
    before = _mtimes(out)
    assert main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 0 and summary["shards_skipped"] == 3 and summary["complete"]
    assert _mtimes(out) == before
    assert read_corpus_embeddings(out).column("id").to_pylist() == list(range(60))  # no id field: row numbers

    with pytest.raises(SystemExit, match=r"different job.*shard_size"):
        main([str(src), "--model", encoder, "--out", str(out), "--shard-size", "10", "--no-progress"])
    assert main([str(src), "--model", encoder, "--out", str(out), "--shard-size", "10", "--overwrite",
                 "--no-progress"]) == 0
    assert len(_mtimes(out)) == 6


def test_no_silent_truncation_when_disabled(encoder, tmp_path):
    texts = ["a short text"] * 25 + ["far too long for the tiny model " * 40] * 15
    src = _write_jsonl(tmp_path / "c.jsonl", texts)
    # The error names the shard and its rows, and its prompt number is the input's row number.
    with pytest.raises(ValueError, match=r"shard 1, rows 20-39: Prompt 25 has \d+ tokens, more than the model's max"):
        embed_corpus(src, tmp_path / "out", model=encoder, shard_size=20, truncate=None, progress=False)


def test_source_errors(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "a"}\n{"text": 3}\n')
    source = CorpusSource.open(bad, shard_size=10)
    with pytest.raises(ValueError, match="row 1: column 'text' is int"):
        source.read(source.shards[0])
    with pytest.raises(ValueError, match="no 'body' field"):
        CorpusSource.open(bad, text_column="body")
    (tmp_path / "c.csv").write_text("x")
    with pytest.raises(ValueError, match=r"expected a \.jsonl or \.parquet"):
        CorpusSource.open(tmp_path / "c.csv")


def test_poolkit_cli_registers_embed():
    from poolkit.corpus import available_executors
    from poolkit.entrypoints import cli

    parser = cli.make_parser()
    engine = available_executors()[-1]  # an installed plugin (ray, lightning) when there is one
    args = parser.parse_args(["embed", "in.jsonl", "--out", "o", "--engine", engine, "--truncate", "none",
                              "--prompt-name", "query"])
    assert args.engine == engine and args.truncate is None and args.prompt_name == "query" and callable(args.func)
    assert parser.parse_args(["embed", "in.jsonl", "--out", "o"]).engine == "local"
