"""poolkit_lightning with real 2-process DDP on CPU (gloo): ``ddp_spawn`` in-process for the
Trainer.predict plugin, and ``ddp`` (Lightning re-launches the command) through ``poolkit embed``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from poolkit import LLM
from poolkit.corpus import MANIFEST_NAME, embed_corpus, embedding_matrix, read_corpus_embeddings
from poolkit.testing import build_tiny_checkpoint

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning:lightning.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]


def _texts(n: int) -> list[str]:
    words = ["vector", "search", "embeds", "documents", "into", "dense", "spaces", "for", "retrieval", "and", "ranking"]
    return [" ".join(words[(i * 5 + k) % len(words)] for k in range(2 + i % 70)) + f" item {i}" for i in range(n)]


@pytest.fixture(autouse=True)
def _restore_environment():
    """Lightning's launchers export MASTER_ADDR/MASTER_PORT/... into this process: undo that."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> str:
    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("pl-ckpt") / "encoder", "encoder"))


def _reference(model: str, texts: list[str], **kwargs) -> np.ndarray:
    llm = LLM(model, task="embed", device="cpu")
    outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False, **kwargs)
    return np.stack([o.outputs.numpy() for o in outs])


def _assert_same(vectors: np.ndarray, reference: np.ndarray) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    cos = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.999, cos.min()


