"""Sparse (SPLADE) and multi-vector (ColBERT-style) encoding: poolkit vs sentence-transformers, one run.

    python benchmarks/bench_sparse.py                  # 500 corpus texts, both model kinds, poolkit defaults
    python benchmarks/bench_sparse.py --texts 1000 --dtype float32 --kind sparse

Both models are randomly initialised at MiniLM size (6 layers, hidden 384, the
default model's 30,522-token WordPiece vocabulary) and saved by
sentence-transformers itself: a ``SparseEncoder`` (``BertForMaskedLM`` +
``SpladePooling`` max/relu, the MLM bias lowered so that, as in trained SPLADE
models, a few dozen dimensions per text are active) and a ``MultiVectorEncoder``
(``BertModel`` + ``Dense`` 384→128 + a punctuation skiplist + ``Normalize``).
The peer is ``SparseEncoder.encode`` / ``MultiVectorEncoder.encode_document``
(fp32, ``batch_size=32``); texts/s is the best of ``--repeat`` timed runs after
a warm-up, and the agreement with the peer is printed beside the speed.
"""

from __future__ import annotations

import argparse
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import SHAPES, load_texts


def minilm_checkpoint(kind: str) -> str:
    """A random MiniLM-size SparseEncoder or MultiVectorEncoder, saved by sentence-transformers."""
    import transformers as tf
    from sentence_transformers import MultiVectorEncoder, SparseEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    from poolkit import default_model_path

    path = Path(tempfile.mkdtemp(prefix=f"poolkit-{kind}-"))
    tokenizer = tf.AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **SHAPES["minilm"])
    if kind == "sparse":
        model = tf.BertForMaskedLM(config)
        with torch.no_grad():
            model.cls.predictions.bias.fill_(-1.3)
        model.save_pretrained(path)
        modules: list[Any] = [Transformer(str(path), transformer_task="fill-mask", max_seq_length=256),
                              SpladePooling("max")]
        SparseEncoder(modules=modules, device="cpu").save(str(path))
    else:
        tf.BertModel(config, add_pooling_layer=False).save_pretrained(path)
        transformer = Transformer(str(path), max_seq_length=256)
        modules = [transformer,
                   Dense(config.hidden_size, 128, bias=False, activation_function=torch.nn.Identity(),
                         module_input_name="token_embeddings", module_output_name="token_embeddings"),
                   MultiVectorMask(skiplist_words=list(string.punctuation)),
                   Normalize(module_input_name="token_embeddings", module_output_name="token_embeddings")]
        MultiVectorEncoder(modules=modules, device="cpu").save(str(path))
    return str(path)


def best_of(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench(kind: str, texts: list[str], dtype: str, repeat: int) -> None:
    from sentence_transformers import MultiVectorEncoder, SparseEncoder

    from poolkit import LLM

    path = minilm_checkpoint(kind)
    llm = LLM(path, dtype=dtype)
    print(f"\n[{kind}] {llm!r}")
    llm.embed(texts[:64], truncate_prompt_tokens=-1, use_tqdm=False)
    ours_s, ours = best_of(repeat, lambda: llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False))
    tokens = sum(len(o.prompt_token_ids) for o in ours)
    if kind == "sparse":
        peer = SparseEncoder(path, device="cpu")
        peer.encode(texts[:64], batch_size=32)
        peer_s, ref = best_of(repeat, lambda: peer.encode(texts, batch_size=32, convert_to_sparse_tensor=False,
                                                          convert_to_tensor=True))
        ref = ref.numpy()
        dense = np.stack([o.outputs.to_dense() for o in ours])
        cos = (dense * ref).sum(1) / (np.linalg.norm(dense, axis=1) * np.linalg.norm(ref, axis=1))
        same = [np.array_equal(o.outputs.indices, np.nonzero(r)[0]) for o, r in zip(ours, ref)]
        active = np.mean([o.outputs.num_active_dims for o in ours])
        agreement = (f"cosine vs peer min {cos.min():.5f}; identical active sets {np.mean(same):.1%}; "
                     f"{active:.0f} active dims per text")
    else:
        peer = MultiVectorEncoder(path, device="cpu")
        peer.encode_document(texts[:64], batch_size=32)
        peer_s, ref = best_of(repeat, lambda: peer.encode_document(texts, batch_size=32))
        shapes = all(o.outputs.numpy().shape == tuple(r.shape) for o, r in zip(ours, ref))
        cos = min(float(torch.nn.functional.cosine_similarity(torch.from_numpy(o.outputs.numpy()), r.float(),
                                                              dim=-1).min()) for o, r in zip(ours, ref))
        agreement = f"same token counts {shapes}; per-token cosine vs peer min {cos:.5f}"
    print(f"poolkit   {len(texts) / ours_s:8.1f} texts/s {tokens / ours_s:9.0f} tokens/s  ({llm.dtype})")
    print(f"peer      {len(texts) / peer_s:8.1f} texts/s {tokens / peer_s:9.0f} tokens/s  "
          f"({type(peer).__name__}, fp32, batch_size=32)")
    print(f"ratio     {peer_s / ours_s:.2f}x the peer; {agreement}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=500)
    parser.add_argument("--kind", choices=["sparse", "multi_vector", "both"], default="both")
    parser.add_argument("--dtype", default="auto", help="poolkit's dtype (auto: bf16 where the CPU has it)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    texts = load_texts(args.texts)
    print(f"{len(texts)} corpus texts; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for kind in ("sparse", "multi_vector") if args.kind == "both" else (args.kind,):
        bench(kind, texts, args.dtype, args.repeat)


if __name__ == "__main__":
    main()
