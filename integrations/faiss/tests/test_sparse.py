"""``SparseIndex`` against brute-force numpy dot products, its updates, persistence and input forms;
``reciprocal_rank_fusion`` / ``weighted_score_fusion`` against values worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from poolkit_faiss import SearchResult, SparseIndex, reciprocal_rank_fusion, weighted_score_fusion
from poolkit_faiss.sparse import IDS_FILE, MANIFEST_FILE, MATRIX_FILE

pytestmark = pytest.mark.unit

DIM = 400


def random_sparse(rng: np.random.Generator, n: int, dim: int = DIM, active: int = 12,
                  values: np.ndarray | None = None) -> np.ndarray:
    """Dense ``(n, dim)`` rows with about ``active`` non-zeros each.

    With ``values`` (small integers) every dot product is an exact integer in float32 whatever the
    summation order, so scipy and numpy agree bit for bit and equal scores are real ties.
    """
    x = np.zeros((n, dim), dtype=np.float32)
    for row in x:
        cols = rng.choice(dim, size=rng.integers(1, active + 1), replace=False)
        row[cols] = rng.choice(values, size=len(cols)) if values is not None else rng.random(len(cols)) + 0.01
    return x


def brute_force(docs: np.ndarray, keys: list[Any], queries: np.ndarray, k: int) -> list[list[tuple[Any, float]]]:
    """The documented ranking: non-zero dot products, score descending, then id ascending; first k."""
    out = []
    scores = queries @ docs.T
    for row in scores:
        hits = [(keys[i], float(s)) for i, s in enumerate(row) if s != 0]
        hits.sort(key=lambda pair: (-pair[1], pair[0]))
        out.append(hits[:k])
    return out


# -- search correctness -----------------------------------------------------------


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_exact_top_k_with_ties_and_cancellation(id_type: str) -> None:
    rng = np.random.default_rng(0)
    # Integer weights with both signs: many exact ties, and some dot products cancel to 0 (not a match).
    docs = random_sparse(rng, 300, values=np.array([-2, -1, 1, 1, 2, 3], dtype=np.float32))
    queries = random_sparse(rng, 25, active=30, values=np.array([-1, 1, 2], dtype=np.float32))
    if id_type == "int":
        keys: list[Any] = rng.permutation(10_000)[:300].tolist()  # not row order: tie order must follow ids
    else:
        keys = [f"doc-{int(i):05d}" for i in rng.permutation(10_000)[:300]]
    index = SparseIndex.from_vectors(sp.csr_matrix(docs), keys)
    assert len(index) == 300 and index.dim == DIM and index.id_type == id_type

    tie_seen = cancel_seen = False
    for k in (1, 5, 17, 400):
        result = index.search_batch(queries, k)
        assert isinstance(result, SearchResult) and result.ids.shape == (25, k) and result.scores.dtype == np.float32
        expected = brute_force(docs, keys, queries, k)
        assert result.rows() == expected
        for row, want in zip(result.scores, expected):  # padding after the matches
            assert np.all(np.isneginf(row[len(want):]))
        full = brute_force(docs, keys, queries, 10_000)
        for want, every in zip(expected, full):
            if 0 < len(want) < len(every) and every[len(want)][1] == want[-1][1]:
                tie_seen = True  # a tie straddled the k-th place and ids settled it
    exact = queries @ docs.T
    structural = (queries != 0).astype(np.float32) @ (docs != 0).astype(np.float32).T
    cancel_seen = bool(((structural > 0) & (exact == 0)).any())
    assert tie_seen and cancel_seen, "the data should exercise ties at the k-th place and cancelling weights"
    # One query at a time gives the same rows as the batch.
    for q, want in zip(queries[:5], brute_force(docs, keys, queries[:5], 7)):
        assert index.search(q, 7).rows() == [want]


def test_float_weights_match_numpy() -> None:
    rng = np.random.default_rng(1)
    docs = random_sparse(rng, 500, active=20)
    queries = random_sparse(rng, 10, active=15)
    index = SparseIndex.from_vectors(docs)
    result = index.search_batch(queries, 10)
    exact = queries @ docs.T
    for q in range(10):
        order = np.argsort(-exact[q], kind="stable")
        order = order[exact[q][order] != 0][:10]
        got = result.ids[q][result.ids[q] >= 0]
        assert got.tolist() == order.tolist()
        np.testing.assert_allclose(result.scores[q][: len(got)], exact[q][order], rtol=1e-5)


def test_no_match_and_empty_index() -> None:
    empty = SparseIndex()
    result = empty.search({3: 1.0}, 4)
    assert result.ids.tolist() == [[-1] * 4] and np.isneginf(result.scores).all()
    index = SparseIndex(8)
    assert index.search({3: 1.0}, 2).rows() == [[]]
    index.add([{0: 1.0}, {1: 1.0}])
    assert index.search({3: 1.0}, 2).ids.tolist() == [[-1, -1]]
    with pytest.raises(ValueError, match="k must be"):
        index.search({0: 1.0}, 0)
    str_index = SparseIndex(8, id_type="str")
    str_index.add([{0: 1.0}], ids=["a"])
    assert str_index.search({0: 2.0}, 2).ids.tolist() == [["a", None]]


TEXTS = [f"document {i} about {w} and {v}" for i, (w, v) in
         enumerate(zip(["cats", "dogs", "sparse", "dense", "vectors", "search"] * 4,
                       ["pooling", "models", "index", "retrieval"] * 6))]
QUERIES = ["cats and dogs", "sparse retrieval"]


@pytest.fixture(scope="module")
def splade(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny random SPLADE ``SparseEncoder`` and its (dense numpy) vectors of ``TEXTS`` and ``QUERIES``."""
    from sentence_transformers import SparseEncoder

    from poolkit.testing import build_sparse_encoder

    path = build_sparse_encoder(tmp_path_factory.mktemp("splade") / "model")
    model = SparseEncoder(str(path), device="cpu")
    docs = model.encode(TEXTS, convert_to_sparse_tensor=False).cpu().numpy().astype(np.float32)
    queries = model.encode(QUERIES, convert_to_sparse_tensor=False).cpu().numpy().astype(np.float32)
    return path, docs, queries


