"""Reranking throughput: poolkit ``LLM.score`` vs sentence-transformers ``CrossEncoder.predict``, one run.

    python benchmarks/bench_rerank.py                  # MiniLM-shaped cross-encoder, 1,000 corpus passages
    python benchmarks/bench_rerank.py --model path/to/reranker --texts 3000

No reranker weights ship with the project, so by default a randomly initialised
cross-encoder of all-MiniLM-L6-v2's shape (with its tokenizer) is built in place:
speed does not depend on the weights, and agreement is still checked score by
score. Prints pairs/s for poolkit packed and padded batches and for
``CrossEncoder.predict`` (fp32, ``batch_size=32``), the ratios, and the largest
score difference from sentence-transformers.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np
import torch
from bench_throughput import SHAPES, load_texts

QUERY = "how do vector databases index embeddings for retrieval?"


def build_random_cross_encoder() -> str:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from poolkit import default_model_path

    path = tempfile.mkdtemp(prefix="poolkit-rerank-")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), num_labels=1, max_position_embeddings=512, **SHAPES["minilm"])
    BertForSequenceClassification(config).save_pretrained(path)
    return path


def best_rate(fn, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="cross-encoder path or hub id (default: random MiniLM shape)")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from sentence_transformers import CrossEncoder

    from poolkit import LLM

    model = args.model or build_random_cross_encoder()
    docs = load_texts(args.texts)
    scores = {}
    for packing in ("on", "off"):
        llm = LLM(model, packing=packing, max_model_len=args.max_len)
        llm.score(QUERY, docs[:64], use_tqdm=False)

        def run() -> None:
            scores[packing] = [o.outputs.score for o in llm.score(QUERY, docs, truncate_prompt_tokens=-1, use_tqdm=False)]

        rate = best_rate(run, len(docs), args.repeat)
        scores[f"{packing}_rate"] = rate
        print(f"poolkit packing={packing:3s} {rate:8.1f} pairs/s  {llm!r}")
    st = CrossEncoder(model, device="cpu", max_length=args.max_len)
    pairs = [(QUERY, d) for d in docs]
    st.predict(pairs[:64], batch_size=32)
    reference: list[float] = []

    def run_st() -> None:
        reference[:] = st.predict(pairs, batch_size=32).tolist()

    st_rate = best_rate(run_st, len(docs), args.repeat)
    print(f"st CrossEncoder   {st_rate:8.1f} pairs/s  (fp32, batch_size=32)")
    diff = np.abs(np.array(scores["on"]) - np.array(reference)).max()
    print(f"ratio     packed {scores['on_rate'] / st_rate:.2f}x ST, padded {scores['off_rate'] / st_rate:.2f}x ST, "
          f"packed/padded {scores['on_rate'] / scores['off_rate']:.2f}x; max |score - ST| {diff:.4f}")


if __name__ == "__main__":
    main()
