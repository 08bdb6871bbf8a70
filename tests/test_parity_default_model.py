"""The bundled all-MiniLM-L6-v2 against sentence-transformers, on real corpus texts.

Tolerances: fp32 min cosine >= 0.9999 per vector; bf16 min cosine >= 0.995
(bf16 keeps 8 mantissa bits; measured min here is ~0.998).
"""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from poolkit import LLM, default_model_path


@pytest.fixture(scope="module")
def texts(corpus) -> list[str]:
    texts = corpus(2048)[::8]
    assert len(texts) >= 200
    return texts


@pytest.fixture(scope="module")
def reference(texts: list[str]) -> np.ndarray:
    model = SentenceTransformer(default_model_path(), device="cpu")
    return model.encode(texts, batch_size=32, convert_to_numpy=True)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def test_corpus_has_over_long_texts(texts: list[str]) -> None:
    from transformers import AutoTokenizer

    llm_tokens = AutoTokenizer.from_pretrained(default_model_path())(texts)["input_ids"]
    assert any(len(t) > 256 for t in llm_tokens), "the parity set should exercise truncation"


def test_fp32_matches_sentence_transformers(texts: list[str], reference: np.ndarray) -> None:
    llm = LLM(dtype="float32")
    assert llm.model_config.pooler_config.pooling_type == "MEAN"
    assert llm.model_config.pooler_config.normalize is True
    outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
    ours = np.array([o.outputs.embedding for o in outs])
    assert ours.shape == reference.shape
    assert _min_cosine(ours, reference) >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_bf16_within_stated_tolerance(texts: list[str], reference: np.ndarray) -> None:
    llm = LLM(dtype="bfloat16")
    outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
    ours = np.array([o.outputs.embedding for o in outs])
    assert _min_cosine(ours, reference) >= 0.995


def test_default_dtype_meets_speed_issue_bar(texts: list[str], reference: np.ndarray) -> None:
    """Whatever fast path ``dtype='auto'`` picks on this machine keeps min cosine >= 0.999."""
    llm = LLM()
    outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
    ours = np.array([o.outputs.embedding for o in outs])
    assert _min_cosine(ours, reference) >= 0.999
