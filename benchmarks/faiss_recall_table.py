"""Recall vs dimension vs memory for poolkit_faiss index families on real embeddings.

Embeds ``--n`` texts of the benchmark corpus (plus ``--queries`` held-out texts
as queries) with all-MiniLM-L6-v2 through ``poolkit.LLM``, then for each
Matryoshka dimension x index family prints recall@10 against exact
full-dimension (384) search, recall@10 against exact search at the same
dimension (the index's own loss), the size model's bytes/vector and total
bytes, and the measured serialized size.

all-MiniLM-L6-v2 is NOT Matryoshka-trained. The script loads it with
``hf_overrides={"is_matryoshka": True}`` only so that the engine agrees to
truncate, to measure what truncation costs; poolkit_faiss never truncates that
model otherwise.

    .venv/bin/python benchmarks/faiss_recall_table.py            # defaults: 3000 texts, 300 queries
    .venv/bin/python benchmarks/faiss_recall_table.py --n 8000 --threads 2 --json results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from poolkit_faiss import VectorIndex, format_bytes, plan_for, plan_index, recall_at_k
from poolkit_faiss.planning import CODECS, BudgetError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / ".." / "shared" / "data" / "bench_corpus.jsonl"
DEFAULT_FAMILIES = "flat/fp32,hnsw/fp32,ivf/sq8,ivf/rabitq4,ivf/rabitq2,ivf/pqfs4,ivf/pqfs8,ivf/rabitq"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--n", type=int, default=3000, help="texts to index")
    parser.add_argument("--queries", type=int, default=300, help="held-out texts used as queries")
    parser.add_argument("--dims", default="384,256,128,64")
    parser.add_argument("--families", default=DEFAULT_FAMILIES, help="comma-separated layout/codec names")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="faiss and torch threads (0: their defaults)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


def load_texts(path: Path, n: int, n_queries: int, seed: int) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines]
    if n + n_queries > len(texts):
        raise SystemExit(f"{path} has {len(texts)} texts; asked for {n} + {n_queries}")
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order[:n]], [texts[i] for i in order[n : n + n_queries]]


def truncate(x: np.ndarray, d: int) -> np.ndarray:
    """What PoolingParams(dimensions=d) does: keep the first d values, re-normalize."""
    y = np.ascontiguousarray(x[:, :d])
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def exact(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from poolkit import LLM, PoolingParams

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    dims = [int(d) for d in args.dims.split(",")]
    families = [f for f in args.families.split(",") if f]

    print("Model: sentence-transformers/all-MiniLM-L6-v2 (384-d), loaded with hf_overrides={'is_matryoshka': True}.")
    print("NOTE: all-MiniLM-L6-v2 is NOT Matryoshka-trained; the override is for this measurement only.")
    llm = LLM(hf_overrides={"is_matryoshka": True})
    corpus, queries = load_texts(args.corpus, args.n, args.queries, args.seed)
    start = time.perf_counter()
    vectors = [
        torch.stack([o.outputs.data for o in llm.encode(part, truncate_prompt_tokens=-1, use_tqdm=True)]).numpy()
        for part in (corpus, queries)
    ]
    base, query_vectors = (np.ascontiguousarray(v, dtype=np.float32) for v in vectors)
    elapsed = time.perf_counter() - start
    print(f"Embedded {len(corpus)} corpus texts + {len(queries)} held-out queries in {elapsed:.1f}s "
          "(truncate_prompt_tokens=-1: passages over 256 tokens are cut to the limit)")
    # Lower dimensions: numpy truncation of the 384-d vectors, checked against the engine's own.
    check = torch.stack([o.outputs.data for o in llm.encode(corpus[:8], PoolingParams(dimensions=dims[-1]),
                                                                truncate_prompt_tokens=-1, use_tqdm=False)]).numpy()
    np.testing.assert_allclose(truncate(base[:8], dims[-1]), check, atol=1e-5)

    truth_full = exact(base, query_vectors, args.k)
    rows = []
    header = (f"| dim | family | faiss factory | R@{args.k} vs exact-384 | R@{args.k} vs exact same dim "
              f"| B/vector | total (model) | serialized | search params |")
    print()
    print(f"Recall@{args.k} vs dimension vs memory: n={len(base)}, {len(queries)} held-out queries, "
          f"faiss {faiss.__version__}, inner product on normalized vectors")
    print()
    print(header)
    print("|---:|---|---|---:|---:|---:|---:|---:|---|")
    for d in dims:
        b, q = truncate(base, d), truncate(query_vectors, d)
        truth_dim = exact(b, q, args.k)
        for family in families:
            layout, codec = family.split("/")
            if not next(c for c in CODECS if c.name == codec).available():
                print(f"| {d} | {family} | (not in this faiss build) | | | | | | |")
                continue
            plan = plan_for(family, len(b), d, model_dimension=384, matryoshka=True,
                            model_name="sentence-transformers/all-MiniLM-L6-v2")
            t0 = time.perf_counter()
            index = VectorIndex.from_vectors(b, plan=plan, show_progress=False)
            build_s = time.perf_counter() - t0
            found = index.search(q, args.k).ids
            row = {
                "dim": d,
                "family": family,
                "factory": plan.factory,
                "recall_vs_exact_full": round(recall_at_k(found, truth_full, args.k), 4),
                "recall_vs_exact_same_dim": round(recall_at_k(found, truth_dim, args.k), 4),
                "bytes_per_vector": plan.bytes_per_vector,
                "total_bytes_model": plan.total_bytes,
                "serialized_bytes": index.serialized_size(),
                "search_params": plan.search_params,
                "build_s": round(build_s, 2),
            }
            rows.append(row)
            params = ", ".join(f"{k}={v}" for k, v in plan.search_params.items())
            print(f"| {d} | {family} | `{plan.factory}` | {row['recall_vs_exact_full']:.3f} | "
                  f"{row['recall_vs_exact_same_dim']:.3f} | {plan.bytes_per_vector:,.1f} | "
                  f"{plan.total_bytes:,} | {row['serialized_bytes']:,} | {params} |")
            sys.stdout.flush()

    # Codec ceilings: exhaustive search over the codes at full dimension (what CODECS.expected_recall records).
    print()
    print(f"Codec recall ceiling (flat layout, exhaustive, d=384), recall@{args.k} vs exact:")
    truth = truth_full
    for codec in CODECS:
        if not codec.available():
            continue
        plan = plan_for(f"flat/{codec.name}", len(base), 384)
        index = VectorIndex.from_vectors(base, plan=plan, show_progress=False)
        r = recall_at_k(index.search(query_vectors, args.k).ids, truth, args.k)
        print(f"  {codec.name:8s} {plan.factory:12s} {codec.code_size(384):5d} B code  recall {r:.3f} "
              f"(table: {codec.expected_recall:.2f})")

    print()
    print("What plan_index picks for all-MiniLM-L6-v2 (no Matryoshka) and with the override, per budget:")
    for n in (1_000_000, 10_000_000):
        for gib in (0.5, 1, 2, 4, 8, 16):
            budget = int(gib * 2**30)
            picks = []
            for mrl in (False, True):
                try:
                    p = plan_index(n, budget, dimension=384, is_matryoshka=mrl)
                    picks.append(f"{p.factory} d={p.dimension} ({format_bytes(p.total_bytes)})")
                except BudgetError as err:
                    need = err.smallest.total_bytes if err.smallest else math.nan
                    picks.append(f"none (needs {format_bytes(need)})")
            print(f"  n={n:>10,}  {gib:>4} GiB:  plain: {picks[0]:<48}  matryoshka: {picks[1]}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n": len(base), "queries": len(queries), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
