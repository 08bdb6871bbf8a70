"""poolkit_ray on a real local Ray cluster (2 CPUs): completeness, equality with the local engine,
fault tolerance, Parquet/index helpers and the ``ray`` engine of ``poolkit embed``."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from poolkit import LLM
from poolkit.corpus import embed_corpus, embedding_matrix, read_corpus_embeddings

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]


def _texts(n: int) -> list[str]:
    words = ["vector", "search", "embeds", "documents", "into", "dense", "spaces", "for", "retrieval", "and", "ranking"]
    return [" ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 60)) + f" doc {i}" for i in range(n)]


@pytest.fixture(scope="module")
def reference(tiny_encoder):
    llm = LLM(tiny_encoder, task="embed", device="cpu")

    def embed(texts: list[str], truncate: int = -1, **kwargs) -> np.ndarray:
        outs = llm.embed(texts, truncate_prompt_tokens=truncate, use_tqdm=False, **kwargs)
        return np.stack([o.outputs.numpy() for o in outs])

    return embed


def _assert_same(vectors: np.ndarray, reference: np.ndarray) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    cos = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.999, cos.min()


def _collect(ds) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


def _check_once(table: pa.Table, texts: list[str], reference) -> None:
    ids = table.column("id").to_pylist()
    assert len(ids) == len(texts) and sorted(ids) == list(range(len(texts))), "every row exactly once"
    order = np.argsort(ids)
    assert [table.column("text").to_pylist()[i] for i in order] == texts, "each id keeps its own text"
    _assert_same(embedding_matrix(table)[order], reference(texts))


def test_embed_dataset_every_row_once_equal_to_local_then_parquet_and_index(ray_cluster, tiny_encoder, reference,
                                                                             tmp_path):
    import ray.data

    import poolkit_ray

    texts = _texts(240)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=6)
    out = poolkit_ray.embed_dataset(ds, model=tiny_encoder, workers=2, batch_size=32, num_cpus_per_worker=1,
                                    num_tokens_column="num_tokens", truncated_column="truncated").materialize()
    table = _collect(out)
    _check_once(table, texts, reference)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    order = np.argsort(table.column("id").to_numpy())
    llm = LLM(tiny_encoder, task="embed", device="cpu")
    full = np.array([len(ids) for ids in llm.tokenizer(texts)["input_ids"]])
    limit = llm.model_config.max_model_len
    np.testing.assert_array_equal(table.column("truncated").to_numpy()[order], full > limit)
    np.testing.assert_array_equal(table.column("num_tokens").to_numpy()[order], np.minimum(full, limit))

    # Parquet out, then (id, vector) batches into an index, streaming.
    poolkit_ray.write_embeddings_parquet(out, tmp_path / "emb", columns=["id", "embedding"])
    batches = list(poolkit_ray.iter_embedding_batches(tmp_path / "emb", batch_size=70))
    ids = np.concatenate([b[0] for b in batches])
    assert sorted(ids.tolist()) == list(range(240))
    assert all(v.dtype == np.float32 and v.shape[1] == 32 for _, v in batches)
    from_ds = np.concatenate([b[0] for b in poolkit_ray.iter_embedding_batches(out, batch_size=100)])
    assert sorted(from_ds.tolist()) == list(range(240))

    vecs = dict(zip(ids.tolist(), np.concatenate([b[1] for b in batches])))
    import faiss
    index = faiss.IndexIDMap(faiss.IndexFlatIP(32))
    assert poolkit_ray.feed_index(index, tmp_path / "emb", batch_size=100) == 240
    _, found = index.search(vecs[7][None, :], 1)
    assert found[0, 0] == 7
    try:
        from poolkit_faiss import VectorIndex, plan_index
    except ImportError:
        return
    store = VectorIndex(plan_index(240, 1e8, dimension=32))
    assert poolkit_ray.feed_index(store, out, batch_size=100) == 240  # straight from the Ray Dataset
    assert poolkit_ray.feed_index(store, tmp_path / "emb", upsert=True) == 240  # a rerun replaces
    assert len(store) == 240
    assert store.search(vecs[11][None, :], k=1).rows()[0][0][0] == 11


def test_killed_worker_is_retried_without_loss_or_duplicates(ray_cluster, tiny_encoder, reference, tmp_path):
    import ray.data

    from poolkit_ray import PoolkitEmbedder, embed_dataset

    kill_marker = tmp_path / "killed"
    starts = tmp_path / "starts"
    starts.mkdir()

    class DiesOnce(PoolkitEmbedder):
        """Kills its own process (as an OOM kill or a lost node would) on its 3rd batch, once per job."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            (starts / f"{os.getpid()}").touch()
            self.calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 3:
                try:
                    os.close(os.open(kill_marker, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            return super().__call__(batch)

    texts = _texts(320)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=10)
    out = embed_dataset(ds, model=tiny_encoder, workers=2, batch_size=16, num_cpus_per_worker=1,
                        embedder_cls=DiesOnce)
    table = _collect(out)
    assert kill_marker.exists(), "an actor process was killed mid-job"
    assert len(list(starts.iterdir())) >= 3, "the dead actor was replaced (restarted)"
    _check_once(table, texts, reference)


def test_corpus_executor_ray(ray_cluster, tiny_encoder, reference, tmp_path):
    from poolkit.corpus import load_executor
    from poolkit_ray.corpus import RayExecutor

    assert load_executor("ray") is RayExecutor  # found through the poolkit.executors entry point
    texts = _texts(90)
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    summary = embed_corpus(src, tmp_path / "out", model=tiny_encoder, engine="ray", shard_size=20, workers=2,
                           prompt="search: ", progress=False)
    assert summary.complete and summary.rows == 90 and summary.shards_done == 5 and summary.engine == "ray"
    table = read_corpus_embeddings(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(90)]
    _assert_same(embedding_matrix(table), reference(texts, prompt="search: "))
    again = embed_corpus(src, tmp_path / "out", model=tiny_encoder, engine="ray", shard_size=20, workers=2,
                         prompt="search: ", progress=False)
    assert again.rows == 0 and again.shards_skipped == 5


def test_corpus_executor_ray_embeds_an_image_column(ray_cluster, tmp_path):
    """``poolkit embed --image-column`` on the Ray executor: the workers prepare image rows as the local run does."""
    import pyarrow.parquet as pq
    from PIL import Image

    from poolkit.testing import build_tiny_checkpoint

    clip = str(build_tiny_checkpoint(tmp_path / "clip", "clip"))
    paths = []
    for i, color in enumerate(("red", "green", "blue")):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (24 + 8 * i, 32), color).save(paths[-1])
    pq.write_table(pa.table({"path": paths}), tmp_path / "images.parquet")
    summary = embed_corpus(tmp_path / "images.parquet", tmp_path / "out", model=clip, engine="ray", image_column="path",
                           shard_size=2, workers=1, progress=False, engine_kwargs={"dtype": "float32"})
    assert summary.complete and summary.rows == 3
    expected = [o.outputs.numpy() for o in LLM(clip, dtype="float32").embed(
        [{"multi_modal_data": {"image": p}} for p in paths])]
    _assert_same(embedding_matrix(read_corpus_embeddings(tmp_path / "out")), np.stack(expected))
