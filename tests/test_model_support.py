"""Models that must load right or not at all: LLM rerankers, T5 encoders, sliding windows, and loud refusals.

References are computed here with transformers / sentence-transformers in fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

from poolkit import LLM
from poolkit.loader import QWEN3_RERANKER_TEMPLATE
from poolkit.testing import (
    SAMPLE_TEXTS,
    _bert_config,
    add_sentence_transformers_files,
    build_bpe_tokenizer,
    build_tiny_checkpoint,
    build_wordpiece_tokenizer,
)

pytestmark = pytest.mark.unit

QWEN3_RERANKER = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
                  "is_original_qwen3_reranker": True}
QUERY = "What is the capital of France?"
DOCS = SAMPLE_TEXTS[:5]


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("llm_reranker"), "llm-reranker")


def causal_lm_yes_probability(path: Path, texts: list[str] | list[list[int]]) -> np.ndarray:
    """The reference: the whole causal LM, softmax over "no" and "yes" at the last position."""
    model = tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    answers = tokenizer.convert_tokens_to_ids(["no", "yes"])
    probs = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"] if isinstance(text, str) else text
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            probs.append(torch.softmax(logits[answers], dim=-1)[1].item())
    return np.array(probs)


def test_qwen3_reranker_overrides_match_the_causal_lm(reranker_path: Path) -> None:
    llm = LLM(str(reranker_path), dtype="float32", hf_overrides=QWEN3_RERANKER)
    assert llm.model_config.task == "score"
    assert llm.engine.runner.packing
    scores = np.array([o.outputs.score for o in llm.score(QUERY, DOCS, use_tqdm=False)])
    expected = causal_lm_yes_probability(reranker_path, [QWEN3_RERANKER_TEMPLATE.format(query=QUERY, document=d)
                                                         for d in DOCS])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # Batched pairs equal single ones, in order.
    single = [llm.score(QUERY, d, use_tqdm=False)[0].outputs.score for d in reversed(DOCS)]
    np.testing.assert_allclose(single[::-1], scores, atol=1e-6)
    assert "classifier_from_token" in repr(llm)


def test_reranker_template_is_overridable_and_no_post_processing_keeps_both_logits(reranker_path: Path) -> None:
    template = "Query: {query}\nDocument: {document}\nRelevant:"
    overrides = {**QWEN3_RERANKER, "is_original_qwen3_reranker": False, "method": "no_post_processing"}
    llm = LLM(str(reranker_path), dtype="float32", hf_overrides=overrides)
    assert llm.model_config.task == "classify"  # two labels: a classifier over the answer tokens
    texts = [template.format(query=QUERY, document=d) for d in DOCS]
    probs = np.array([o.outputs.probs for o in llm.classify(texts, use_tqdm=False)])
    np.testing.assert_allclose(probs[:, 1], causal_lm_yes_probability(reranker_path, texts), atol=1e-5)

    custom = LLM(str(reranker_path), dtype="float32", hf_overrides=QWEN3_RERANKER, score_template=template)
    scores = np.array([o.outputs.score for o in custom.score(QUERY, DOCS, use_tqdm=False)])
    np.testing.assert_allclose(scores, causal_lm_yes_probability(reranker_path, texts), atol=1e-5)


def test_reranker_truncation_cuts_the_document_not_the_template(reranker_path: Path) -> None:
    llm = LLM(str(reranker_path), dtype="float32", hf_overrides=QWEN3_RERANKER)
    long_doc = " ".join(SAMPLE_TEXTS * 8)
    out = llm.score(QUERY, long_doc, truncate_prompt_tokens=200, use_tqdm=False)[0]
    suffix = llm.tokenizer(QWEN3_RERANKER_TEMPLATE.split("{document}")[1], add_special_tokens=False)["input_ids"]
    assert len(out.prompt_token_ids) <= 200
    assert out.prompt_token_ids[-len(suffix):] == suffix
    assert "Paris" in llm.tokenizer.decode(out.prompt_token_ids)  # the document's start is kept
    expected = causal_lm_yes_probability(reranker_path, [out.prompt_token_ids])
    assert out.outputs.score == pytest.approx(float(expected[0]), abs=1e-5)
    with pytest.raises(ValueError, match="more than the model's maximum"):
        llm.score(QUERY, long_doc * 4, use_tqdm=False)


def test_random_score_head_is_refused(reranker_path: Path) -> None:
    """Routing a causal LM to *ForSequenceClassification without classifier_from_token leaves a random head."""
    with pytest.raises(ValueError, match=r"no weights for score\.weight.*initialise them randomly"):
        LLM(str(reranker_path), dtype="float32", hf_overrides={"architectures": ["Qwen3ForSequenceClassification"]})


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"classifier_from_token": ["no", "yes"]}, "route the checkpoint"),
        ({**QWEN3_RERANKER, "classifier_from_token": ["no", "maybe", "yes"]}, "takes two tokens"),
        ({**QWEN3_RERANKER, "method": "softmax_of_everything"}, "Unknown classifier_from_token method"),
        ({**QWEN3_RERANKER, "classifier_from_token": ["nope", "yes"]}, "not a token of this model's vocabulary"),
    ],
)
def test_bad_classifier_from_token_is_refused(reranker_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLM(str(reranker_path), dtype="float32", hf_overrides=overrides)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"hf_overrides": QWEN3_RERANKER, "score_template": "{query} only"}, "once each"),
        ({"hf_overrides": QWEN3_RERANKER, "score_template": "{query} {document} {instruction}"}, "format string"),
        ({"score_template": "{query} {document}"}, "task 'score'"),
    ],
)
def test_bad_score_template_is_refused(reranker_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LLM(str(reranker_path), dtype="float32", **kwargs)


@pytest.mark.parametrize("cpu_prepack", [True, False])
def test_t5_encoder_matches_sentence_transformers(tmp_path: Path, cpu_prepack: bool) -> None:
    from sentence_transformers import SentenceTransformer

    path = build_tiny_checkpoint(tmp_path, "t5-encoder")
    add_sentence_transformers_files(path, pooling="mean", normalize=True, dense_out=24)
    reference = SentenceTransformer(str(path), device="cpu").encode(SAMPLE_TEXTS, convert_to_numpy=True)
    llm = LLM(str(path), dtype="float32", cpu_prepack=cpu_prepack)
    assert type(llm.engine.runner.model).__name__ == "T5EncoderModel"
    ours = np.array([o.outputs.embedding for o in llm.embed(SAMPLE_TEXTS, use_tqdm=False)])
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert "packing=False (its attention does not go through" in repr(llm)


def test_t5_checkpoint_without_st_files_pools_by_mean(tmp_path: Path) -> None:
    path = build_tiny_checkpoint(tmp_path, "t5-encoder")
    write_architecture(path, "T5Model")  # the encoder-decoder class: only its encoder embeds
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.pooler_config.pooling_type == "MEAN"
    model = tf.T5EncoderModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        for text, out in zip(SAMPLE_TEXTS, llm.embed(SAMPLE_TEXTS, use_tqdm=False)):
            hidden = model(**llm.tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0)
            expected = torch.nn.functional.normalize(hidden, dim=-1).numpy()
            np.testing.assert_allclose(out.outputs.embedding, expected, atol=1e-5)


def write_architecture(path: Path, architecture: str) -> None:
    import json

    config = json.loads((path / "config.json").read_text())
    config["architectures"] = [architecture]
    (path / "config.json").write_text(json.dumps(config))


def test_other_image_text_models_are_refused_at_load(tmp_path: Path) -> None:
    """Two-tower CLIP/SigLIP models are served (tests/test_multimodal.py); other models with a vision tower
    would run their text half only."""
    path = build_tiny_checkpoint(tmp_path, "clip")
    write_architecture(path, "CLIPTextModelWithProjection")
    with pytest.raises(ValueError, match="CLIPTextModelWithProjection is a multimodal model"):
        LLM(str(path), dtype="float32")


def test_forward_failure_is_a_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that loads but cannot run on text fails in LLM(...), so a server never reports healthy."""
    path = build_tiny_checkpoint(tmp_path, "encoder")

    def needs_images(self, *args, **kwargs):
        raise TypeError("forward() missing 1 required argument: 'pixel_values'")

    monkeypatch.setattr(tf.BertModel, "forward", needs_images)
    with pytest.raises(ValueError, match=r"loaded but a forward pass on text failed.*pixel_values"):
        LLM(str(path), dtype="float32", packing="off")


