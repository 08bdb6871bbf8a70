"""Sparse (SPLADE), multi-vector (ColBERT-style) and BGE-M3 models against their references, offline and served.

References are computed here in fp32: sentence-transformers' ``SparseEncoder`` and ``MultiVectorEncoder`` on
the same checkpoints, and for the BGE-M3-shaped model transformers' backbone with FlagEmbedding's formulas
(FlagEmbedding itself is not installed here).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poolkit import LLM, MultiVectorOutput, PoolingParams, SparseEmbeddingOutput
from poolkit.entrypoints.testing import serving
from poolkit.testing import (
    SAMPLE_TEXTS,
    build_bge_m3_like,
    build_multi_vector_encoder,
    build_sparse_encoder,
    build_tiny_checkpoint,
)

pytestmark = pytest.mark.unit

TEXTS = [*SAMPLE_TEXTS[:6], "Hello, world! Is this a question?", "fox"]
QUERY = "What is the capital of France?"


@pytest.fixture(scope="module")
def splade_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sparse_encoder(tmp_path_factory.mktemp("splade"))


@pytest.fixture(scope="module")
def splade(splade_path: Path) -> LLM:
    return LLM(str(splade_path), dtype="float32")


@pytest.fixture(scope="module")
def multi_vector_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_multi_vector_encoder(tmp_path_factory.mktemp("colbert"))


@pytest.fixture(scope="module")
def multi_vector(multi_vector_path: Path) -> LLM:
    return LLM(str(multi_vector_path), dtype="float32")


@pytest.fixture(scope="module")
def m3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bge_m3_like(tmp_path_factory.mktemp("bge_m3"), colbert_dim=24)


@pytest.fixture(scope="module")
def m3(m3_path: Path) -> LLM:
    return LLM(str(m3_path), dtype="float32")


def sparse_reference(path: Path, texts: list[str], **kwargs: Any) -> np.ndarray:
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(path), device="cpu")
    return model.encode(texts, convert_to_sparse_tensor=False, convert_to_tensor=True, **kwargs).numpy()


def assert_same_sparse(output: SparseEmbeddingOutput, reference: np.ndarray) -> None:
    """Same non-zero ids, weights to 1e-5.

    A weight within 1e-5 of zero may land on either side of the ReLU on another CPU's kernels, so only such
    borderline ids may differ between the two active sets.
    """
    (ids,) = np.nonzero(reference)
    differing = np.setxor1d(output.indices, ids)
    assert np.abs(reference[differing]).max(initial=0) < 1e-5, f"active sets differ at {differing}"
    np.testing.assert_allclose(output.to_dense(), reference, rtol=1e-5, atol=1e-5)


# -- SPLADE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy, activation", [("max", "relu"), ("sum", "relu"), ("max", "log1p_relu")])
def test_splade_matches_sparse_encoder(tmp_path: Path, strategy: str, activation: str) -> None:
    path = build_sparse_encoder(tmp_path, pooling_strategy=strategy, activation_function=activation)
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.outputs == ("sparse",)
    reference = sparse_reference(path, TEXTS)
    outputs = llm.embed(TEXTS)
    for output, expected in zip(outputs, reference):
        assert isinstance(output.outputs, SparseEmbeddingOutput)
        assert output.outputs.dim == expected.shape[0] == llm.model_config.hf_config.vocab_size
        assert 0 < output.outputs.num_active_dims < output.outputs.dim
        assert_same_sparse(output.outputs, expected)
        np.testing.assert_allclose(output.outputs.to_dense(), expected, atol=1e-5)


def test_splade_batched_equals_single_and_pads_nothing(splade: LLM) -> None:
    batched = splade.embed(TEXTS)
    for text, whole in zip(TEXTS, batched):
        (single,) = splade.embed(text)
        np.testing.assert_array_equal(single.outputs.indices, whole.outputs.indices)
        np.testing.assert_allclose(single.outputs.values, whole.outputs.values, atol=1e-5)


def test_splade_padded_path_matches_packed(splade_path: Path, splade: LLM) -> None:
    padded = LLM(str(splade_path), dtype="float32", packing="off")
    for a, b in zip(padded.embed(TEXTS), splade.embed(TEXTS)):
        np.testing.assert_array_equal(a.outputs.indices, b.outputs.indices)
        np.testing.assert_allclose(a.outputs.values, b.outputs.values, atol=1e-5)


def test_max_active_dims_matches_sparse_encoder(splade_path: Path, splade: LLM) -> None:
    reference = sparse_reference(splade_path, TEXTS, max_active_dims=3)
    for output, expected in zip(splade.embed(TEXTS, pooling_params=PoolingParams(max_active_dims=3)), reference):
        assert output.outputs.num_active_dims <= 3
        assert_same_sparse(output.outputs, expected)


def test_legacy_mlm_transformer_checkpoint(tmp_path: Path) -> None:
    """Checkpoints saved before sentence-transformers 5.4 name the module MLMTransformer."""
    path = build_sparse_encoder(tmp_path)
    modules = json.loads((path / "modules.json").read_text())
    modules[0]["type"] = "sentence_transformers.sparse_encoder.modules.MLMTransformer"
    (path / "modules.json").write_text(json.dumps(modules))
    config = json.loads((path / "sentence_bert_config.json").read_text())
    config.pop("transformer_task")
    (path / "sentence_bert_config.json").write_text(json.dumps(config))
    reference = sparse_reference(path, TEXTS[:3])
    for output, expected in zip(LLM(str(path), dtype="float32").embed(TEXTS[:3]), reference):
        assert_same_sparse(output.outputs, expected)


def test_splade_scores_by_dot_product(splade_path: Path, splade: LLM) -> None:
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(splade_path), device="cpu")
    expected = model.similarity(model.encode([QUERY]), model.encode(TEXTS)).numpy()[0]
    scores = [o.outputs.score for o in splade.score(QUERY, TEXTS)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_splade_bf16_keeps_the_largest_weights(splade_path: Path, splade: LLM) -> None:
    """bf16 (this CPU's default where it has native bf16): dense vocabulary vectors cos >= 0.99 vs fp32."""
    bf16 = LLM(str(splade_path), dtype="bfloat16")
    for a, b in zip(bf16.embed(TEXTS), splade.embed(TEXTS)):
        x, y = a.outputs.to_dense(), b.outputs.to_dense()
        assert float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) >= 0.99


