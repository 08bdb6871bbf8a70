"""Long documents: chunked processing vs the same tokens as short inputs, and sentence-transformers' manual loop.

    python benchmarks/bench_long.py                 # 500 documents of 1-8k tokens from the corpus, default model
    python benchmarks/bench_long.py --docs 100 --st-docs 20

Documents are built from consecutive texts of ``../shared/data/bench_corpus.jsonl``
(each with a target length drawn from ``--min-tokens``..``--max-tokens``, fixed
seed). Three runs on the same machine, one after the other:

1. poolkit ``LLM.embed(docs, enable_chunked_processing=True)``: tokens/s over the
   tokens the model ran (every chunk, special tokens included);
2. poolkit on exactly those chunks sent as independent short inputs (token ids):
   the same work without chunking, so the ratio is the cost of the chunking itself;
3. sentence-transformers' usual manual loop on the first ``--st-docs`` documents:
   tokenize, cut into windows, decode, ``encode`` the windows, average weighted by
   token counts, normalize.

Also prints poolkit's peak RSS, which the batch token budget bounds whatever the
documents' lengths, and the cosine between poolkit's chunked vector and the
manual loop's on the documents both embedded.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "bench_corpus.jsonl"


def build_documents(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    """``n`` documents of ``lo``..``hi`` tokens, each from consecutive corpus texts (cycling the corpus)."""
    with open(CORPUS, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    rng = random.Random(seed)
    docs, i = [], 0
    for _ in range(n):
        target, parts, size = rng.randint(lo, hi), [], 0
        while size < target:
            parts.append(texts[i % len(texts)])
            size += lengths[i % len(texts)]
            i += 1
        docs.append(" ".join(parts))
    return docs


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def st_manual(model, tokenizer, docs: list[str], window: int) -> tuple[np.ndarray, float, int]:
    """Sentence-transformers users' loop: windows of tokens decoded to text, encoded, averaged, normalized."""
    start = time.perf_counter()
    vectors, tokens = [], 0
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        pieces = [tokenizer.decode(ids[i:i + window]) for i in range(0, len(ids), window)]
        weights = np.array([len(ids[i:i + window]) + 2 for i in range(0, len(ids), window)], dtype=np.float64)
        encoded = model.encode(pieces, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
        merged = (weights[:, None] * encoded).sum(0) / weights.sum()
        vectors.append(merged / np.linalg.norm(merged))
        tokens += int(weights.sum())
    return np.stack(vectors), time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--st-docs", type=int, default=50, help="documents for the sentence-transformers loop")
    parser.add_argument("--min-tokens", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=8000)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from poolkit import LLM

    # Documents may overshoot their target by one corpus text: room above the default cap (32 x max_model_len).
    llm = LLM(args.model, dtype=args.dtype, override_pooler_config={"max_embed_len": 4 * args.max_tokens})
    print(f"poolkit   {llm!r}")
    docs = build_documents(llm.tokenizer, args.docs, args.min_tokens, args.max_tokens)
    llm.embed(docs[:2], enable_chunked_processing=True, use_tqdm=False)  # warm-up
    rss_loaded = rss_mib()

    start = time.perf_counter()
    outputs = llm.embed(docs, enable_chunked_processing=True, use_tqdm=False)
    chunked_s = time.perf_counter() - start
    ran = sum(o.num_processed_tokens for o in outputs)
    doc_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    rss_chunked = rss_mib()
    print(f"chunked   {len(docs)} documents, {doc_tokens:,} tokens ({ran:,} run with chunks): "
          f"{ran / chunked_s:,.0f} tokens/s, {len(docs) / chunked_s:.1f} docs/s")

    # The same chunks as texts of their own (tokenized in the timed run too, like the documents).
    from poolkit.inputs import TokenizedPrompt
    from poolkit.tasks.chunking import split

    pieces = [c for o in outputs for c in split(TokenizedPrompt(o.prompt_token_ids), llm.tasks.processor, 0)]
    chunks = [llm.tokenizer.decode(p.input_ids, skip_special_tokens=True) for p in pieces]
    start = time.perf_counter()
    short = llm.embed(chunks, truncate_prompt_tokens=-1, use_tqdm=False)
    short_s = time.perf_counter() - start
    short_ran = sum(o.num_processed_tokens for o in short)
    print(f"short     the same {len(chunks):,} chunks as independent texts ({short_ran:,} tokens): "
          f"{short_ran / short_s:,.0f} tokens/s")
    print(f"ratio     chunked / short tokens/s: {(ran / chunked_s) / (short_ran / short_s):.3f}x "
          "(1.0 = chunking costs nothing)")
    print(f"rss       poolkit peak {rss_chunked:.0f} MiB after the chunked run ({rss_loaded:.0f} MiB after loading "
          f"and warm-up; budget {llm.engine.scheduler_config.max_num_batched_tokens} tokens per forward pass); "
          f"{rss_mib():.0f} MiB after the short run")

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(llm.model_config.model_path), device="cpu")
    window = llm.model_config.max_model_len - 2
    st_vectors, st_s, st_tokens = st_manual(st, llm.tokenizer, docs[:args.st_docs], window)
    ours = np.stack([o.outputs.numpy() for o in outputs[:args.st_docs]])
    cos = (ours * st_vectors).sum(1)
    print(f"st        manual chunk-then-average loop, {args.st_docs} documents: {st_tokens / st_s:,.0f} tokens/s "
          f"(fp32, batch_size=32)")
    print(f"ratio     poolkit chunked / ST loop: {(ran / chunked_s) / (st_tokens / st_s):.2f}x tokens/s; "
          f"cosine min {cos.min():.5f} mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