def test_sentence_transformers_sparse_encoder_vectors(splade: tuple[Path, np.ndarray, np.ndarray]) -> None:
    """Real SPLADE output: the index ranks like dense numpy over the same vectors."""
    _, docs, queries = splade
    assert (docs != 0).mean() < 0.5  # sparse indeed
    index = SparseIndex.from_vectors(docs)
    assert index.dim == docs.shape[1] and len(index) == len(TEXTS)
    exact = queries @ docs.T
    result = index.search_batch(queries, 5)
    for q in range(len(QUERIES)):
        np.testing.assert_allclose(result.scores[q], np.sort(exact[q])[::-1][:5], rtol=1e-5)


def test_from_texts_with_the_engine(splade: tuple[Path, np.ndarray, np.ndarray], prompted_llm: Any) -> None:
    """``from_texts`` / ``add_texts`` / ``search_texts`` through ``poolkit.LLM`` of the SPLADE checkpoint."""
    from poolkit import LLM

    path, docs, queries = splade
    llm = LLM(str(path), dtype="float32")
    ids = [f"t{i}" for i in range(len(TEXTS))]
    index = SparseIndex.from_texts(TEXTS, llm, ids=ids, batch_size=7)  # several batches
    assert index.model_name == llm.model_config.served_model_name and index.dim == docs.shape[1]
    np.testing.assert_allclose(index.reconstruct(ids).toarray(), docs, atol=1e-5)  # sentence-transformers' vectors
    result = index.search_texts(QUERIES, 4)
    exact = queries @ docs.T
    for q in range(len(QUERIES)):
        np.testing.assert_allclose(result.scores[q], np.sort(exact[q])[::-1][:4], rtol=1e-4)
    assert index.search_texts(QUERIES[0], 4).rows() == result.rows()[:1]
    with pytest.raises(ValueError, match="already present"):  # before any embedding
        index.add_texts(["again"], ids=["t0"])
    assert index.add_texts(["one more text"], ids=["new"]) == ["new"] and len(index) == len(TEXTS) + 1
    with pytest.raises(ValueError, match="dense embeddings"):
        SparseIndex(llm=prompted_llm).embed(["a dense model"])
    with pytest.raises(ValueError, match="no llm"):
        SparseIndex().search_texts("no model", 1)


