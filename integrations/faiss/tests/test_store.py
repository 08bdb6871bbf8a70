"""VectorIndex: ids, add / upsert / delete semantics, HNSW tombstones, save/load, GPU move."""

from __future__ import annotations

import json
import uuid

import faiss
import numpy as np
import pytest

import poolkit_faiss.gpu as gpu_module
from poolkit_faiss import (
    VectorIndex,
    clustered_vectors,
    dequantize_int8,
    plan_for,
    quantize_binary,
    quantize_int8,
)

pytestmark = pytest.mark.unit

N, D = 2_000, 32
LAYOUTS = ["flat/fp32", "flat/sq8", "hnsw/fp32", "ivf/fp32", "ivf/sq8", "ivf/pqfs8"]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REFUSAL = (
    f'Model "{MINILM}" does not support matryoshka representation, '
    "changing output dimensions will lead to poor results."
)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return clustered_vectors(N + 100, D, seed=11)


def make(family: str, vectors: np.ndarray, ids=None, **kw) -> VectorIndex:
    plan = plan_for(family, len(vectors), D, nlist=16, hnsw_m=16, model_name=MINILM)
    return VectorIndex.from_vectors(vectors, ids, plan=plan, show_progress=False, **kw)


def top1(index: VectorIndex, queries: np.ndarray) -> list:
    return [row[0][0] if row else None for row in index.search(queries, 1).rows()]


@pytest.mark.parametrize("family", LAYOUTS)
def test_add_search_delete_upsert(family: str, x: np.ndarray) -> None:
    base = x[:N]
    ids = list(range(10_000, 10_000 + N))
    index = make(family, base, ids, hnsw_compact_threshold=None)
    assert len(index) == N and 10_000 in index and 5 not in index
    hits = np.mean(np.array(top1(index, base[:200])) == np.array(ids[:200]))
    assert hits >= (0.99 if family.endswith("fp32") else 0.6)  # PQ codes can tie near-duplicates

    # add refuses present ids and duplicates, and changes nothing when it does
    with pytest.raises(ValueError, match="already present"):
        index.add(x[N : N + 2], [10_000, 99])
    with pytest.raises(ValueError, match="duplicate"):
        index.add(x[N : N + 2], [7, 7])
    assert len(index) == N and 99 not in index

    # delete: present ids go, missing ids are fine, nothing deleted shows up again
    gone = ids[:50]
    assert index.delete(gone + [1, 2, 3]) == 50
    assert index.delete(gone) == 0
    assert len(index) == N - 50 and 10_000 not in index
    found = index.search(base[:50], 20).ids
    assert not set(found.ravel().tolist()) & set(gone)

    # upsert: replace one vector, insert a new one; count and ids stay consistent
    new_vectors = x[N : N + 2]
    index.upsert(new_vectors, [10_100, 123])
    assert len(index) == N - 50 + 1 and 123 in index
    if family != "ivf/pqfs8":
        assert top1(index, new_vectors) == [10_100, 123]
    row = index.search(base[100:101], 20).ids[0].tolist()
    assert row.count(10_100) <= 1  # the old vector of 10_100 is gone
    if family.startswith("hnsw"):
        assert index.n_tombstones == 51 and index.ntotal == len(index) + 51
    else:
        assert index.ntotal == len(index)

    # auto ids continue after the largest id
    assert index.add(x[N + 2 : N + 4]) == [12_000, 12_001]


@pytest.mark.parametrize("family", ["flat/fp32", "flat/sq8", "hnsw/fp32"])
def test_reconstruct(family: str, x: np.ndarray) -> None:
    index = make(family, x[:300], [f"d{i}" for i in range(300)], hnsw_compact_threshold=None)
    index.upsert(x[300:301], ["d7"])  # HNSW: d7 now has a tombstone and a live node
    got = index.reconstruct(["d7", "d3"])
    want = x[[300, 3]] / np.linalg.norm(x[[300, 3]], axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=0.02 if family.endswith("sq8") else 1e-6)
    with pytest.raises(KeyError):
        index.reconstruct(["nope"])


def test_upsert_validates_before_deleting(x: np.ndarray) -> None:
    index = make("flat/fp32", x[:100])
    with pytest.raises(ValueError):
        index.upsert(np.zeros((1, D + 3), np.float32), [5])  # wrong width
    with pytest.raises(ValueError, match="duplicate"):
        index.upsert(x[:2], [5, 5])
    with pytest.raises(TypeError):
        index.upsert(x[:2], [5, "6"])
    assert 5 in index and len(index) == 100


