"""The supported-architectures matrix: one row per architecture, each with a tiny random checkpoint and a reference.

Every row builds a tiny random checkpoint (hidden 32, 2 layers, a locally trained tokenizer: no hub) shaped
like the real models it names — the same transformers class, the same Sentence-Transformers files (Pooling,
Dense, Normalize), the same remote-code loading — and computes the expected output with transformers /
sentence-transformers, one unpadded sequence at a time, in float32. ``tests/test_architectures.py`` checks
the engine against it; the README's table is rendered from ``ROWS``.

Output conventions (``reference`` and :func:`engine_outputs` agree on them):

- ``embed``: ``(N, D)`` embeddings of ``texts``;
- ``classify``: ``(N, C)`` probabilities;
- ``score``: ``(N - 1,)`` cross-encoder scores of the pairs ``(texts[0], t)`` for ``t`` in ``texts[1:]``;
- ``reward``: per-token label probabilities of every text, concatenated: ``(sum of lengths, C)``.

Adding a row: write a ``build(path)`` (or reuse one with ``functools.partial``), pick a reference below,
append an :class:`ArchRow` to ``ROWS`` (``packing`` is what the engine does on it: the test asserts it), then
``python tests/architecture_matrix.py --write-readme``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poolkit.loader import QWEN3_RERANKER_TEMPLATE
from poolkit.testing import (
    SAMPLE_TEXTS,
    add_sentence_transformers_files,
    build_bpe_tokenizer,
    build_tiny_checkpoint,
    build_wordpiece_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
REMOTE_CODE = Path(__file__).resolve().parent / "remote_code"
START, END = "<!-- architectures:start -->", "<!-- architectures:end -->"

Build = Callable[[Path], None]
Reference = Callable[[Path, Sequence[str]], np.ndarray]

# Mixed lengths (2 to ~60 tokens), two of equal length; texts[0] doubles as the query of score rows.
LONG_TEXT = " ".join(SAMPLE_TEXTS[1:7])
TEXTS = [
    "What is the capital of France?",
    "Paris.",
    SAMPLE_TEXTS[0],
    "Berlin is the capital of France.",
    "Berlin is the capital of Germany.",
    LONG_TEXT,
    SAMPLE_TEXTS[4],
    SAMPLE_TEXTS[7] + " " + SAMPLE_TEXTS[8],
]


@dataclass(frozen=True)
class ArchRow:
    """One line of the table: an architecture, checked on a tiny checkpoint shaped like ``example_models``."""

    id: str
    architecture: str  # the transformers class the real models' config.json names
    example_models: tuple[str, ...]
    task: str  # what task="auto" resolves to
    pooler: str
    packing: bool  # what the engine does on CPU (padding-free batches); asserted by the test
    build: Build
    reference: Reference
    remote_code: bool = False
    note: str = ""  # a footnote under the table
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. hf_overrides, as a user would pass them


# -- checkpoint builders -----------------------------------------------------------------------------------


# Random weights ten times the usual spread (0.2, not 0.02): with the usual init a tiny encoder's attention is
# near uniform and its first token barely depends on the input (CLS vectors of different texts at cosine
# 1.0000), which would let a wrong mask or position pass a cosine check.
ENCODER_INIT = 0.2


def _encoder_dims(vocab_size: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=128, initializer_range=ENCODER_INIT)


def _decoder_dims(tokenizer: Any) -> dict[str, Any]:
    return dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def _decoder_tokenizer(path: Path, padding_side: str = "right") -> Any:
    """Byte-level BPE (``<s>`` prefix) with the EOS token as padding, as decoder embedders ship it."""
    tokenizer = build_bpe_tokenizer(path)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    tokenizer.init_kwargs["padding_side"] = padding_side  # what save_pretrained persists
    tokenizer.save_pretrained(str(path))
    return tokenizer


def _save(model: torch.nn.Module, path: Path, scale_head: str | None = None) -> None:
    """Save ``model``; ``scale_head``: a parameter-name prefix scaled up so random probabilities are not all ~uniform."""
    if scale_head:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith(scale_head):
                    param.mul_(20.0)
    model.save_pretrained(str(path))


def _patch_config(path: Path, **values: Any) -> None:
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config.update(values)
    config_file.write_text(json.dumps(config, indent=2))


def _st_files(path: Path, pooling: str, normalize: bool, dense: Sequence[tuple[int, int]] = (),
              trust_remote_code: bool = False) -> None:
    """Sentence-Transformers files written by ST itself; ``dense``: (in, out) Dense layers without bias and
    with the identity activation (EmbeddingGemma's head)."""
    if not dense and not trust_remote_code:
        add_sentence_transformers_files(path, pooling=pooling, normalize=normalize)
        return
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    remote = {"trust_remote_code": True} if trust_remote_code else {}
    transformer = modules.Transformer(str(path), max_seq_length=128, model_kwargs=dict(remote),
                                      processor_kwargs=dict(remote), config_kwargs=dict(remote))
    dim = transformer.get_embedding_dimension()
    layers: list[Any] = [transformer, modules.Pooling(dim, pooling_mode=pooling)]
    torch.manual_seed(1)
    for in_features, out_features in dense:
        layers.append(modules.Dense(in_features, out_features, bias=False, activation_function=torch.nn.Identity()))
    if normalize:
        layers.append(modules.Normalize())
    SentenceTransformer(modules=layers, device="cpu").save(str(path))


def _remote_code(path: Path, module: str, config_class: str, model_class: str) -> tuple[Any, Any]:
    """Copy ``tests/remote_code/<module>.py`` into the checkpoint; return its config and model classes."""
    import importlib.util

    source = REMOTE_CODE / f"{module}.py"
    shutil.copy(source, path / source.name)
    spec = importlib.util.spec_from_file_location(f"poolkit_matrix_{module}", source)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses (transformers' configs) look their module up there
    spec.loader.exec_module(loaded)
    return getattr(loaded, config_class), getattr(loaded, model_class)


def build_bert(path: Path, pooling: str, normalize: bool = True) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)
    _save(tf.BertModel(tf.BertConfig(**_encoder_dims(len(tokenizer)))), path)
    _st_files(path, pooling, normalize)


def build_xlm_roberta(path: Path, pooling: str) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)  # pad_token_id: position ids count from padding_idx + 1
    config = tf.XLMRobertaConfig(**_encoder_dims(len(tokenizer)), pad_token_id=tokenizer.pad_token_id)
    _save(tf.XLMRobertaModel(config), path)
    _st_files(path, pooling, normalize=True)


