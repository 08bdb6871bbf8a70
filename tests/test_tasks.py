"""The task layer against sentence-transformers / transformers: prompts (named, explicit, default, include_prompt),
truncation that keeps special tokens and reports the original length, cosine scores that honour PoolingParams,
and prepare-without-weights == prepare-in-the-engine."""

from __future__ import annotations

import numpy as np
import pytest

from poolkit import LLM, PoolingParams
from poolkit.tasks import Tasks, role_prompt_name
from poolkit.testing import SAMPLE_TEXTS

pytestmark = pytest.mark.unit

PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "classify this: "}
TEXTS = SAMPLE_TEXTS[:6]


def _vectors(outputs) -> np.ndarray:
    return np.stack([o.outputs.numpy() for o in outputs])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def prompted(tiny):
    path = str(tiny("encoder", pooling="mean", prompts=PROMPTS, default_prompt_name="document"))
    return path, LLM(path, dtype="float32")


@pytest.mark.parametrize("kwargs", [{"prompt_name": "query"}, {"prompt": "custom prefix: "}, {}, {"prompt": ""}],
                         ids=["named", "explicit", "default", "none"])
def test_prompts_match_sentence_transformers(prompted, kwargs) -> None:
    from sentence_transformers import SentenceTransformer

    path, llm = prompted
    reference = SentenceTransformer(path, device="cpu").encode(TEXTS, convert_to_numpy=True, **kwargs)
    got = _vectors(llm.embed(TEXTS, use_tqdm=False, **kwargs))
    assert _cos(got, reference).min() >= 0.9999


def test_default_prompt_changes_the_tokens(prompted) -> None:
    _, llm = prompted
    (default,) = llm.embed("paris", use_tqdm=False)
    (bare,) = llm.embed("paris", prompt="", use_tqdm=False)
    assert default.prompt_token_ids != bare.prompt_token_ids
    assert llm.tokenizer.decode(default.prompt_token_ids, skip_special_tokens=True).startswith("passage")


def test_prompt_errors(prompted) -> None:
    _, llm = prompted
    with pytest.raises(ValueError, match="either prompt or prompt_name"):
        llm.embed("a", prompt="x", prompt_name="query")
    with pytest.raises(ValueError, match="'nope' not found; the model's prompts: classification, document, query"):
        llm.embed("a", prompt_name="nope")
    with pytest.raises(ValueError, match="Prompt 1 is a list of token ids"):
        llm.embed(["a", [2, 3, 4]], prompt_name="query")
    assert role_prompt_name(llm.model_config, "query") == "query"
    assert role_prompt_name(llm.model_config, "document") == "document"


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_include_prompt_false_pools_without_the_prompt(tiny, pooling) -> None:
    from sentence_transformers import SentenceTransformer

    path = str(tiny("encoder", pooling=pooling, prompts=PROMPTS, include_prompt=False))
    llm = LLM(path, dtype="float32")
    st = SentenceTransformer(path, device="cpu")
    got = _vectors(llm.embed(TEXTS, prompt_name="query", use_tqdm=False))
    reference = st.encode(TEXTS, prompt_name="query", convert_to_numpy=True)
    assert _cos(got, reference).min() >= 0.9999
    with_prompt = st.encode(TEXTS, convert_to_numpy=True)  # no prompt: the same as including it
    assert _cos(_vectors(llm.embed(TEXTS, use_tqdm=False)), with_prompt).min() >= 0.9999


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_token_id_truncation_keeps_special_tokens_like_text(tiny, kind) -> None:
    llm = LLM(str(tiny(kind)), dtype="float32")
    long_text = " ".join(SAMPLE_TEXTS * 6)
    ids = llm.tokenizer(long_text)["input_ids"]
    assert len(ids) > llm.model_config.max_model_len
    for limit in (-1, 20):
        (from_text,) = llm.embed(long_text, truncate_prompt_tokens=limit, use_tqdm=False)
        (from_ids,) = llm.embed([ids], truncate_prompt_tokens=limit, use_tqdm=False)
        assert from_ids.prompt_token_ids == from_text.prompt_token_ids
        assert from_ids.prompt_token_ids[-1] == ids[-1] or kind == "decoder"
        assert from_ids.num_input_tokens == from_text.num_input_tokens == len(ids)
        assert from_ids.truncated and from_text.truncated
        np.testing.assert_allclose(from_ids.outputs.numpy(), from_text.outputs.numpy(), atol=1e-6)
    (short,) = llm.embed("paris", truncate_prompt_tokens=-1, use_tqdm=False)
    assert not short.truncated and short.num_input_tokens == len(short.prompt_token_ids)