def test_sparse_outputs_refuse_dense_options(splade: LLM) -> None:
    name = splade.model_config.served_model_name
    with pytest.raises(ValueError, match=f'Model "{name}" returns sparse embeddings here; dimensions'):
        splade.embed("a", pooling_params=PoolingParams(dimensions=8))
    with pytest.raises(ValueError, match="normalize apply to dense embeddings only"):
        splade.embed("a", pooling_params=PoolingParams(normalize=True))
    with pytest.raises(ValueError, match="does not produce multi-vector embeddings; its outputs: sparse"):
        splade.embed("a", pooling_params=PoolingParams(output="multi_vector"))
    with pytest.raises(ValueError, match="max_active_dims must be a positive"):
        splade.embed("a", pooling_params=PoolingParams(max_active_dims=0))
    with pytest.raises(ValueError, match="enable_chunked_processing merges dense vectors"):
        LLM(splade.model_config.model_path, dtype="float32",
            override_pooler_config={"enable_chunked_processing": True})


def test_dense_model_refuses_sparse_requests(tmp_path: Path) -> None:
    llm = LLM(str(build_tiny_checkpoint(tmp_path, "encoder")), dtype="float32")
    with pytest.raises(ValueError, match="does not produce sparse embeddings; its outputs: dense"):
        llm.embed("a", pooling_params=PoolingParams(output="sparse"))
    with pytest.raises(ValueError, match="max_active_dims applies to sparse embeddings"):
        llm.embed("a", pooling_params=PoolingParams(max_active_dims=3))
    with pytest.raises(ValueError, match="Unknown output 'colbert'"):
        llm.embed("a", pooling_params=PoolingParams(output="colbert"))