def build_xlm_roberta_cross_encoder(path: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)
    config = tf.XLMRobertaConfig(**_encoder_dims(len(tokenizer)), pad_token_id=tokenizer.pad_token_id, num_labels=1)
    _save(tf.XLMRobertaForSequenceClassification(config), path)


def build_mpnet(path: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)  # MPNet counts positions from padding_idx + 1, like RoBERTa
    config = tf.MPNetConfig(**_encoder_dims(len(tokenizer)), pad_token_id=tokenizer.pad_token_id)
    _save(tf.MPNetModel(config), path)
    _st_files(path, "mean", normalize=True)


def build_distilbert(path: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)
    config = tf.DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                 max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                                 initializer_range=ENCODER_INIT)
    _save(tf.DistilBertModel(config), path)
    _st_files(path, "mean", normalize=False)  # msmarco-distilbert-base-v4: Transformer + Pooling, no Normalize


def build_modernbert(path: Path, pooling: str) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)
    special = dict(pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                   sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                   eos_token_id=tokenizer.sep_token_id)
    # Layer 0 global attention, layer 1 local (local_attention=128: 64 tokens either side), as in the real models.
    config = tf.ModernBertConfig(**_encoder_dims(len(tokenizer)), **special, global_attn_every_n_layers=2,
                                 local_attention=128)
    _save(tf.ModernBertModel(config), path)
    _st_files(path, pooling, normalize=True)


def build_decoder(path: Path, model_class: str, *, padding_side: str = "right", config_extra: dict[str, Any] | None = None,
                  saved_architecture: str | None = None) -> None:
    """A decoder embedder (ST ``lasttoken`` + Normalize). ``saved_architecture``: what config.json names after
    ST saved the backbone (Qwen3-Embedding ships ``Qwen3ForCausalLM`` with backbone weights)."""
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = _decoder_tokenizer(path, padding_side)
    model_cls = getattr(tf, model_class)
    config = model_cls.config_class(**_decoder_dims(tokenizer), **(config_extra or {}))
    _save(model_cls(config), path)
    _st_files(path, "lasttoken", normalize=True)
    if saved_architecture:
        _patch_config(path, architectures=[saved_architecture])