@pytest.mark.parametrize("kind", ["encoder", "roberta-encoder", "decoder", "t5-encoder"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_truncated_texts_are_the_tokenizers_own_cut(tiny, kind, side) -> None:
    """Texts over the limit are tokenized once and their ids cut; the result is what the tokenizer's own
    ``truncation=True, max_length=limit`` gives, on either side and with mixed lengths in one call."""
    llm = LLM(str(tiny(kind)), dtype="float32")
    processor = llm.tasks.processor
    processor.tokenizer.truncation_side = side
    texts = [" ".join(SAMPLE_TEXTS * 6), "paris", " ".join(SAMPLE_TEXTS[::-1] * 3)]
    for limit in (llm.model_config.max_model_len, 20, 7):
        prompts = processor.encode(texts, truncate_prompt_tokens=limit)
        reference = processor.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]
        assert [p.input_ids for p in prompts] == [list(ids) for ids in reference]
        full = processor.tokenizer(texts)["input_ids"]
        assert [p.num_input_tokens for p in prompts] == [len(ids) for ids in full]


@pytest.mark.parametrize("kind", ["encoder", "roberta-encoder", "decoder", "t5-encoder"])
def test_text_ids_are_the_tokenizers_own(tiny, kind) -> None:
    """The processor calls the Rust backend directly and gets the tokenizer call's ids: with and without special
    tokens, special-token strings inside a text, after a call that left the backend set to cut and pad, and with
    ``split_special_tokens``."""
    llm = LLM(str(tiny(kind)), dtype="float32")
    processor = llm.tasks.processor
    assert processor._rust_backend is not None  # the direct path is what runs for these tokenizers
    tokenizer = processor.tokenizer
    specials = " x ".join(t for t in (tokenizer.bos_token, tokenizer.cls_token, tokenizer.sep_token,
                                      tokenizer.eos_token) if t)
    texts = [*SAMPLE_TEXTS, "", "  spaced   out ", "é ü 日本語 🙂", f"{specials} x"]

    def reference(add_special_tokens: bool) -> list[list[int]]:
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]

    last_text_ids = {}
    for split in (False, True):
        tokenizer(texts[:2], truncation=True, max_length=4, padding="max_length" if tokenizer.pad_token else False)
        tokenizer.split_special_tokens = split  # after the call: the backend still has the previous setting
        assert processor.text_ids(texts) == reference(True)
        assert processor.text_ids(texts, add_special_tokens=False) == reference(False)
        last_text_ids[split] = processor.tokenize(texts[-1])
    assert last_text_ids[False] != last_text_ids[True]  # both settings ran: special-token strings split only when asked


def test_pairs_report_their_untruncated_length(tiny) -> None:
    llm = LLM(str(tiny("cross-encoder")), dtype="float32")
    long_doc = " ".join(SAMPLE_TEXTS * 6)
    full = len(llm.tokenizer("what is paris", long_doc)["input_ids"])
    (out,) = llm.score("what is paris", long_doc, truncate_prompt_tokens=-1, use_tqdm=False)
    assert out.num_input_tokens == full and len(out.prompt_token_ids) == llm.model_config.max_model_len
    assert out.truncated


def test_cosine_score_honours_pooling_params(tiny) -> None:
    path = tiny("encoder", pooling="mean", config={"matryoshka_dimensions": [8, 16]})
    llm = LLM(str(path), dtype="float32")
    params = PoolingParams(dimensions=8)
    scores = [o.outputs.score for o in llm.score(TEXTS[0], TEXTS[1:4], pooling_params=params, use_tqdm=False)]
    vectors = _vectors(llm.embed(TEXTS[:4], params, use_tqdm=False))
    np.testing.assert_allclose(scores, _cos(vectors[:1], vectors[1:]), atol=1e-6)
    full = [o.outputs.score for o in llm.score(TEXTS[0], TEXTS[1:4], use_tqdm=False)]
    assert not np.allclose(scores, full, atol=1e-4)  # the 8-d cosine is a different number
    with pytest.raises(ValueError, match="only supports \\[8, 16\\]"):
        llm.score("a", "b", pooling_params=PoolingParams(dimensions=12))


def test_prepare_without_weights_equals_the_engine(prompted) -> None:
    path, llm = prompted
    tasks = Tasks.from_model(path, dtype="float32")
    request = tasks.prepare("embed", TEXTS, truncate_prompt_tokens=-1, prompt_name="query")
    assert [p.input_ids for p in request.prompts] == [p.input_ids for p in
                                                      llm.prepare("embed", TEXTS, truncate_prompt_tokens=-1,
                                                                  prompt_name="query").prompts]
    import pickle

    outputs = llm.execute(pickle.loads(pickle.dumps(request)))
    np.testing.assert_allclose(_vectors(outputs), _vectors(llm.embed(TEXTS, prompt_name="query", use_tqdm=False)),
                               atol=1e-6)


def test_tasks_refuse_what_the_model_does_not_serve(tiny) -> None:
    tasks = Tasks.from_model(str(tiny("cross-encoder")))
    assert tasks.supported == ["classify", "encode", "score"]
    with pytest.raises(ValueError, match="embed is not supported by model"):
        tasks.prepare("embed", "a")
    with pytest.raises(ValueError, match="Unknown task 'generate'"):
        tasks.prepare("generate", "a")
