"""Offline API contracts: batching invariance, order, Matryoshka, pooler precedence, bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from poolkit import LLM, PoolerConfig, PoolingParams
from poolkit.testing import SAMPLE_TEXTS

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def encoder(tiny) -> LLM:
    return LLM(str(tiny("encoder", pooling="mean", normalize=True)), dtype="float32")


@pytest.fixture(scope="module")
def classifier(tiny) -> LLM:
    return LLM(str(tiny("classifier")), dtype="float32")


def _vectors(outs) -> np.ndarray:
    return np.array([o.outputs.embedding for o in outs])


def test_batched_equals_single_and_order_is_kept(tiny) -> None:
    # A small token budget forces many batches of different composition.
    llm = LLM(str(tiny("encoder", pooling="mean", normalize=True)), dtype="float32", max_num_batched_tokens=128)
    texts = SAMPLE_TEXTS * 3 + ["x " * n for n in range(1, 40, 3)]
    batched = _vectors(llm.embed(texts, use_tqdm=False))
    singles = np.array([llm.embed(t, use_tqdm=False)[0].outputs.embedding for t in texts])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    shuffled = _vectors(llm.embed([texts[i] for i in order], use_tqdm=False))
    np.testing.assert_allclose(shuffled, batched[order], atol=1e-5)


def test_classifier_batched_equals_single(classifier: LLM) -> None:
    batched = [o.outputs.probs for o in classifier.classify(SAMPLE_TEXTS, use_tqdm=False)]
    singles = [classifier.classify(t, use_tqdm=False)[0].outputs.probs for t in SAMPLE_TEXTS]
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_token_id_prompts_equal_text_prompts(encoder: LLM) -> None:
    ids = encoder.tokenizer(SAMPLE_TEXTS[:3])["input_ids"]
    from_ids = _vectors(encoder.embed(ids, use_tqdm=False))
    from_text = _vectors(encoder.embed(SAMPLE_TEXTS[:3], use_tqdm=False))
    np.testing.assert_allclose(from_ids, from_text, atol=1e-6)
    (single,) = encoder.embed(ids[0], use_tqdm=False)  # a flat list of ints is one prompt
    assert single.prompt_token_ids == ids[0]


def test_outputs_carry_prompt_token_ids(encoder: LLM) -> None:
    outs = encoder.embed(SAMPLE_TEXTS[:2], use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == encoder.tokenizer(SAMPLE_TEXTS[:2])["input_ids"]
    (enc,) = encoder.encode(SAMPLE_TEXTS[0], use_tqdm=False)
    assert isinstance(enc.outputs.data, torch.Tensor)
    np.testing.assert_allclose(enc.outputs.data.numpy(), outs[0].outputs.embedding, atol=1e-6)


def test_empty_list_gives_empty_result(encoder: LLM, classifier: LLM) -> None:
    assert encoder.embed([], use_tqdm=False) == []
    assert encoder.encode([], use_tqdm=False) == []
    assert classifier.classify([], use_tqdm=False) == []
    assert encoder.score("q", [], use_tqdm=False) == []


# -- Matryoshka -------------------------------------------------------------

NOT_MRL = ('Model "{name}" does not support matryoshka representation, '
           "changing output dimensions will lead to poor results.")


def test_matryoshka_refused_word_for_word(encoder: LLM) -> None:
    name = encoder.model_config.served_model_name
    with pytest.raises(ValueError) as err:
        encoder.embed("hi", pooling_params=PoolingParams(dimensions=8))
    assert str(err.value) == NOT_MRL.format(name=name)


def test_matryoshka_dimension_list_word_for_word(tiny) -> None:
    path = str(tiny("encoder", pooling="mean", normalize=True))
    llm = LLM(path, dtype="float32", hf_overrides={"matryoshka_dimensions": [8, 16]}, served_model_name="tiny-mrl")
    with pytest.raises(ValueError) as err:
        llm.embed("hi", pooling_params=PoolingParams(dimensions=12))
    assert str(err.value) == ('Model "tiny-mrl" only supports [8, 16] matryoshka dimensions, '
                              "use other output dimensions will lead to poor results.")
    full = np.array(llm.embed("hi", use_tqdm=False)[0].outputs.embedding)
    cut = np.array(llm.embed("hi", pooling_params=PoolingParams(dimensions=8), use_tqdm=False)[0].outputs.embedding)
    np.testing.assert_allclose(cut, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)


def test_matryoshka_dimension_must_be_positive(tiny) -> None:
    llm = LLM(str(tiny("encoder", pooling="mean", normalize=True)), dtype="float32", hf_overrides={"is_matryoshka": True})
    with pytest.raises(ValueError) as err:
        llm.embed("hi", pooling_params=PoolingParams(dimensions=0))
    assert str(err.value) == "Dimensions must be greater than 0"
    outs = llm.embed(["a", "b"], pooling_params=[PoolingParams(dimensions=4), PoolingParams()], use_tqdm=False)
    assert [len(o.outputs.embedding) for o in outs] == [4, 32]


def test_mixed_head_options_in_one_batch_equal_single_requests(tiny) -> None:
    """The head runs once per group of equal options (dimensions, normalize); each row still gets its own."""
    llm = LLM(str(tiny("encoder", pooling="mean", normalize=True)), dtype="float32", hf_overrides={"is_matryoshka": True})
    params = [PoolingParams(dimensions=4), PoolingParams(), PoolingParams(normalize=False),
              PoolingParams(dimensions=4, normalize=False), PoolingParams(dimensions=8), PoolingParams()]
    texts = ["alpha", "beta gamma", "delta", "epsilon zeta eta", "theta", "iota"]
    merged = llm.embed(texts, pooling_params=params, use_tqdm=False)
    for text, param, out in zip(texts, params, merged):
        alone = llm.embed(text, pooling_params=param, use_tqdm=False)[0].outputs.numpy()
        np.testing.assert_allclose(out.outputs.numpy(), alone, atol=1e-6)
    assert [len(o.outputs.embedding) for o in merged] == [4, 32, 32, 4, 8, 32]
    assert np.linalg.norm(merged[2].outputs.numpy()) != pytest.approx(1.0)


def test_matryoshka_from_config_json(tiny, tmp_path) -> None:
    path = tiny("encoder", pooling="mean", normalize=True, config={"is_matryoshka": True})
    llm = LLM(str(path), dtype="float32")
    assert llm.model_config.is_matryoshka
    assert len(llm.embed("hi", pooling_params=PoolingParams(dimensions=5), use_tqdm=False)[0].outputs.embedding) == 5


# -- pooler precedence --------------------------------------------------------

def test_pooler_precedence(tiny) -> None:
    # task table alone: a decoder without ST files gets the table's LAST + normalize
    decoder = LLM(str(tiny("decoder")), dtype="float32")
    assert decoder.model_config.pooler_layers.keys() == {"task", "override"}
    assert decoder.model_config.pooler_config.pooling_type == "LAST"
    # architecture beats task table: BERT-like encoders default to CLS
    bare = LLM(str(tiny("encoder")), dtype="float32")
    assert bare.model_config.pooler_config.pooling_type == "CLS"
    # Sentence-Transformers files beat the architecture
    st = LLM(str(tiny("encoder", pooling="mean", normalize=False)), dtype="float32")
    assert (st.model_config.pooler_config.pooling_type, st.model_config.pooler_config.normalize) == ("MEAN", False)
    # override beats Sentence-Transformers, and changes the result accordingly
    path = str(tiny("encoder", pooling="mean", normalize=False))
    over = LLM(path, dtype="float32", override_pooler_config=PoolerConfig(pooling_type="CLS", normalize=True))
    assert (over.model_config.pooler_config.pooling_type, over.model_config.pooler_config.normalize) == ("CLS", True)
    cls_vec = np.array(over.embed("hello world", use_tqdm=False)[0].outputs.embedding)
    import transformers as tf

    with torch.no_grad():
        hf = tf.AutoModel.from_pretrained(path).eval()
        raw_cls = hf(**over.tokenizer("hello world", return_tensors="pt")).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(cls_vec, raw_cls / np.linalg.norm(raw_cls), atol=1e-5)
    as_json = LLM(path, dtype="float32", override_pooler_config='{"pooling_type": "last"}')
    assert as_json.model_config.pooler_config.pooling_type == "LAST"


def test_unknown_pooler_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="pooling_tpye"):
        PoolerConfig.coerce({"pooling_tpye": "MEAN"})
    with pytest.raises(ValueError, match="Unknown pooling_type"):
        PoolerConfig(pooling_type="MAXIMUM")


# -- bad input ------------------------------------------------------------------

def test_over_long_input_is_an_error_not_a_silent_cut(encoder: LLM) -> None:
    text = "word " * 500
    n = len(encoder.tokenizer(text)["input_ids"])
    with pytest.raises(ValueError) as err:
        encoder.embed(["fine", text])
    msg = str(err.value)
    assert f"{n} tokens" in msg and "128" in msg and "truncate_prompt_tokens" in msg and "Prompt 1" in msg
    (cut,) = encoder.embed(text, truncate_prompt_tokens=-1, use_tqdm=False)
    assert len(cut.prompt_token_ids) == 128
    assert cut.prompt_token_ids[-1] == encoder.tokenizer.sep_token_id  # special tokens survive truncation
    (short,) = encoder.embed(text, truncate_prompt_tokens=10, use_tqdm=False)
    assert len(short.prompt_token_ids) == 10
    with pytest.raises(ValueError, match="exceeds the model's maximum"):
        encoder.embed(text, truncate_prompt_tokens=1000)
    with pytest.raises(ValueError, match="Prompt 0 has 200 tokens"):
        encoder.embed([[5] * 200])


def test_params_that_do_not_apply_are_refused_by_name(classifier: LLM, encoder: LLM) -> None:
    with pytest.raises(ValueError, match="dimensions"):
        classifier.classify("hi", pooling_params=PoolingParams(dimensions=2))
    with pytest.raises(ValueError, match="activation"):
        encoder.embed("hi", pooling_params=PoolingParams(activation=True))
    with pytest.raises(ValueError, match="2 pooling_params for 3 prompts"):
        encoder.embed(["a", "b", "c"], pooling_params=[PoolingParams(), PoolingParams()])


def test_methods_outside_the_task_are_refused(classifier: LLM, encoder: LLM) -> None:
    with pytest.raises(ValueError, match=r"embed is not supported by model"):
        classifier.embed("hi")
    with pytest.raises(ValueError, match=r"classify is not supported by model"):
        encoder.classify("hi")
    with pytest.raises(ValueError, match=r"score is not supported by model"):
        classifier.score("a", "b")  # three labels: not a cross-encoder


def test_wrong_prompt_types(encoder: LLM) -> None:
    with pytest.raises(TypeError, match="Prompt 1"):
        encoder.embed(["ok", None])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        encoder.embed(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encoder.embed([[10**9]])


def test_task_must_fit_the_checkpoint(tiny) -> None:
    with pytest.raises(ValueError, match="classification head"):
        LLM(str(tiny("encoder")), task="classify")
    with pytest.raises(ValueError, match="Unknown task"):
        LLM(str(tiny("encoder")), task="generate")  # type: ignore[arg-type]
    as_embedder = LLM(str(tiny("classifier")), task="embed", dtype="float32")
    assert len(as_embedder.embed("hi", use_tqdm=False)[0].outputs.embedding) == 32


def test_repr_is_informative(encoder: LLM) -> None:
    text = repr(encoder)
    assert "task='embed'" in text and "MEAN" in text and "max_model_len=128" in text
    assert "hidden_size=32" in repr(encoder.embed("hi", use_tqdm=False)[0])


def test_chunked_tokenization_pipeline_keeps_order_and_error_indices(encoder: LLM, monkeypatch) -> None:
    import poolkit.engine as engine_module

    monkeypatch.setattr(engine_module, "TOKENIZE_SLICE_PROMPTS", 4)
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(11)]
    piped = _vectors(encoder.embed(texts, use_tqdm=False))
    monkeypatch.setattr(engine_module, "TOKENIZE_SLICE_PROMPTS", 1000)
    whole = _vectors(encoder.embed(texts, use_tqdm=False))
    np.testing.assert_allclose(piped, whole, atol=1e-6)
    monkeypatch.setattr(engine_module, "TOKENIZE_SLICE_PROMPTS", 4)
    with pytest.raises(ValueError, match="Prompt 9 has"):
        encoder.embed(texts[:9] + ["word " * 500] + texts[:1])


def test_large_texts_are_sliced_by_characters(encoder: LLM, monkeypatch) -> None:
    import poolkit.engine as engine_module

    texts = [f"text number {i} " + "word " * (i % 7) for i in range(11)]
    whole = _vectors(encoder.embed(texts, use_tqdm=False))
    prepared: list[int] = []
    real_prepare = encoder.tasks.prepare

    def count(task, items, *args, **kwargs):
        prepared.append(len(items))
        return real_prepare(task, items, *args, **kwargs)

    monkeypatch.setattr(encoder.tasks, "prepare", count)
    monkeypatch.setattr(engine_module, "TOKENIZE_SLICE_CHARS", 60)  # a few texts per slice
    np.testing.assert_allclose(_vectors(encoder.embed(texts, use_tqdm=False)), whole, atol=1e-6)
    assert len(prepared) > 2 and sum(prepared) == len(texts)