# -- updates ----------------------------------------------------------------------


def test_add_delete_upsert_and_ids() -> None:
    index = SparseIndex(10)
    assert index.add([{0: 1.0}, {1: 1.0}]) == [0, 1]  # generated like VectorIndex: a counter
    assert index.add([{2: 1.0}], ids=[7]) == [7]
    assert index.add([{3: 1.0}]) == [8]  # after the largest id
    assert len(index) == 4 and 7 in index and 5 not in index and "7" not in index
    with pytest.raises(ValueError, match="already present"):
        index.add([{4: 1.0}], ids=[7])
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add([{4: 1.0}, {5: 1.0}], ids=[20, 20])
    with pytest.raises(ValueError, match="got 1 ids for 2"):
        index.add([{4: 1.0}, {5: 1.0}], ids=[20])
    with pytest.raises(TypeError, match="int ids"):
        index.add([{4: 1.0}], ids=["x"])
    assert len(index) == 4  # nothing was added by the failed calls

    assert index.delete([1, 99, "nope"]) == 1  # missing and ill-typed ids are ignored
    assert index.ids() == [0, 7, 8] and index.search({1: 1.0}, 3).rows() == [[]]

    index.upsert([{5: 2.0}, {6: 1.0}], ids=[7, 30])  # 7 replaced, 30 new
    assert len(index) == 4
    assert index.search({2: 1.0}, 3).rows() == [[]]  # 7's old vector is gone
    assert index.search({5: 1.0, 6: 1.0}, 3).rows() == [[(7, 2.0), (30, 1.0)]]
    assert index.reconstruct([7]).toarray()[0].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="outside"):  # a bad vector: nothing deleted
        index.upsert([{50: 1.0}], ids=[7])
    assert 7 in index
    with pytest.raises(KeyError):
        index.reconstruct([12345])


def test_many_small_adds_then_search() -> None:
    """Adds are buffered and stacked once before a search: the result is the same as one big add."""
    rng = np.random.default_rng(2)
    docs = random_sparse(rng, 120, values=np.array([1, 2, 3], dtype=np.float32))
    one = SparseIndex.from_vectors(docs)
    many = SparseIndex(DIM)
    for start in range(0, 120, 7):
        many.add(docs[start : start + 7])
        many.search(docs[0], 3)  # interleaved searches see everything added so far
    query = random_sparse(rng, 4, active=40, values=np.array([1.0], dtype=np.float32))
    assert many.search_batch(query, 9).rows() == one.search_batch(query, 9).rows()
    assert (many.reconstruct(list(range(120))) != one.reconstruct(list(range(120)))).nnz == 0


# -- persistence ------------------------------------------------------------------


@pytest.mark.parametrize("id_type", ["int", "str"])
def test_save_load_round_trip(tmp_path: Path, id_type: str) -> None:
    rng = np.random.default_rng(3)
    docs = random_sparse(rng, 80)
    keys: list[Any] = list(range(100, 180)) if id_type == "int" else [f"k{i}" for i in range(80)]
    index = SparseIndex.from_vectors(docs, keys, model_name="tiny-splade")
    index.delete(keys[:5])
    folder = index.save(tmp_path / "sparse")
    assert {p.name for p in folder.iterdir()} == {MANIFEST_FILE, MATRIX_FILE, IDS_FILE}  # no temporary files left
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["format"] == "poolkit-sparse" and manifest["n_vectors"] == 75 and manifest["dim"] == DIM
    assert manifest["model_name"] == "tiny-splade"
    for name in (MATRIX_FILE, IDS_FILE):  # plain npz: readable without pickle
        with np.load(folder / name, allow_pickle=False) as data:
            assert len(data.files) >= 1

    loaded = SparseIndex.load(folder)
    assert repr(loaded) == repr(index)
    assert loaded.ids() == index.ids() and loaded.id_type == id_type and loaded.dim == DIM
    live = index.ids()
    assert (loaded.reconstruct(live) != index.reconstruct(live)).nnz == 0
    queries = random_sparse(rng, 6, active=60)
    assert loaded.search_batch(queries, 8).rows() == index.search_batch(queries, 8).rows()
    if id_type == "int":  # the id counter survives
        assert loaded.add([{0: 1.0}]) == index.add([{0: 1.0}]) == [180]
    index.save(folder)  # saving over an existing index replaces it
    assert SparseIndex.load(folder).ids() == index.ids()


