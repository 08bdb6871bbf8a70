"""Tiny random checkpoints with locally trained tokenizers, for tests, notebooks and demos.

No hub access: tokenizers are trained on a few hundred sentences and models
are initialised from transformers configs with a fixed seed.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import torch

Kind = Literal[
    "encoder",           # BertModel (embedding; architecture default CLS)
    "roberta-encoder",   # XLMRobertaModel (position ids offset by padding_idx + 1)
    "decoder",           # LlamaModel (embedding with LAST pooling)
    "classifier",        # BertForSequenceClassification, 3 labels, softmax
    "multilabel",        # BertForSequenceClassification, 4 labels, sigmoid
    "regression",        # BertForSequenceClassification, 1 label, problem_type=regression
    "cross-encoder",     # BertForSequenceClassification, 1 label (score)
    "roberta-cross-encoder",  # XLMRobertaForSequenceClassification, 1 label (head reads the first row)
    "decoder-classifier",  # LlamaForSequenceClassification, 3 labels
    "reward",            # LlamaForTokenClassification, 2 labels (per-token rewards)
    "t5-encoder",        # T5EncoderModel (sentence-t5 / gtr-t5 style; add ST files for mean + Dense)
    "llm-reranker",      # Qwen3ForCausalLM whose LM head answers "yes"/"no" (Qwen3-Reranker style)
    "clip",              # CLIPModel (text and image towers, 32x32 images in 8x8 patches) with its image processor
    "siglip",            # SiglipModel (texts padded to 64 tokens, as its processor does) with its image processor
    "siglip2",           # Siglip2Model (NaFlex patches; its tokenizer pads on the left) with its image processor
]

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "Embedding models map text to dense vectors.",
    "A cross-encoder scores a query and a document together.",
    "Step one: add the numbers. Step two: divide by two.",
    "Rerankers reorder retrieved passages by relevance.",
    "Vector search finds the nearest neighbours of a query.",
    "Machine learning models learn patterns from data.",
    "What is the capital of France?",
]


def _corpus(extra: Iterable[str] = ()) -> list[str]:
    words = [w.strip(".,?!:") for t in SAMPLE_TEXTS for w in t.split()]
    return [*SAMPLE_TEXTS, *extra, " ".join(words), " ".join(reversed(words))]


def build_wordpiece_tokenizer(path: Path, texts: Iterable[str] = (), vocab_size: int = 400) -> Any:
    """A BERT-style uncased WordPiece tokenizer ([CLS] a [SEP] b [SEP], token types)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(_corpus(texts), vocab_size=vocab_size, min_frequency=1)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab=trainer.get_vocab(), do_lower_case=True, model_max_length=128)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_bpe_tokenizer(path: Path, texts: Iterable[str] = (), vocab_size: int = 400, step_tag: str | None = None) -> Any:
    """A byte-level BPE tokenizer for decoders: <s> prefix, no pad token of its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] + ([step_tag] if step_tag else [])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=128
    )
    if step_tag:
        tokenizer.add_special_tokens({"additional_special_tokens": [step_tag]})
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def _bert_config(vocab_size: int, **kwargs: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, **kwargs,
    )


def _llama_config(vocab_size: int, **kwargs: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, **kwargs,
    )


def build_tiny_checkpoint(path: str | Path, kind: Kind, *, seed: int = 0, padding_side: str = "right") -> Path:
    """Write a tiny random checkpoint of ``kind`` (weights, config, tokenizer) to ``path``."""
    import transformers as tf

    path = Path(path)
    torch.manual_seed(seed)
    if kind == "llm-reranker":
        tokenizer = build_bpe_tokenizer(path, texts=["yes no"])
        # Qwen3-Reranker's answer words are ordinary tokens; its chat markers are special tokens.
        tokenizer.add_tokens(["yes", "no"])
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
        tokenizer.model_max_length = 512  # room for the reranker's prompt template
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=512, tie_word_embeddings=False,
            pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        ))
    elif kind in ("decoder", "decoder-classifier", "reward"):
        tokenizer = build_bpe_tokenizer(path, step_tag="<step>" if kind == "reward" else None)
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.eos_token_id}
        if kind == "decoder":
            model = tf.LlamaModel(_llama_config(len(tokenizer), **ids))
        elif kind == "decoder-classifier":
            model = tf.LlamaForSequenceClassification(_llama_config(len(tokenizer), num_labels=3, **ids))
        else:
            model = tf.LlamaForTokenClassification(_llama_config(len(tokenizer), num_labels=2, **ids))
    else:
        tokenizer = build_wordpiece_tokenizer(path)
        vocab = len(tokenizer)
        if kind == "encoder":
            model = tf.BertModel(_bert_config(vocab))
        elif kind == "roberta-encoder":  # position ids count from padding_idx + 1
            config = _bert_config(vocab, pad_token_id=tokenizer.pad_token_id)
            model = tf.XLMRobertaModel(tf.XLMRobertaConfig(**config.to_dict()))
        elif kind == "classifier":
            model = tf.BertForSequenceClassification(
                _bert_config(vocab, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
                             label2id={"negative": 0, "neutral": 1, "positive": 2}))
        elif kind == "multilabel":
            model = tf.BertForSequenceClassification(
                _bert_config(vocab, num_labels=4, problem_type="multi_label_classification"))
        elif kind == "regression":
            model = tf.BertForSequenceClassification(_bert_config(vocab, num_labels=1, problem_type="regression"))
        elif kind == "cross-encoder":
            model = tf.BertForSequenceClassification(_bert_config(vocab, num_labels=1))
        elif kind == "roberta-cross-encoder":
            config = _bert_config(vocab, pad_token_id=tokenizer.pad_token_id, num_labels=1)
            model = tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(**config.to_dict()))
        elif kind == "t5-encoder":
            model = tf.T5EncoderModel(tf.T5Config(
                vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                architectures=["T5EncoderModel"]))
        elif kind == "clip":
            model = tf.CLIPModel(tf.CLIPConfig(
                text_config={"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "max_position_embeddings": 128,
                             "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.sep_token_id},
                vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                projection_dim=16))
        elif kind == "siglip":
            model = tf.SiglipModel(tf.SiglipConfig(
                text_config={"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "max_position_embeddings": 64,
                             "pad_token_id": tokenizer.pad_token_id},
                vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "image_size": 32, "patch_size": 8}))
        elif kind == "siglip2":
            model = tf.Siglip2Model(tf.Siglip2Config(
                text_config={"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "max_position_embeddings": 64,
                             "pad_token_id": tokenizer.pad_token_id},
                vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "patch_size": 8, "num_patches": 16}))
        else:
            raise ValueError(f"Unknown checkpoint kind {kind!r}")
    # Random init leaves tiny weights; scale the head up so activations are not all ~0.5.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("classifier", "score", "lm_head")):
                param.mul_(20.0)
    model.save_pretrained(str(path))
    tokenizer.padding_side = padding_side
    tokenizer.init_kwargs["padding_side"] = padding_side  # what save_pretrained persists
    tokenizer.save_pretrained(str(path))
    if kind == "clip":
        tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    elif kind == "siglip":
        tf.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    elif kind == "siglip2":
        tf.Siglip2ImageProcessor(patch_size=8, max_num_patches=16).save_pretrained(path)
    return path


def add_sentence_transformers_files(
    path: str | Path,
    *,
    pooling: Literal["cls", "mean", "lasttoken"] = "mean",
    normalize: bool = True,
    dense_out: int | None = None,
    max_seq_length: int = 128,
    do_lower_case: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    include_prompt: bool = True,
) -> Path:
    """Turn a saved base checkpoint into a Sentence-Transformers model, using ST's own writer."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    path = Path(path)
    transformer = models.Transformer(str(path), max_seq_length=max_seq_length, do_lower_case=do_lower_case)
    dim = transformer.get_embedding_dimension()
    modules: list[Any] = [transformer, models.Pooling(dim, pooling_mode=pooling, include_prompt=include_prompt)]
    if dense_out:
        torch.manual_seed(1)
        modules.append(models.Dense(dim, dense_out, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts, default_prompt_name=default_prompt_name)
    st.save(str(path))
    return path


def write_config_overrides(path: str | Path, **overrides: Any) -> None:
    """Patch keys into a saved config.json (e.g. ``matryoshka_dimensions``)."""
    config_file = Path(path) / "config.json"
    config = json.loads(config_file.read_text())
    config.update(overrides)
    config_file.write_text(json.dumps(config, indent=2))


def build_sparse_encoder(path: str | Path, *, seed: int = 0, pooling_strategy: str = "max",
                         activation_function: str = "relu") -> Path:
    """A tiny random SPLADE model saved by sentence-transformers' ``SparseEncoder`` (``BertForMaskedLM`` +
    ``SpladePooling``). The MLM bias is lowered so that, as in trained SPLADE models, most of the
    vocabulary gets weight 0."""
    import transformers as tf
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = build_wordpiece_tokenizer(path)
    model = tf.BertForMaskedLM(_bert_config(len(tokenizer)))
    with torch.no_grad():
        model.cls.predictions.decoder.weight.mul_(20.0)
        model.cls.predictions.bias.fill_(-5.0)
    model.save_pretrained(str(path))
    transformer = Transformer(str(path), transformer_task="fill-mask", max_seq_length=128)
    pooling = SpladePooling(pooling_strategy=pooling_strategy, activation_function=activation_function)
    SparseEncoder(modules=[transformer, pooling], device="cpu").save(str(path))
    return path


def build_multi_vector_encoder(path: str | Path, *, seed: int = 0, dim: int = 16,
                               skiplist_words: Iterable[str] = (".", ",", "?", "!"),
                               query_expansion: dict[str, Any] | None = None, query_length: int | None = None,
                               document_length: int | None = None) -> Path:
    """A tiny random ColBERT-style model saved by sentence-transformers' ``MultiVectorEncoder``
    (``BertModel`` + ``Dense`` projection + a punctuation skiplist for documents + ``Normalize``), optionally
    with ColBERT query expansion and per-role lengths on its Transformer module."""
    import transformers as tf
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = build_wordpiece_tokenizer(path)
    model = tf.BertModel(_bert_config(len(tokenizer)), add_pooling_layer=False)
    model.save_pretrained(str(path))
    transformer = Transformer(str(path), max_seq_length=128, query_length=query_length,
                              document_length=document_length, query_expansion=query_expansion)
    hidden = transformer.get_embedding_dimension()
    dense = Dense(hidden, dim, bias=False, activation_function=torch.nn.Identity(),
                  module_input_name="token_embeddings", module_output_name="token_embeddings")
    modules = [transformer, dense, MultiVectorMask(skiplist_words=list(skiplist_words)),
               Normalize(module_input_name="token_embeddings", module_output_name="token_embeddings")]
    MultiVectorEncoder(modules=modules, device="cpu").save(str(path))
    return path


def build_bge_m3_like(path: str | Path, *, seed: int = 0, colbert_dim: int | None = None) -> Path:
    """A tiny random BGE-M3-shaped checkpoint: an XLM-R backbone saved as a Sentence-Transformers CLS +
    Normalize model, with FlagEmbedding's ``colbert_linear.pt`` and ``sparse_linear.pt`` head files beside it."""
    import transformers as tf

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = build_wordpiece_tokenizer(path)
    config = _bert_config(len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = tf.XLMRobertaModel(tf.XLMRobertaConfig(**config.to_dict()), add_pooling_layer=False)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    hidden = model.config.hidden_size
    colbert = torch.nn.Linear(hidden, colbert_dim or hidden)
    sparse = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        sparse.weight.mul_(10.0)
    torch.save(colbert.state_dict(), path / "colbert_linear.pt")
    torch.save(sparse.state_dict(), path / "sparse_linear.pt")
    add_sentence_transformers_files(path, pooling="cls", normalize=True)
    return path


def draw_shape(shape: str, color: str, size: tuple[int, int] = (40, 36)) -> Any:
    """A small drawn test image (``circle``, ``square``, ``lines``, ``triangle`` or a ``dot``) on white."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((width * 0.15, height * 0.15, width * 0.8, height * 0.85), fill=color)
    elif shape == "square":
        draw.rectangle((width * 0.2, height * 0.2, width * 0.75, height * 0.8), fill=color)
    elif shape == "lines":
        for y in (height * 0.28, height * 0.72):
            draw.line((0, y, width - 1, y), fill=color, width=4)
    elif shape == "triangle":
        draw.polygon([(width * 0.5, height * 0.1), (width * 0.9, height * 0.9), (width * 0.1, height * 0.9)], fill=color)
    else:
        draw.ellipse((width * 0.4, height * 0.4, width * 0.6, height * 0.6), fill=color)
    return image


def png_bytes(image: Any) -> bytes:
    """A PIL image encoded as PNG."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def loopback_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a thread; yields the base URL, stops on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