def _exact_ids(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    return ids[flat.search(queries, k)[1]]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found.tolist(), truth.tolist())]))


def test_hnsw_compacts_tombstones(x: np.ndarray) -> None:
    index = make("hnsw/fp32", x[:N], hnsw_compact_threshold=0.25)
    queries = x[N : N + 50]
    index.delete(range(0, 400))  # 20%: tombstones stay, searches skip them
    assert index.n_tombstones == 400 and index.ntotal == N
    found = index.search(queries, 10).ids
    assert not np.isin(found, np.arange(400)).any()
    assert _recall(found, _exact_ids(x[400:N], np.arange(400, N), queries)) >= 0.95
    index.delete(range(400, 600))  # 30%: rebuilt without them
    assert index.n_tombstones == 0 and index.ntotal == len(index) == N - 600
    found = index.search(queries, 10).ids
    assert _recall(found, _exact_ids(x[600:N], np.arange(600, N), queries)) >= 0.95


def test_string_ids(x: np.ndarray) -> None:
    keys = [str(uuid.uuid4()) for _ in range(300)]
    index = make("ivf/sq8", x[:300], keys)
    assert index.id_type == "str" and keys[0] in index
    result = index.search(x[:5], 3)
    assert result.ids.dtype == object and result.ids[0, 0] == keys[0]
    assert index.delete([keys[0], "missing"]) == 1 and keys[0] not in index
    index.upsert(x[300:301], [keys[1]])
    assert top1(index, x[300:301]) == [keys[1]]
    generated = index.add(x[301:303])
    assert all(isinstance(k, str) and len(k) == 36 for k in generated)
    with pytest.raises(TypeError):
        index.add(x[303:304], [5])
    assert sorted(index.ids()) == sorted(keys[1:] + generated)


def test_fewer_results_than_k(x: np.ndarray) -> None:
    index = make("flat/fp32", x[:3])
    result = index.search(x[:1], 5)
    assert result.ids[0, 3:].tolist() == [-1, -1] and np.isinf(result.scores[0, 3:]).all()
    assert len(result.rows()[0]) == 3