def test_load_rejects_other_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a SparseIndex"):
        SparseIndex.load(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="poolkit-sparse"):
        SparseIndex.load(tmp_path)


# -- input forms and errors -------------------------------------------------------


def test_every_input_form_gives_the_same_vector() -> None:
    from poolkit.outputs import SparseEmbeddingOutput

    dim = 12
    dense = np.zeros(dim, dtype=np.float32)
    dense[[1, 4, 9]] = [0.5, 2.0, 1.25]
    output = SparseEmbeddingOutput.from_dense(dense)
    forms: dict[str, Any] = {
        "SparseEmbeddingOutput": output,
        "request output": SimpleNamespace(outputs=output, prompt_token_ids=[1, 2]),
        "pair": (np.array([9, 1, 4]), np.array([1.25, 0.5, 2.0])),  # any order
        "triple": ([1, 4, 9], [0.5, 2.0, 1.25], dim),
        "dict": {4: 2.0, 1: 0.5, 9: 1.25},
        "csr row": sp.csr_matrix(dense),
        "coo row": sp.coo_matrix(dense),
        "csr_array row": sp.csr_array(dense[None, :]),
        "dense": dense,
        "dense float64": dense.astype(np.float64),
    }
    index = SparseIndex(dim, id_type="str")
    for name, form in forms.items():
        index.add([form], ids=[name])
    stored = index.reconstruct(list(forms)).toarray()
    assert np.array_equal(stored, np.tile(dense, (len(forms), 1)))
    for name, form in forms.items():  # and each form works as a query
        result = index.search(form, 1)
        assert result.scores[0, 0] == pytest.approx(float(dense @ dense)), name
    # Batches: a 2-D dense array, a CSR matrix, a single output without a list.
    batch = np.stack([dense, 2 * dense])
    assert index.search_batch(batch, 1).scores[:, 0].tolist() == pytest.approx([5.8125, 11.625])
    assert index.search_batch(sp.csr_matrix(batch), 1).scores[:, 0].tolist() == pytest.approx([5.8125, 11.625])
    assert SparseIndex(dim).add(output) == [0]
    # An index without a dimension takes it from the first vector that carries one.
    auto = SparseIndex()
    auto.add([output])
    assert auto.dim == dim
    auto.add([{0: 1.0}])  # pairs and dicts are fine once the dimension is known


def test_errors() -> None:
    index = SparseIndex()
    with pytest.raises(ValueError, match="pass dim="):
        index.add([{0: 1.0}])
    assert index.dim is None and len(index) == 0
    index.add(np.ones((1, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="dimension 9; this index has dimension 8"):
        index.add(np.ones((1, 9), dtype=np.float32))
    with pytest.raises(ValueError, match="dimension 9; this index has dimension 8"):
        index.search(np.ones(9), 1)
    with pytest.raises(ValueError, match="different dimensions"):
        SparseIndex().add([np.ones(3), np.ones(4)])
    with pytest.raises(ValueError, match="outside"):
        index.add([{8: 1.0}])
    with pytest.raises(ValueError, match="outside"):
        index.add([([-1], [1.0])])
    with pytest.raises(ValueError, match="appears more than once"):
        index.add([([2, 2], [1.0, 1.0])])
    with pytest.raises(ValueError, match="2 indices but 1 values"):
        index.add([([1, 2], [1.0])])
    with pytest.raises(ValueError, match="NaN"):
        index.add([{1: float("nan")}])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 8), np.inf))
    with pytest.raises(TypeError, match="must be integers"):
        index.add([([0.5], [1.0])])
    with pytest.raises(TypeError, match="cannot read a sparse vector"):
        index.add(["not a vector"])
    with pytest.raises(ValueError, match="one query"):
        index.search(np.ones((2, 8)), 1)
    with pytest.raises(ValueError, match="one query"):
        index.search([{0: 1.0}], 1)  # a batch of one: search_batch
    assert index.search([1.0] * 8, 1).rows() == index.search_batch([dict.fromkeys(range(8), 1.0)], 1).rows()
    with pytest.raises(ValueError, match="id_type"):
        SparseIndex(id_type="uuid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be"):
        SparseIndex(0)
    assert len(index) == 1  # no failed call changed the index