def build_decoder_head(path: Path, model_class: str, num_labels: int) -> None:
    """A decoder with a classification (sequence or token) head, no Sentence-Transformers files."""
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = _decoder_tokenizer(path)
    model_cls = getattr(tf, model_class)
    _save(model_cls(model_cls.config_class(**_decoder_dims(tokenizer), num_labels=num_labels)), path,
          scale_head="score")


def build_remote_prm(path: Path) -> None:
    """Qwen2.5-Math-PRM-like: a Qwen2 backbone with a 2-logit per-token head, as remote code (``auto_map``)."""
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = _decoder_tokenizer(path)
    _, model_cls = _remote_code(path, "modeling_qwen2_prm_like", "Qwen2ForProcessRewardModel",
                                "Qwen2ForProcessRewardModel")
    config = tf.Qwen2Config(**_decoder_dims(tokenizer))
    config.auto_map = {"AutoModel": "modeling_qwen2_prm_like.Qwen2ForProcessRewardModel"}
    config.architectures = ["Qwen2ForProcessRewardModel"]
    _save(model_cls(config), path, scale_head="score")


def build_gemma3_bidirectional(path: Path) -> None:
    """EmbeddingGemma-like: Gemma3TextModel with bidirectional attention, mean pooling, Dense 32→128→32
    (bias False, identity; 768→3072→768 in the real model), Normalize."""
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = _decoder_tokenizer(path)
    config = tf.Gemma3TextConfig(**_decoder_dims(tokenizer), head_dim=8, query_pre_attn_scalar=8,
                                 use_bidirectional_attention=True, sliding_window=512,
                                 layer_types=["sliding_attention", "full_attention"])
    _save(tf.Gemma3TextModel(config), path)
    _st_files(path, "mean", normalize=True, dense=[(32, 128), (128, 32)])


def build_deberta_v2_classifier(path: Path) -> None:
    """DeBERTa-v3-like: relative attention (c2p/p2c), no absolute positions, no token types; 3 labels."""
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)
    config = tf.DebertaV2Config(**_encoder_dims(len(tokenizer)), pad_token_id=tokenizer.pad_token_id, num_labels=3,
                                relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
                                max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm",
                                share_att_key=True, type_vocab_size=0)
    _save(tf.DebertaV2ForSequenceClassification(config), path)


def build_electra_cross_encoder(path: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)
    config = tf.ElectraConfig(**_encoder_dims(len(tokenizer)), embedding_size=32, num_labels=1)
    _save(tf.ElectraForSequenceClassification(config), path)


def build_remote_encoder(path: Path, module: str, config_class: str, model_class: str, pooling: str,
                         config_kwargs: Callable[[Any], dict[str, Any]]) -> None:
    """An encoder whose modelling code ships with the checkpoint (``auto_map``; ``trust_remote_code=True``)."""
    torch.manual_seed(0)
    tokenizer = build_wordpiece_tokenizer(path)
    config_cls, model_cls = _remote_code(path, module, config_class, model_class)
    config = config_cls(**config_kwargs(tokenizer))
    config.auto_map = {"AutoConfig": f"{module}.{config_class}", "AutoModel": f"{module}.{model_class}"}
    config.architectures = [model_class]
    model_cls(config).save_pretrained(str(path))
    _st_files(path, pooling, normalize=True, trust_remote_code=True)


def build_t5_encoder(path: Path) -> None:
    """sentence-t5 / gtr-t5: T5EncoderModel, mean pooling, a bias-free Dense, Normalize."""
    build_tiny_checkpoint(path, "t5-encoder")
    _st_files(path, "mean", normalize=True, dense=[(32, 32)])


def build_llm_reranker(path: Path) -> None:
    build_tiny_checkpoint(path, "llm-reranker")


# -- references: transformers / sentence-transformers, one unpadded sequence at a time, float32 ------------


@torch.inference_mode()
def llm_reranker_reference(path: Path, texts: Sequence[str]) -> np.ndarray:
    """The whole causal LM on Qwen3-Reranker's prompt: softmax over "no"/"yes" at the last position, per
    (texts[0], t) pair."""
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    answers = tokenizer.convert_tokens_to_ids(["no", "yes"])
    prompts = [QWEN3_RERANKER_TEMPLATE.format(query=texts[0], document=doc) for doc in texts[1:]]
    return np.array([torch.softmax(model(**tokenizer(p, return_tensors="pt")).logits[0, -1][answers], -1)[1].item()
                     for p in prompts], dtype=np.float32)