def _mistral(path: Path, window: int) -> Path:
    tokenizer = build_bpe_tokenizer(path)
    torch.manual_seed(0)
    tf.MistralModel(tf.MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, sliding_window=window, pad_token_id=tokenizer.eos_token_id,
    )).save_pretrained(str(path))
    return path


def _modernbert(path: Path, window: int) -> Path:
    tokenizer = build_wordpiece_tokenizer(path)
    torch.manual_seed(0)
    tf.ModernBertModel(tf.ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=128, local_attention=window, global_attn_every_n_layers=3,
        pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    )).save_pretrained(str(path))
    return path


def _gemma3_bidirectional(path: Path, window: int) -> Path:
    tokenizer = build_bpe_tokenizer(path)
    torch.manual_seed(0)
    tf.Gemma3TextModel(tf.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, sliding_window=window,
        use_bidirectional_attention=True, layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.eos_token_id,
    )).save_pretrained(str(path))
    return path


# Windows the longest sample texts (11-16 tokens) exceed and the shortest do not.
@pytest.mark.parametrize("build,window", [(_mistral, 8), (_modernbert, 8), (_gemma3_bidirectional, 6)],
                         ids=["mistral-causal", "modernbert-local", "gemma3-bidirectional"])
def test_sliding_window_packed_equals_padded_and_transformers(tmp_path: Path, build, window: int) -> None:
    path = build(tmp_path, window)
    texts = [*SAMPLE_TEXTS, "short", "a b"]
    packed = LLM(str(path), dtype="float32", packing="on")
    padded = LLM(str(path), dtype="float32", packing="off")
    lengths = [len(packed.tokenizer(t)["input_ids"]) for t in texts]
    reach = window + 1 if build is _modernbert else window  # ModernBERT's window is local_attention / 2 + 1
    assert min(lengths) <= reach < max(lengths)
    a = np.array([o.outputs.embedding for o in packed.embed(texts, use_tqdm=False)])
    b = np.array([o.outputs.embedding for o in padded.embed(texts, use_tqdm=False)])
    np.testing.assert_allclose(a, b, atol=1e-5)
    model = tf.AutoModel.from_pretrained(str(path)).eval()
    pooling = packed.model_config.pooler_config.pooling_type
    with torch.no_grad():
        for text, vector in zip(texts, a):
            hidden = model(**packed.tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            pooled = {"CLS": hidden[0], "LAST": hidden[-1], "MEAN": hidden.mean(0)}[pooling]
            np.testing.assert_allclose(vector, torch.nn.functional.normalize(pooled, dim=-1).numpy(), atol=1e-5)


def test_padded_models_say_why_in_repr(tmp_path: Path) -> None:
    tokenizer = build_wordpiece_tokenizer(tmp_path)
    config = _bert_config(len(tokenizer))
    tf.MPNetModel(tf.MPNetConfig(**{**config.to_dict(), "pad_token_id": tokenizer.pad_token_id})).save_pretrained(
        str(tmp_path))
    llm = LLM(str(tmp_path), dtype="float32")
    assert not llm.engine.runner.packing
    assert "packing=False (its attention does not go through transformers' AttentionInterface)" in repr(llm)


async def test_server_rerank_applies_the_template_to_raw_query_and_documents(reranker_path: Path) -> None:
    from poolkit.entrypoints.testing import serving

    llm = LLM(str(reranker_path), dtype="float32", hf_overrides=QWEN3_RERANKER)
    expected = causal_lm_yes_probability(reranker_path, [QWEN3_RERANKER_TEMPLATE.format(query=QUERY, document=d)
                                                         for d in DOCS])
    async with serving(llm) as (_, client):
        rerank = (await client.post("/rerank", json={"query": QUERY, "documents": DOCS})).json()
        score = (await client.post("/score", json={"text_1": QUERY, "text_2": DOCS})).json()
    by_index = {r["index"]: r["relevance_score"] for r in rerank["results"]}
    np.testing.assert_allclose([by_index[i] for i in range(len(DOCS))], expected, atol=1e-5)
    np.testing.assert_allclose([d["score"] for d in score["data"]], expected, atol=1e-5)