def test_inference_free_sparse_modules_are_still_refused(splade_path: Path, tmp_path: Path) -> None:
    import shutil

    path = Path(shutil.copytree(splade_path, tmp_path / "router"))
    modules = json.loads((path / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Static",
                    "type": "sentence_transformers.sparse_encoder.modules.SparseStaticEmbedding"})
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"SparseStaticEmbedding.*inference-free"):
        LLM(str(path), dtype="float32")


@pytest.fixture(scope="module")
def inference_free_path(splade_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inference-free SparseEncoder as sentence-transformers saves it: a Router with static per-token weights
    for queries (SparseStaticEmbedding) and SPLADE for documents, each in its own folder."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(splade_path))
    weights = torch.rand(len(tokenizer), generator=torch.Generator().manual_seed(3)) * 3
    router = Router.for_query_document(
        query_modules=[SparseStaticEmbedding(tokenizer=tokenizer, weight=weights, frozen=True)],
        document_modules=[Transformer(str(splade_path), transformer_task="fill-mask"), SpladePooling("max")])
    path = tmp_path_factory.mktemp("inference_free")
    SparseEncoder(modules=[router], device="cpu").save(str(path))
    return path


def test_inference_free_sparse_encoder(inference_free_path: Path) -> None:
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(inference_free_path), device="cpu")
    llm = LLM(str(inference_free_path), dtype="float32")
    assert llm.model_config.sparse.static_role == "query"
    forward = []
    run = llm.engine.runner.execute
    llm.engine.runner.execute = lambda batch: (forward.append(len(batch)), run(batch))[1]
    queries = llm.embed(TEXTS, prompt_name="query")
    assert forward == []  # queries are encoded from their token ids: no forward pass
    for output, expected in zip(queries, model.encode_query(TEXTS, convert_to_sparse_tensor=False,
                                                            convert_to_tensor=True).numpy()):
        assert_same_sparse(output.outputs, expected)
    documents = llm.embed(TEXTS)
    assert sum(forward) == len(TEXTS)
    for output, expected in zip(documents, model.encode_document(TEXTS, convert_to_sparse_tensor=False,
                                                                 convert_to_tensor=True).numpy()):
        assert_same_sparse(output.outputs, expected)
    expected_scores = model.similarity(model.encode_query([QUERY]), model.encode_document(TEXTS)).numpy()[0]
    np.testing.assert_allclose([o.outputs.score for o in llm.score(QUERY, TEXTS)], expected_scores, rtol=1e-5, atol=1e-5)


def test_inference_free_queries_served(inference_free_path: Path) -> None:
    llm = LLM(str(inference_free_path), dtype="float32")
    expected = [o.outputs for o in llm.embed(TEXTS[:3], prompt_name="query")]

    async def scenario() -> None:
        async with serving(llm) as (_, client):
            tei = await client.post("/embed_sparse", json={"inputs": TEXTS[:3], "prompt_name": "query"})
            openai_style = await client.post("/v1/embeddings", json={"input": TEXTS[:3], "prompt_name": "query"})
        for item, data, out in zip(tei.json(), openai_style.json()["data"], expected):
            assert [v["index"] for v in item] == data["embedding"]["indices"] == out.indices.tolist()
            np.testing.assert_allclose([v["value"] for v in item], out.values, rtol=1e-6)

    asyncio.run(scenario())