def st_reference(path: Path, texts: Sequence[str], trust_remote_code: bool = False) -> np.ndarray:
    """SentenceTransformer.encode, one text per call (no padding), float32."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu", trust_remote_code=trust_remote_code)
    return np.stack([model.encode([text], convert_to_numpy=True)[0] for text in texts]).astype(np.float32)


def _activation(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)


@torch.inference_mode()
def sequence_reference(path: Path, texts: Sequence[str], task: str) -> np.ndarray:
    """AutoModelForSequenceClassification: softmax (sigmoid for one label) per text, or per (texts[0], t) pair."""
    import transformers as tf

    model = tf.AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    if task == "score":
        query = texts[0]
        return np.array([_activation(model(**tokenizer(query, doc, return_tensors="pt")).logits)[0, 0].item()
                         for doc in texts[1:]], dtype=np.float32)
    return torch.cat([_activation(model(**tokenizer(t, return_tensors="pt")).logits) for t in texts]).numpy()


@torch.inference_mode()
def token_reward_reference(path: Path, texts: Sequence[str], auto_class: str = "AutoModelForTokenClassification",
                           trust_remote_code: bool = False) -> np.ndarray:
    """Per-token label probabilities (softmax over the labels) of every text, concatenated."""
    import transformers as tf

    model = getattr(tf, auto_class).from_pretrained(str(path), dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path))
    return torch.cat([torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits[0], -1) for t in texts]).numpy()


def engine_outputs(llm: Any, task: str, texts: Sequence[str]) -> np.ndarray:
    """The engine's outputs for ``texts`` in the conventions of the references (one call, one batch)."""
    if task == "embed":
        return np.array([o.outputs.embedding for o in llm.embed(list(texts), use_tqdm=False)], dtype=np.float32)
    if task == "classify":
        return np.array([o.outputs.probs for o in llm.classify(list(texts), use_tqdm=False)], dtype=np.float32)
    if task == "score":
        return np.array([o.outputs.score for o in llm.score(texts[0], list(texts[1:]), use_tqdm=False)],
                        dtype=np.float32)
    if task == "reward":
        from poolkit import PoolingParams

        outs = llm.reward(list(texts), pooling_params=PoolingParams(activation=True), use_tqdm=False)
        return torch.cat([o.outputs.data.float() for o in outs]).numpy()
    raise ValueError(f"unknown task {task!r}")


# -- the rows ------------------------------------------------------------------------------------------------

_p = functools.partial
_embed_reference: Reference = st_reference
_remote_embed_reference: Reference = _p(st_reference, trust_remote_code=True)
_classify_reference: Reference = _p(sequence_reference, task="classify")
_score_reference: Reference = _p(sequence_reference, task="score")

