"""Every pooling path on tiny random checkpoints against transformers / sentence-transformers.

References are computed in the test, one unpadded sequence at a time, so they
are independent of any batching or padding choice. fp32 throughout:
embeddings need cosine >= 0.9999, probabilities/scores agree to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from poolkit import LLM, PoolingParams
from poolkit.testing import SAMPLE_TEXTS

pytestmark = pytest.mark.unit

TEXTS = SAMPLE_TEXTS + ["short", "a somewhat longer sentence about vector search and rerankers in retrieval"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _embeddings(llm: LLM, texts: list[str]) -> np.ndarray:
    return np.array([o.outputs.embedding for o in llm.embed(texts, use_tqdm=False)])


def _per_sequence_hidden(model: torch.nn.Module, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt")
            out.append(model(**enc).last_hidden_state[0])
    return out


@pytest.mark.parametrize(
    "pooling,normalize,dense_out",
    [("cls", True, None), ("mean", False, None), ("mean", True, 16), ("cls", False, 24), ("lasttoken", True, None)],
)
def test_sentence_transformers_encoder(tiny, pooling: str, normalize: bool, dense_out: int | None) -> None:
    from sentence_transformers import SentenceTransformer

    path = tiny("encoder", pooling=pooling, normalize=normalize, dense_out=dense_out)
    reference = SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    llm = LLM(str(path), dtype="float32")
    ours = _embeddings(llm, TEXTS)
    assert ours.shape == reference.shape == (len(TEXTS), dense_out or 32)
    assert _cosines(ours, reference).min() >= 0.9999
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)  # also checks (non-)normalization


def test_encoder_without_st_files_uses_architecture_cls(tiny) -> None:
    path = tiny("encoder")
    model = tf.AutoModel.from_pretrained(str(path)).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    reference = torch.stack([torch.nn.functional.normalize(h[0], dim=-1) for h in _per_sequence_hidden(model, tokenizer, TEXTS)])
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.pooler_config.pooling_type == "CLS"
    ours = _embeddings(llm, TEXTS)
    assert _cosines(ours, reference.numpy()).min() >= 0.9999


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_decoder_last_pooling_any_padding_side(tiny, padding_side: str) -> None:
    path = tiny("decoder", padding_side=padding_side)
    model = tf.AutoModel.from_pretrained(str(path)).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    assert tokenizer.padding_side == padding_side
    reference = torch.stack([torch.nn.functional.normalize(h[-1], dim=-1) for h in _per_sequence_hidden(model, tokenizer, TEXTS)])
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.pooler_config.pooling_type == "LAST"
    ours = _embeddings(llm, TEXTS)
    assert _cosines(ours, reference.numpy()).min() >= 0.9999


def test_decoder_results_identical_for_left_and_right_padding(tiny) -> None:
    left = _embeddings(LLM(str(tiny("decoder", padding_side="left")), dtype="float32"), TEXTS)
    right = _embeddings(LLM(str(tiny("decoder", padding_side="right")), dtype="float32"), TEXTS)
    np.testing.assert_allclose(left, right, atol=1e-6)


def _reference_logits(path, texts: list[str], auto_cls=tf.AutoModelForSequenceClassification) -> torch.Tensor:
    model = auto_cls.from_pretrained(str(path)).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])


@pytest.mark.parametrize(
    "kind,activation",
    [
        ("classifier", lambda x: torch.softmax(x, -1)),
        ("multilabel", torch.sigmoid),
        ("regression", lambda x: x),
        ("decoder-classifier", lambda x: torch.softmax(x, -1)),
    ],
)
def test_classifiers_match_transformers(tiny, kind: str, activation) -> None:
    path = tiny(kind)
    expected = activation(_reference_logits(path, TEXTS))
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.task == "classify"
    probs = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS, use_tqdm=False)])
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-5)
    raw = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS, pooling_params=PoolingParams(activation=False), use_tqdm=False)])
    torch.testing.assert_close(raw, _reference_logits(path, TEXTS), rtol=1e-5, atol=1e-5)
    # One call, activation on for some rows and off for others: each row as if asked alone.
    mixed_params = [PoolingParams(activation=i % 2 == 0) for i in range(len(TEXTS))]
    mixed = torch.tensor([o.outputs.probs for o in llm.classify(TEXTS, pooling_params=mixed_params, use_tqdm=False)])
    torch.testing.assert_close(mixed[0::2], expected[0::2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1::2], raw[1::2], rtol=1e-5, atol=1e-5)


def test_softmax_is_stable_for_large_logits() -> None:
    from poolkit.pooling import apply_activation

    probs = apply_activation(torch.tensor([[1000.0, 0.0, -1000.0]]), "softmax")
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0, 0.0]]))


def test_cross_encoder_matches_sentence_transformers_and_transformers(tiny) -> None:
    from sentence_transformers import CrossEncoder

    path = tiny("cross-encoder")
    query, docs = TEXTS[9], TEXTS[:9]
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.task == "score"
    ours = np.array([o.outputs.score for o in llm.score(query, docs, use_tqdm=False)])
    st_scores = CrossEncoder(str(path), device="cpu").predict([(query, d) for d in docs])
    np.testing.assert_allclose(ours, st_scores, rtol=1e-5, atol=1e-6)
    model = tf.AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    with torch.no_grad():
        hf = [torch.sigmoid(model(**tokenizer(query, d, return_tensors="pt")).logits).item() for d in docs]
    np.testing.assert_allclose(ours, hf, rtol=1e-5, atol=1e-6)
    # token_type_ids reached the model: the pair encoding is the tokenizer's own
    (first,) = llm.score(query, docs[0], use_tqdm=False)
    assert first.prompt_token_ids == tokenizer(query, docs[0])["input_ids"]


def test_score_shapes_1_1_1_n_n_n(tiny) -> None:
    llm = LLM(str(tiny("cross-encoder")), dtype="float32")
    one_to_n = [o.outputs.score for o in llm.score(TEXTS[0], TEXTS[1:4], use_tqdm=False)]
    n_to_n = [o.outputs.score for o in llm.score([TEXTS[0]] * 3, TEXTS[1:4], use_tqdm=False)]
    singles = [llm.score(TEXTS[0], t, use_tqdm=False)[0].outputs.score for t in TEXTS[1:4]]
    np.testing.assert_allclose(one_to_n, n_to_n, atol=1e-6)
    np.testing.assert_allclose(one_to_n, singles, atol=1e-6)
    with pytest.raises(ValueError, match="1:1, 1:N or N:N"):
        llm.score(TEXTS[:2], TEXTS[:3])


def test_embedding_model_score_is_cosine(tiny) -> None:
    llm = LLM(str(tiny("encoder", pooling="mean", normalize=True)), dtype="float32")
    emb = _embeddings(llm, TEXTS[:4])
    scores = [o.outputs.score for o in llm.score(TEXTS[0], TEXTS[:4], use_tqdm=False)]
    np.testing.assert_allclose(scores, emb @ emb[0], atol=1e-5)


def _step_reference(path, texts):
    model = tf.AutoModelForTokenClassification.from_pretrained(str(path)).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tokenizer(t, return_tensors="pt")
            out.append((enc["input_ids"][0], model(**enc).logits[0]))
    return tokenizer, out


def test_reward_all_pooling_per_token(tiny) -> None:
    path = tiny("reward")
    _, reference = _step_reference(path, TEXTS)
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.task == "reward"
    outs = llm.reward(TEXTS, use_tqdm=False)
    for out, (ids, logits) in zip(outs, reference):
        assert out.prompt_token_ids == ids.tolist()
        torch.testing.assert_close(out.outputs.data, logits, rtol=1e-5, atol=1e-5)


def test_reward_step_pooling(tiny) -> None:
    path = tiny("reward")
    texts = ["Step one: add <step> Step two: halve <step> done <step>", "no steps here", "<step>"]
    tokenizer, reference = _step_reference(path, texts)
    step_id = tokenizer.convert_tokens_to_ids("<step>")
    override = {"pooling_type": "STEP", "step_tag_id": step_id, "returned_token_ids": [1]}
    raw = LLM(str(path), dtype="float32", override_pooler_config=override).encode(texts, use_tqdm=False)
    for out, (ids, logits) in zip(raw, reference):
        torch.testing.assert_close(out.outputs.data, logits[ids == step_id][:, [1]], rtol=1e-5, atol=1e-5)
    assert [o.outputs.data.shape[0] for o in raw] == [3, 0, 1]
    both = {"pooling_type": "STEP", "step_tag_id": step_id, "activation": True}
    probs = LLM(str(path), dtype="float32", override_pooler_config=both).encode(texts, use_tqdm=False)
    for out, (ids, logits) in zip(probs, reference):
        torch.testing.assert_close(out.outputs.data, torch.softmax(logits[ids == step_id], -1), rtol=1e-5, atol=1e-5)