def test_other_router_checkpoints_are_refused(inference_free_path: Path, tmp_path: Path) -> None:
    import shutil

    path = Path(shutil.copytree(inference_free_path, tmp_path / "router"))
    config = json.loads((path / "router_config.json").read_text())
    config["structure"]["query"] = config["structure"]["document"]  # SPLADE on both routes
    (path / "router_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="poolkit serves the inference-free sparse form only"):
        LLM(str(path), dtype="float32")


# -- multi-vector -------------------------------------------------------------------------------------


def assert_same_tokens(output: MultiVectorOutput, reference: torch.Tensor) -> None:
    assert output.numpy().shape == tuple(reference.shape)
    cos = F.cosine_similarity(torch.from_numpy(output.numpy()), reference.float(), dim=-1)
    assert float(cos.min()) >= 0.9999


def test_multi_vector_matches_multi_vector_encoder(multi_vector_path: Path, multi_vector: LLM) -> None:
    from sentence_transformers import MultiVectorEncoder

    model = MultiVectorEncoder(str(multi_vector_path), device="cpu")
    assert multi_vector.model_config.outputs == ("multi_vector",)
    documents = multi_vector.embed(TEXTS)
    for output, expected in zip(documents, model.encode_document(TEXTS)):
        assert isinstance(output.outputs, MultiVectorOutput)
        assert_same_tokens(output.outputs, expected)
    queries = multi_vector.embed(TEXTS, prompt_name="query")
    for output, expected in zip(queries, model.encode_query(TEXTS)):
        assert_same_tokens(output.outputs, expected)
    # The punctuation skiplist applies to documents only.
    assert queries[6].outputs.num_vectors > documents[6].outputs.num_vectors


def test_multi_vector_maxsim_scores(multi_vector_path: Path, multi_vector: LLM) -> None:
    from sentence_transformers import MultiVectorEncoder

    model = MultiVectorEncoder(str(multi_vector_path), device="cpu")
    expected = model.similarity(model.encode_query([QUERY]), model.encode_document(TEXTS)).numpy()[0]
    scores = [o.outputs.score for o in multi_vector.score(QUERY, TEXTS)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    # A text on both sides is embedded once per role: query-side tokens the skiplist would drop still count.
    (same,) = multi_vector.score(TEXTS[6], TEXTS[6])
    q = model.encode_query([TEXTS[6]])
    d = model.encode_document([TEXTS[6]])
    assert same.outputs.score == pytest.approx(float(model.similarity(q, d)[0, 0]), rel=1e-5)


def test_multi_vector_batched_equals_single(multi_vector: LLM) -> None:
    batched = multi_vector.embed(TEXTS)
    for text, whole in zip(TEXTS, batched):
        (single,) = multi_vector.embed(text)
        np.testing.assert_allclose(single.outputs.numpy(), whole.outputs.numpy(), atol=1e-5)


@pytest.mark.parametrize("expansion", [
    {"strategy": "fixed", "attend": False, "length": 16},   # classic ColBERT: nothing attends to the [MASK]s
    {"strategy": "fixed", "attend": True, "length": 16},
    {"strategy": "min", "attend": False, "length": 12},
])
@pytest.mark.parametrize("packing", ["auto", "off"])
def test_colbert_query_expansion_matches_multi_vector_encoder(tmp_path: Path, expansion: dict, packing: str) -> None:
    from sentence_transformers import MultiVectorEncoder

    path = build_multi_vector_encoder(tmp_path, query_expansion=expansion, query_length=20, document_length=14)
    model = MultiVectorEncoder(str(path), device="cpu")
    llm = LLM(str(path), dtype="float32", packing=packing)
    queries = [QUERY, "fox", TEXTS[6], SAMPLE_TEXTS[0] + " " + SAMPLE_TEXTS[1]]  # the last one is over length
    cut = {"truncate_prompt_tokens": -1}
    got = llm.embed(queries, prompt_name="query", **cut)
    for output, expected in zip(got, model.encode_query(queries)):
        assert_same_tokens(output.outputs, expected)
    for output, expected in zip(llm.embed(TEXTS, **cut), model.encode_document(TEXTS)):
        assert_same_tokens(output.outputs, expected)
    expected_scores = model.similarity(model.encode_query([QUERY]), model.encode_document(TEXTS)).numpy()[0]
    scores = [o.outputs.score for o in llm.score(QUERY, TEXTS, **cut)]
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="more than the 14 this model takes in a document"):
        llm.embed(SAMPLE_TEXTS[0] + " " + SAMPLE_TEXTS[1])


def test_query_expansion_batched_equals_single(tmp_path: Path) -> None:
    path = build_multi_vector_encoder(tmp_path, query_expansion={"strategy": "fixed", "attend": False, "length": 16})
    llm = LLM(str(path), dtype="float32")
    batched = llm.embed([*TEXTS[:4], *TEXTS[:4]], prompt_name="query")
    for text, whole in zip(TEXTS[:4], batched):
        (single,) = llm.embed(text, prompt_name="query")
        np.testing.assert_allclose(single.outputs.numpy(), whole.outputs.numpy(), atol=1e-5)


# -- BGE-M3 -----------------------------------------------------------------------------------------


def m3_reference(path: Path, texts: list[str]) -> list[dict[str, Any]]:
    """FlagEmbedding's BGEM3 outputs (dense CLS, lexical weights, ColBERT vectors) from the transformers backbone."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    colbert = torch.nn.Linear(model.config.hidden_size, 24)
    colbert.load_state_dict(torch.load(path / "colbert_linear.pt", weights_only=True))
    sparse = torch.nn.Linear(model.config.hidden_size, 1)
    sparse.load_state_dict(torch.load(path / "sparse_linear.pt", weights_only=True))
    unused = {getattr(tokenizer, n) for n in ("cls_token_id", "eos_token_id", "pad_token_id", "unk_token_id")}
    results = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            hidden = model(**ids).last_hidden_state[0]
            weights: dict[int, float] = {}
            for token, weight in zip(ids["input_ids"][0].tolist(), torch.relu(sparse(hidden)).squeeze(-1).tolist()):
                if token not in unused and weight > 0:
                    weights[token] = max(weights.get(token, 0.0), weight)
            results.append({"dense": F.normalize(hidden[0], dim=-1).numpy(), "sparse": weights,
                            "colbert": F.normalize(colbert(hidden[1:]), dim=-1)})
    return results


def test_bge_m3_three_outputs_match_flag_embedding(m3_path: Path, m3: LLM) -> None:
    assert m3.model_config.outputs == ("dense", "sparse", "multi_vector")
    reference = m3_reference(m3_path, TEXTS)
    dense = m3.embed(TEXTS)
    sparse = m3.embed(TEXTS, pooling_params=PoolingParams(output="sparse"))
    colbert = m3.embed(TEXTS, pooling_params=PoolingParams(output="multi_vector"))
    for d, s, c, ref in zip(dense, sparse, colbert, reference):
        np.testing.assert_allclose(d.outputs.numpy(), ref["dense"], atol=1e-5)
        assert s.outputs.embedding.keys() == ref["sparse"].keys()
        np.testing.assert_allclose([s.outputs.embedding[k] for k in ref["sparse"]], list(ref["sparse"].values()),
                                   rtol=1e-5, atol=1e-5)
        assert_same_tokens(c.outputs, ref["colbert"])


def test_bge_m3_scores_per_output(m3_path: Path, m3: LLM) -> None:
    (query,), docs = m3_reference(m3_path, [QUERY]), m3_reference(m3_path, TEXTS)
    lexical = [sum(w * d["sparse"].get(t, 0.0) for t, w in query["sparse"].items()) for d in docs]
    colbert = [float((query["colbert"] @ d["colbert"].T).max(dim=1).values.mean()) for d in docs]
    scores = {out: [o.outputs.score for o in m3.score(QUERY, TEXTS, pooling_params=PoolingParams(output=out))]
              for out in ("sparse", "multi_vector")}
    np.testing.assert_allclose(scores["sparse"], lexical, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores["multi_vector"], colbert, rtol=1e-5, atol=1e-5)


def test_bge_m3_mixed_outputs_in_one_batch(m3: LLM) -> None:
    """A merged server batch may ask one model for different outputs: each row gets its own."""
    kinds = ["dense", "sparse", "multi_vector"] * 2
    requests = [m3.prepare("embed", [text], PoolingParams(output=kind)) for text, kind in zip(TEXTS, kinds)]
    prompts = [p for r in requests for p in r.prompts]
    options = [o for r in requests for o in r.options]
    pooled = m3.engine.execute(prompts, options)
    for text, kind, value in zip(TEXTS, kinds, pooled):
        (alone,) = m3.embed(text, pooling_params=PoolingParams(output=kind))
        np.testing.assert_allclose(value, alone.outputs.numpy(), atol=1e-5)


# -- server -----------------------------------------------------------------------------------------------


def test_server_sparse_multi_vector_and_errors(splade: LLM, multi_vector: LLM) -> None:
    async def scenario() -> None:
        async with serving(splade) as (_, client):
            expected = splade.embed(TEXTS[:3])
            response = await client.post("/v1/embeddings", json={"input": TEXTS[:3]})
            assert response.status_code == 200
            for item, out in zip(response.json()["data"], expected):
                assert item["embedding"]["indices"] == out.outputs.indices.tolist()
                np.testing.assert_allclose(item["embedding"]["values"], out.outputs.values, rtol=1e-6)
            tei = await client.post("/embed_sparse", json={"inputs": TEXTS[:3], "truncate": True})
            assert tei.status_code == 200
            for item, out in zip(tei.json(), expected):
                assert [v["index"] for v in item] == out.outputs.indices.tolist()
            top = await client.post("/embed_sparse", json={"inputs": TEXTS[0], "max_active_dims": 2})
            assert len(top.json()[0]) == 2
            card = (await client.get("/v1/models")).json()["data"][0]
            assert card["outputs"] == ["sparse"]
            for body, message in [
                ({"input": "a", "dimensions": 4}, "returns sparse embeddings here; dimensions"),
                ({"input": "a", "output": "multi_vector"}, "does not produce multi-vector embeddings"),
                ({"input": "a", "encoding_format": "base64"}, "encoding_format base64"),
            ]:
                error = await client.post("/v1/embeddings", json=body)
                assert error.status_code == 400 and message in error.json()["message"]
                assert error.json()["object"] == "error" and error.json()["code"] == 400
            dense_only = await client.post("/v2/embed", json={"texts": ["a"], "embedding_types": ["float"],
                                                              "input_type": "search_document"})
            assert dense_only.status_code == 400 and "does not produce dense embeddings" in dense_only.text
            still = await client.post("/v1/embeddings", json={"input": TEXTS[0]})
            assert still.status_code == 200

        async with serving(multi_vector) as (_, client):
            expected = multi_vector.embed(TEXTS[:2])
            response = await client.post("/v1/embeddings", json={"input": TEXTS[:2]})
            for item, out in zip(response.json()["data"], expected):
                np.testing.assert_allclose(item["embedding"], out.outputs.numpy(), atol=1e-6)
            packed = await client.post("/v1/embeddings", json={"input": TEXTS[:1], "encoding_format": "base64"})
            raw = np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), dtype="<f4")
            np.testing.assert_array_equal(raw, expected[0].outputs.numpy().ravel())
            pooling = await client.post("/pooling", json={"input": TEXTS[:1]})
            np.testing.assert_allclose(pooling.json()["data"][0]["data"], expected[0].outputs.numpy(), atol=1e-6)
            rerank = await client.post("/rerank", json={"query": QUERY, "documents": TEXTS})
            scores = {r["index"]: r["relevance_score"] for r in rerank.json()["results"]}
            offline = [o.outputs.score for o in multi_vector.score(QUERY, TEXTS)]
            np.testing.assert_allclose([scores[i] for i in range(len(TEXTS))], offline, rtol=1e-6)
            sparse = await client.post("/embed_sparse", json={"inputs": "a"})
            assert sparse.status_code == 400 and sparse.json()["object"] == "error"

    asyncio.run(scenario())