ROWS: list[ArchRow] = [
    ArchRow("bert-cls", "BertModel", ("BAAI/bge-base-en-v1.5", "Snowflake/snowflake-arctic-embed-m"), "embed",
            "CLS + normalize", True, _p(build_bert, pooling="cls"), _embed_reference),
    ArchRow("bert-mean", "BertModel", ("sentence-transformers/all-MiniLM-L6-v2",), "embed",
            "MEAN + normalize", True, _p(build_bert, pooling="mean"), _embed_reference),
    ArchRow("xlm-roberta-cls", "XLMRobertaModel", ("BAAI/bge-m3",), "embed", "CLS + normalize", True,
            _p(build_xlm_roberta, pooling="cls"), _embed_reference, note="bge-m3: the dense vectors."),
    ArchRow("xlm-roberta-mean", "XLMRobertaModel", ("intfloat/multilingual-e5-base",), "embed",
            "MEAN + normalize", True, _p(build_xlm_roberta, pooling="mean"), _embed_reference),
    ArchRow("xlm-roberta-cross-encoder", "XLMRobertaForSequenceClassification",
            ("BAAI/bge-reranker-v2-m3", "BAAI/bge-reranker-base"), "score", "model head (first token) + sigmoid",
            True, build_xlm_roberta_cross_encoder, _score_reference),
    ArchRow("mpnet-mean", "MPNetModel", ("sentence-transformers/all-mpnet-base-v2",), "embed", "MEAN + normalize",
            False, build_mpnet, _embed_reference),
    ArchRow("distilbert-mean", "DistilBertModel", ("sentence-transformers/msmarco-distilbert-base-v4",), "embed",
            "MEAN", True, build_distilbert, _embed_reference),
    ArchRow("modernbert-mean", "ModernBertModel", ("nomic-ai/modernbert-embed-base",), "embed", "MEAN + normalize",
            True, _p(build_modernbert, pooling="mean"), _embed_reference,
            note="alternating global and local (sliding-window) attention layers, packed with the window kept per "
                 "sequence (tests/test_model_support.py checks inputs longer than the window)."),
    ArchRow("modernbert-cls", "ModernBertModel", ("Alibaba-NLP/gte-modernbert-base",), "embed", "CLS + normalize",
            True, _p(build_modernbert, pooling="cls"), _embed_reference),
    ArchRow("mistral-last-left-padding", "MistralModel", ("intfloat/e5-mistral-7b-instruct",), "embed",
            "LAST + normalize", True, _p(build_decoder, model_class="MistralModel", padding_side="left"),
            _embed_reference, note="the tokenizer pads on the left, as e5-mistral's does; results do not depend on it."),
    ArchRow("qwen2-last", "Qwen2Model", ("Alibaba-NLP/gte-Qwen2-1.5B-instruct",), "embed", "LAST + normalize", True,
            _p(build_decoder, model_class="Qwen2Model"), _embed_reference,
            note="loads as transformers' Qwen2Model (causal attention, as gte-Qwen2's own code runs it); "
                 "no trust_remote_code needed."),
    ArchRow("qwen3-last", "Qwen3ForCausalLM", ("Qwen/Qwen3-Embedding-0.6B",), "embed", "LAST + normalize", True,
            _p(build_decoder, model_class="Qwen3Model", padding_side="left", config_extra={"head_dim": 8},
               saved_architecture="Qwen3ForCausalLM"), _embed_reference,
            note="config.json names Qwen3ForCausalLM; the backbone (Qwen3Model) is loaded."),
    ArchRow("qwen2-classifier", "Qwen2ForSequenceClassification", ("jason9693/Qwen2.5-1.5B-apeach",), "classify",
            "LAST + softmax", True, _p(build_decoder_head, model_class="Qwen2ForSequenceClassification", num_labels=3),
            _classify_reference),
    ArchRow("qwen2-token-reward", "Qwen2ForTokenClassification", (), "reward", "ALL (per token)", False,
            _p(build_decoder_head, model_class="Qwen2ForTokenClassification", num_labels=2), token_reward_reference,
            note="per-token reward heads on Qwen2 (transformers' Qwen2ForTokenClassification, 2 labels); checked "
                 "with softmax over the labels (`PoolingParams(activation=True)`)."),
    ArchRow("gemma3-bidirectional-dense", "Gemma3TextModel", ("google/embeddinggemma-300m",), "embed",
            "MEAN + Dense ×2 + normalize", True, build_gemma3_bidirectional, _embed_reference,
            note="`use_bidirectional_attention: true`, two bias-free Dense layers; sliding-window and global "
                 "layers, packed with the window kept per sequence (tests/test_model_support.py checks inputs "
                 "longer than the window)."),
    ArchRow("deberta-v2-classifier", "DebertaV2ForSequenceClassification",
            ("MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli",), "classify", "model head (ContextPooler) + softmax",
            False, build_deberta_v2_classifier, _classify_reference),
    ArchRow("electra-cross-encoder", "ElectraForSequenceClassification", ("cross-encoder/ms-marco-electra-base",),
            "score", "model head (first token) + sigmoid", True, build_electra_cross_encoder, _score_reference),
    ArchRow("jina-v3-like", "XLMRobertaModel", ("jinaai/jina-embeddings-v3",), "embed",
            "MEAN + normalize", True,
            _p(build_remote_encoder, module="modeling_jina_like", config_class="JinaLikeConfig",
               model_class="JinaLikeModel", pooling="mean",
               config_kwargs=lambda tok: {**_encoder_dims(len(tok)), "pad_token_id": tok.pad_token_id}),
            _remote_embed_reference, remote_code=True,
            note="stand-in: tests/remote_code/modeling_jina_like.py (an XLM-R encoder under its own model_type); "
                 "jina-v3's LoRA adapters and rotary embeddings are not modelled."),
    ArchRow("nomic-bert-like", "NomicBertModel", ("nomic-ai/nomic-embed-text-v1.5",), "embed", "MEAN + normalize",
            False,
            _p(build_remote_encoder, module="modeling_nomic_like", config_class="NomicLikeConfig",
               model_class="NomicLikeModel", pooling="mean",
               config_kwargs=lambda tok: {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                                          "initializer_range": ENCODER_INIT}),
            _remote_embed_reference, remote_code=True,
            note="stand-in: tests/remote_code/modeling_nomic_like.py (rotary, SwiGLU, own attention)."),
    ArchRow("gte-like", "NewModel", ("Alibaba-NLP/gte-base-en-v1.5",), "embed", "CLS + normalize", False,
            _p(build_remote_encoder, module="modeling_gte_like", config_class="GteLikeConfig",
               model_class="GteLikeModel", pooling="cls",
               config_kwargs=lambda tok: {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                                          "initializer_range": ENCODER_INIT}),
            _remote_embed_reference, remote_code=True,
            note="stand-in: tests/remote_code/modeling_gte_like.py (rotary, gated GELU MLP, own attention)."),
    ArchRow("t5-encoder", "T5EncoderModel", ("sentence-transformers/sentence-t5-base",
                                             "sentence-transformers/gtr-t5-base"), "embed",
            "MEAN + Dense + normalize", False, build_t5_encoder, _embed_reference,
            note="the encoder alone (T5EncoderModel, whatever config.json names), as Sentence-Transformers runs it; "
                 "padded: T5's relative position bias is not in the packed attention."),
    ArchRow("qwen3-reranker", "Qwen3ForCausalLM", ("Qwen/Qwen3-Reranker-0.6B",), "score",
            "LAST + LM-head rows (yes − no) + sigmoid", True, build_llm_reranker, llm_reranker_reference,
            engine_kwargs={"hf_overrides": {"architectures": ["Qwen3ForSequenceClassification"],
                                            "classifier_from_token": ["no", "yes"],
                                            "is_original_qwen3_reranker": True}},
            note="an LLM as reranker with vLLM's overrides (`classifier_from_token`, `is_original_qwen3_reranker`): "
                 "the score head is the LM head's row for \"yes\" minus the row for \"no\", so the score is the "
                 "softmax probability of \"yes\"; pairs are scored in the model's prompt template (`score_template`). "
                 "Checked against the whole `Qwen3ForCausalLM`."),
    ArchRow("qwen2-prm-remote", "Qwen2ForProcessRewardModel", ("Qwen/Qwen2.5-Math-PRM-7B",), "reward",
            "STEP + softmax", False, build_remote_prm,
            _p(token_reward_reference, auto_class="AutoModel", trust_remote_code=True), remote_code=True,
            note="stand-in: tests/remote_code/modeling_qwen2_prm_like.py (Qwen2 backbone, 2-logit token head)."),
]