def test_trainer_predict_two_ddp_processes(tiny_encoder, tmp_path):
    from poolkit_lightning import embed_texts, reassemble

    n = 101  # not a multiple of 2 processes x batch size: a padding sampler would duplicate rows
    texts = _texts(n)
    ids = [f"doc-{i}" for i in range(n)]
    out = tmp_path / "pred"
    table = embed_texts(texts, ids, model=tiny_encoder, output_dir=out, batch_size=8,
                        trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"})
    files = sorted(p.name for p in out.glob("shard-rank*-batch*.parquet"))
    assert {f.split("-")[1] for f in files} == {"rank0", "rank1"}, "both processes embedded and wrote shards"
    raw = sum(pq.read_metadata(out / f).num_rows for f in files)
    assert raw == n, "no duplicates written (the predict sampler does not pad)"
    assert table.column("index").to_pylist() == list(range(n)), "shards reassemble in input order"
    assert table.column("id").to_pylist() == ids
    assert reassemble(out).column("id").to_pylist() == ids
    _assert_same(embedding_matrix(table), _reference(tiny_encoder, texts))
    llm = LLM(tiny_encoder, task="embed", device="cpu")
    full = [len(ids) for ids in llm.tokenizer(texts)["input_ids"]]
    limit = llm.model_config.max_model_len
    assert table.column("truncated").to_pylist() == [length > limit for length in full]
    assert 0 < sum(length > limit for length in full) < n, "the texts include over-long ones"
    assert table.column("num_tokens").to_pylist() == [min(length, limit) for length in full]


def test_collate_prepares_requests_and_module_embeds_them_like_llm_embed(tiny_encoder, tmp_path):
    """The collate yields a picklable PreparedRequest (with the prompt), predict_step runs it: one process."""
    import pickle

    from poolkit_lightning import PoolkitEmbeddingModule, TextDataset, embed_texts

    texts = _texts(12)
    module = PoolkitEmbeddingModule(tiny_encoder, prompt="search: ", device="cpu")
    batch = module.collate()([TextDataset(texts)[i] for i in range(3)])
    request = pickle.loads(pickle.dumps(batch["request"]))  # as from a DataLoader worker
    assert request.task == "embed" and len(request) == 3 and batch["index"].tolist() == [0, 1, 2]
    table = embed_texts(texts, model=tiny_encoder, output_dir=tmp_path / "pred", batch_size=5, prompt="search: ",
                        device="cpu", trainer_kwargs={"accelerator": "cpu", "devices": 1})
    llm = LLM(tiny_encoder, task="embed", device="cpu")
    outs = llm.embed(texts, prompt="search: ", truncate_prompt_tokens=-1, use_tqdm=False)
    _assert_same(embedding_matrix(table), np.stack([o.outputs.numpy() for o in outs]))
    assert table.column("truncated").to_pylist() == [o.truncated for o in outs]
    assert table.column("num_tokens").to_pylist() == [len(o.prompt_token_ids) for o in outs]


def test_lightning_settings_declared_once(monkeypatch):
    """POOLKIT_LIGHTNING_* are read through poolkit.settings (an explicit keyword wins)."""
    from poolkit.corpus import load_executor
    from poolkit.settings import env_name
    from poolkit_lightning.corpus import LightningArgs, LightningExecutor

    assert load_executor("lightning") is LightningExecutor
    assert env_name(LightningArgs, "strategy") == "POOLKIT_LIGHTNING_STRATEGY"
    assert env_name(LightningArgs, "num_nodes") == "POOLKIT_LIGHTNING_NUM_NODES"
    monkeypatch.delenv("POOLKIT_LIGHTNING_STRATEGY", raising=False)
    monkeypatch.delenv("POOLKIT_LIGHTNING_NUM_NODES", raising=False)
    assert LightningExecutor(workers=2, device="cpu").trainer_kwargs() == {
        "accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "ddp"}
    assert LightningExecutor(device="cuda").trainer_kwargs()["strategy"] == "auto"
    monkeypatch.setenv("POOLKIT_LIGHTNING_STRATEGY", "ddp_spawn")
    monkeypatch.setenv("POOLKIT_LIGHTNING_NUM_NODES", "3")
    kwargs = LightningExecutor(workers=2, device="cuda:0").trainer_kwargs()
    assert kwargs == {"accelerator": "gpu", "devices": 2, "num_nodes": 3, "strategy": "ddp_spawn"}
    assert LightningExecutor(workers=2, strategy="fsdp", num_nodes=2).trainer_kwargs()["strategy"] == "fsdp"
    monkeypatch.setenv("POOLKIT_LIGHTNING_NUM_NODES", "0")
    with pytest.raises(ValueError, match="POOLKIT_LIGHTNING_NUM_NODES"):
        LightningExecutor()


def test_reassemble_drops_duplicate_rows(tiny_encoder, tmp_path):
    """A padding sampler (Lightning's DistributedSampler in fit/validate) would write some rows twice."""
    import pyarrow as pa

    from poolkit.corpus import embeddings_table, write_table_atomic
    from poolkit_lightning import reassemble

    vecs = np.eye(4, dtype=np.float32)
    write_table_atomic(embeddings_table([0, 2, 0], vecs[[0, 2, 0]], extra={"index": pa.array([0, 2, 0])}),
                       tmp_path / "shard-rank0-batch000000.parquet")
    write_table_atomic(embeddings_table([1, 3], vecs[[1, 3]], extra={"index": pa.array([1, 3])}),
                       tmp_path / "shard-rank1-batch000000.parquet")
    table = reassemble(tmp_path)
    assert table.column("id").to_pylist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(embedding_matrix(table), vecs)


def test_cli_engine_lightning_ddp_two_processes_and_resume(tiny_encoder, tmp_path):
    n = 130
    texts = _texts(n)
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": 1000 + i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "poolkit.entrypoints.embed", str(src), "--model", tiny_encoder, "--out", str(out),
           "--engine", "lightning", "--workers", "2", "--device", "cpu", "--shard-size", "20", "--json"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "GLOBAL_RANK: 1" in proc.stderr, "a second DDP process ran"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only rank 0 prints the summary
    summary = lines[0]
    assert summary["complete"] and summary["rows"] == n and summary["shards_done"] == 7
    table = read_corpus_embeddings(out)
    assert table.column("id").to_pylist() == [1000 + i for i in range(n)]
    _assert_same(embedding_matrix(table), _reference(tiny_encoder, texts))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert len(manifest["shards"]) == 7 and manifest["complete"]

    # Lose one shard: a rerun (here in-process, one device) re-embeds exactly that one.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    (out / "shard-00003.parquet").unlink()
    again = embed_corpus(src, out, model=tiny_encoder, engine="lightning", workers=1, device="cpu", shard_size=20,
                         progress=False)
    assert again.rows == 20 and again.shards_done == 1 and again.shards_skipped == 6 and again.complete
    for name, mtime in mtimes.items():
        if name != "shard-00003.parquet":
            assert (out / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    assert read_corpus_embeddings(out).column("id").to_pylist() == [1000 + i for i in range(n)]