@pytest.mark.parametrize("family", LAYOUTS)
def test_save_load_round_trip(family: str, x: np.ndarray, tmp_path) -> None:
    index = make(family, x[:N], hnsw_compact_threshold=None)
    index.delete(range(0, 30))
    index.upsert(x[N : N + 5], [100, 101, 102, 103, 5000])
    before = index.search(x[N - 50 : N], 10)
    folder = index.save(tmp_path / "idx")
    assert sorted(p.name for p in folder.iterdir()) == ["ids.npz", "index.faiss", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["plan"]["factory"] == index.plan.factory and manifest["metric"] == "inner_product"
    assert manifest["normalized"] is True and manifest["model_name"] == MINILM and manifest["dimension"] == D
    with np.load(folder / "ids.npz", allow_pickle=False) as data:  # no pickle inside
        assert len(data["live"]) == len(index)

    loaded = VectorIndex.load(folder)
    after = loaded.search(x[N - 50 : N], 10)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert loaded.plan == index.plan and len(loaded) == len(index) and loaded.n_tombstones == index.n_tombstones
    assert loaded.ids() == index.ids()
    # A loaded index keeps working: ids continue, deletes work.
    assert loaded.add(x[N + 5 : N + 6]) == [5001]
    assert loaded.delete([100, 5001]) == 2 and 100 not in loaded


def test_save_load_string_ids(x: np.ndarray, tmp_path) -> None:
    keys = [f"doc-{i}" for i in range(500)]
    index = make("hnsw/fp32", x[:500], keys)
    index.delete(keys[:10])
    loaded = VectorIndex.load(index.save(tmp_path / "s"))
    assert loaded.id_type == "str" and loaded.ids() == index.ids()
    np.testing.assert_array_equal(loaded.search(x[20:30], 5).ids, index.search(x[20:30], 5).ids)
    assert loaded.add(x[500:501], ["doc-0"]) == ["doc-0"]  # deleted key can come back


def test_plain_faiss_can_read_the_index(x: np.ndarray, tmp_path) -> None:
    index = make("ivf/sq8", x[:N])
    folder = index.save(tmp_path / "p")
    raw = faiss.read_index(str(folder / "index.faiss"))
    assert faiss.extract_index_ivf(raw).nprobe == index.plan.search_params["nprobe"]
    q = x[:5] / np.linalg.norm(x[:5], axis=1, keepdims=True)
    np.testing.assert_array_equal(raw.search(q, 3)[1], index.search(x[:5], 3).ids)


def test_refuses_to_truncate_vectors_of_a_non_matryoshka_model(x: np.ndarray) -> None:
    plan = plan_for("flat/fp32", 10, 16, model_dimension=D, model_name=MINILM, matryoshka=False)
    index = VectorIndex(plan)
    with pytest.raises(ValueError) as info:
        index.add(x[:10])
    assert str(info.value) == REFUSAL
    with pytest.raises(ValueError, match="does not support matryoshka representation"):
        index.search(x[:1])


def test_matryoshka_plan_truncates_and_renormalizes(x: np.ndarray) -> None:
    plan = plan_for("flat/fp32", N, 16, model_dimension=D, matryoshka=True)
    index = VectorIndex.from_vectors(x[:N], plan=plan, show_progress=False)
    cut = x[:5, :16] / np.linalg.norm(x[:5, :16], axis=1, keepdims=True)
    full = index.search(x[:5], 5)
    np.testing.assert_array_equal(full.ids, index.search(cut, 5).ids)
    np.testing.assert_allclose(full.scores[:, 0], 1.0, atol=1e-5)


def test_from_vectors_plans_from_a_budget(x: np.ndarray) -> None:
    index = VectorIndex.from_vectors(x[:N], memory_budget_bytes=120_000, show_progress=False, flat_max_vectors=1000)
    assert index.plan.family == "ivf/sq8" and index.serialized_size() <= 120_000 * 1.1


def test_ivf_needs_training_data(x: np.ndarray) -> None:
    index = VectorIndex(plan_for("ivf/sq8", N, D, nlist=16))
    with pytest.raises(ValueError, match="at least 16 training vectors"):
        index.add(x[:5])
    index.train(x[:500])
    assert index.add(x[:5]) == [0, 1, 2, 3, 4]


def test_gpu_move_when_faiss_reports_gpus(x: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """faiss-cpu has no GPU symbols; fake a GPU build to check the wiring."""
    calls: list[int] = []

    def fake_clone(index, co=None):
        calls.append(index.ntotal)
        return faiss.clone_index(index)

    monkeypatch.setattr(gpu_module, "gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_clone, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: type("Options", (), {})(), raising=False)
    index = make("ivf/sq8", x[:N])
    index.search(x[:2], 3)
    index.search(x[:2], 3)
    assert calls == [N]  # cloned once, reused
    index.add(x[N : N + 1])
    index.search(x[:2], 3)
    assert calls == [N, N + 1]  # re-cloned after a write
    hnsw = make("hnsw/fp32", x[:200])
    hnsw.search(x[:2], 3)
    assert calls == [N, N + 1]  # HNSW stays on the CPU
    assert VectorIndex(index.plan, use_gpu=False)._search_index() is not None


def test_no_gpu_on_faiss_cpu() -> None:
    assert gpu_module.gpu_count() == faiss.get_num_gpus() == 0
    assert not gpu_module.can_use_gpu("ivf", "sq8")


def test_quantized_outputs_feed_sq_and_binary_indexes(x: np.ndarray) -> None:
    base = x[:N]
    codes, ranges = quantize_int8(base)
    assert codes.dtype == np.int8
    assert np.abs(dequantize_int8(codes, ranges) - base).max() < 0.01
    sq = faiss.index_factory(D, "SQ8_direct_signed", faiss.METRIC_INNER_PRODUCT)
    sq.add(codes.astype(np.float32))
    assert sq.sa_code_size() == D  # one byte a dimension, no training
    assert np.mean(sq.search(codes[:100].astype(np.float32), 1)[1][:, 0] == np.arange(100)) > 0.9
    bits = quantize_binary(base)
    assert bits.shape == (N, D // 8) and bits.dtype == np.uint8
    binary = faiss.IndexBinaryFlat(D)
    binary.add(bits)
    distances = binary.search(bits[:100], 1)[0]
    assert (distances[:, 0] == 0).all()  # every code finds itself (or an identical code)