# -- the README table ----------------------------------------------------------------------------------------


def render_table(rows: Sequence[ArchRow]) -> str:
    """The markdown table (with its footnotes) that README.md carries between the markers."""
    lines = [
        "| Architecture | Example models | Tasks | Pooler | Packed batches (CPU) | GPU varlen (FlashAttention) "
        "| trust_remote_code |",
        "|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for row in rows:
        architecture = f"`{row.architecture}`"
        if row.note:
            notes.append(row.note)
            architecture += f" <sup>{len(notes)}</sup>"
        examples = ", ".join(f"`{m}`" for m in row.example_models) or "—"
        packed = "✅" if row.packing else "padded"
        varlen = "✅ \\*" if row.packing else "—"
        remote = "✅" if row.remote_code else ""
        lines.append(f"| {architecture} | {examples} | {row.task} | {row.pooler} | {packed} | {varlen} | {remote} |")
    lines += ["", "\\* Same packed path as on CPU; on CUDA in fp16/bf16 attention runs torch's `varlen_attn` "
                  "(FlashAttention). **Untested on GPU hardware so far.**"]
    for i, note in enumerate(notes, 1):
        lines += ["", f"<sup>{i}</sup> {note}"]
    return "\n".join(lines) + "\n"


def readme_section(text: str) -> str:
    """What README.md holds between the markers (without them)."""
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip("\n") + "\n"


def write_readme(path: Path = README) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(START) + len(START), text.index(END)
    path.write_text(text[:start] + "\n" + render_table(ROWS) + text[end:], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write-readme", action="store_true", help=f"rewrite README.md between {START} and {END}")
    args = parser.parse_args(argv)
    if args.write_readme:
        write_readme()
    else:
        sys.stdout.write(render_table(ROWS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