def test_explicit_zeros_are_dropped_and_repr() -> None:
    index = SparseIndex(6, model_name="m")
    index.add([([0, 3, 5], [0.0, 1.0, 0.0]), {2: 1.0}])
    assert index.nnz == 2
    assert repr(index) == "SparseIndex(dim=6, n=2, nnz=2, avg_active=1.0, id_type='int', model='m')"


# -- fusion -----------------------------------------------------------------------


def test_reciprocal_rank_fusion_by_hand() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    sparse = ["c", "d", "a"]  # ids alone are fine: RRF ignores scores
    fused = reciprocal_rank_fusion([dense, sparse], k=60)
    expected = {
        "a": 1 / 61 + 1 / 63,
        "b": 1 / 62,
        "c": 1 / 63 + 1 / 61,
        "d": 1 / 62,
    }
    # a and c tie exactly (same two terms), as do b and d: first-seen order settles both.
    assert [key for key, _ in fused] == ["a", "c", "b", "d"]
    for key, score in fused:
        assert score == pytest.approx(expected[key], abs=1e-15)

    weighted = reciprocal_rank_fusion([dense, sparse], k=1, weights=[2.0, 0.5], limit=3)
    by_hand = {"a": 2 / 2 + 0.5 / 4, "b": 2 / 3, "c": 2 / 4 + 0.5 / 2, "d": 0.5 / 3}
    assert [key for key, _ in weighted] == ["a", "c", "b"]  # 1.125, 0.75, 0.667 (d: 0.167, cut by limit)
    assert [score for _, score in weighted] == pytest.approx([by_hand["a"], by_hand["c"], by_hand["b"]])

    # A repeated id counts at its best place only; an empty ranking adds nothing.
    assert reciprocal_rank_fusion([[5, 6, 5], []], k=0) == [(5, 1.0), (6, 0.5)]
    # A one-query SearchResult is a ranking (the -1 padding is not an id).
    result = SearchResult(ids=np.array([[3, 1, -1]]), scores=np.array([[2.0, 1.0, -np.inf]], dtype=np.float32))
    assert reciprocal_rank_fusion([result], k=0) == [(3, 1.0), (1, 0.5)]
    with pytest.raises(ValueError, match="2 weights for 1"):
        reciprocal_rank_fusion([dense], weights=[1, 1])
    with pytest.raises(ValueError, match="k must be"):
        reciprocal_rank_fusion([dense], k=-1)
    with pytest.raises(ValueError, match=">= 0"):
        reciprocal_rank_fusion([dense], weights=[-1])


def test_weighted_score_fusion_by_hand() -> None:
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    sparse = [("c", 12.0), ("d", 4.0), ("a", 2.0)]
    fused = dict(weighted_score_fusion([dense, sparse], [0.7, 0.3]))
    # min-max per list: dense (s - 0.1) / 0.8, sparse (s - 2) / 10.
    assert fused["a"] == pytest.approx(0.7 * 1.0 + 0.3 * 0.0)
    assert fused["b"] == pytest.approx(0.7 * 0.5)
    assert fused["c"] == pytest.approx(0.7 * 0.0 + 0.3 * 1.0)
    assert fused["d"] == pytest.approx(0.3 * 0.2)
    assert [key for key, _ in weighted_score_fusion([dense, sparse], [0.7, 0.3])] == ["a", "b", "c", "d"]

    raw = weighted_score_fusion([dense, sparse], None, normalize=None)
    assert [key for key, _ in raw] == ["c", "d", "a", "b"]
    assert [score for _, score in raw] == pytest.approx([0.1 + 12.0, 4.0, 0.9 + 2.0, 0.5])
    # All-equal scores normalize to 1 (each is the list's best); ties keep first-seen order.
    assert weighted_score_fusion([[("x", 3.0), ("y", 3.0)], [("z", 5.0)]]) == [("x", 1.0), ("y", 1.0), ("z", 1.0)]
    with pytest.raises(ValueError, match="without scores"):
        weighted_score_fusion([["a", "b"]])
    with pytest.raises(ValueError, match="normalize"):
        weighted_score_fusion([dense], normalize="zscore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-finite"):
        weighted_score_fusion([[("a", float("inf"))]])
