"""Offline embedding throughput: poolkit vs sentence-transformers, same model, same texts, one run.

    python benchmarks/bench_throughput.py                    # default model, 3000 corpus texts, LLM defaults
    python benchmarks/bench_throughput.py --compile on       # torch.compile (padded length buckets)
    python benchmarks/bench_throughput.py --packing off      # padded batches instead of packed
    python benchmarks/bench_throughput.py --random-model bert-base --device cuda --max-len 512 --fixed-len 512
    python benchmarks/bench_throughput.py --random-model bert-base --device cuda --lengths 8:512  # mixed, no corpus needed

Prints texts/s, tokens/s, the ratio to sentence-transformers (fp32,
``encode(batch_size=32)``), min/mean cosine against it, poolkit's cold start
(load + compile, split) and peak RSS. With ``--random-model`` a randomly
initialised model of the given shape is built in place (no weights needed) and
the achieved FLOP/s is printed as a fraction of ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "bench_corpus.jsonl"

SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    # ModernBERT-base (local attention every layer but each third; GLU MLP).
    "modernbert-base": dict(architecture="modernbert", hidden_size=768, num_hidden_layers=22, num_attention_heads=12,
                            intermediate_size=1152, local_attention=128, global_attn_every_n_layers=3),
    # Qwen3-Embedding-0.6B's width and heads with 8 of its 28 layers, to fit a CPU run (a decoder embedder,
    # LAST pooling, as its Sentence-Transformers files say).
    "qwen3-0.6b-8l": dict(architecture="qwen3", hidden_size=1024, num_hidden_layers=8, num_attention_heads=16,
                          num_key_value_heads=8, head_dim=128, intermediate_size=3072),
}


def load_texts(n: int) -> list[str]:
    texts = []
    with open(CORPUS, encoding="utf-8") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
            if len(texts) >= n:
                break
    return texts


def build_random_model(shape: str, max_len: int) -> str:
    """A randomly initialised model of ``shape`` saved to a temp dir: BERT-style encoders with the default
    model's WordPiece tokenizer, decoders with a byte-level BPE tokenizer trained on the corpus."""
    import transformers as tf

    from poolkit.testing import add_sentence_transformers_files, build_bpe_tokenizer, build_wordpiece_tokenizer

    path = Path(tempfile.mkdtemp(prefix=f"poolkit-{shape}-"))
    options = dict(SHAPES[shape])
    architecture = options.pop("architecture", "bert")
    sample = load_texts(2000) if CORPUS.exists() else ["hello world"] * 10
    if architecture == "qwen3":
        tokenizer = build_bpe_tokenizer(path, texts=sample, vocab_size=8000)
        tokenizer.pad_token = tokenizer.eos_token  # as Qwen3-Embedding ships it (the peer pads batches)
        tokenizer.padding_side = "left"
    else:
        try:
            from poolkit import default_model_path

            tokenizer = tf.AutoTokenizer.from_pretrained(default_model_path())
        except ImportError:  # e.g. on a GPU box without the model package: a locally trained tokenizer
            tokenizer = build_wordpiece_tokenizer(path, texts=sample, vocab_size=8000)
    tokenizer.model_max_length = max(512, max_len)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), max_position_embeddings=max(512, max_len), **options)
    if architecture == "qwen3":
        ids = dict(pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                   bos_token_id=tokenizer.bos_token_id)
        tf.Qwen3Model(tf.Qwen3Config(**common, **ids)).save_pretrained(path)
        add_sentence_transformers_files(path, pooling="lasttoken", normalize=True, max_seq_length=max(512, max_len))
    elif architecture == "modernbert":
        ids = dict(pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                   sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                   eos_token_id=tokenizer.sep_token_id)
        tf.ModernBertModel(tf.ModernBertConfig(**common, **ids)).save_pretrained(path)
        add_sentence_transformers_files(path, pooling="mean", normalize=True, max_seq_length=max(512, max_len))
    else:
        tf.BertModel(tf.BertConfig(**common)).save_pretrained(path)
    return str(path)


def flops_per_token(hidden: int, layers: int, intermediate: int, seq_len: float) -> float:
    """2 × non-embedding parameters + attention (QK^T and AV: 4 × L × d per layer)."""
    params = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    return 2 * params + layers * 4 * seq_len * hidden


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path or hub id (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--random-model", choices=sorted(SHAPES), help="benchmark a randomly initialised model of this shape")
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--fixed-len", type=int, default=0, help="use synthetic inputs of exactly this many tokens")
    parser.add_argument("--lengths", default=None, metavar="LO:HI",
                        help="synthetic inputs of uniformly random lengths (words) in [LO, HI] instead of the corpus")
    parser.add_argument("--max-len", type=int, default=None, help="max_model_len for poolkit (and ST truncation)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default=None, help="on, off or auto (default: what LLM does, env POOLKIT_COMPILE)")
    parser.add_argument("--packing", default=None, help="padding-free batches: auto, on or off (default: env POOLKIT_PACKING, else auto)")
    parser.add_argument("--budget", type=int, default=None, help="max_num_batched_tokens")
    parser.add_argument("--peer", choices=["st", "none"], default="st")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak, for the FLOP/s fraction")
    parser.add_argument("--repeat", type=int, default=2, help="timed passes over the texts (best is reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from poolkit import LLM, default_model_path

    model = build_random_model(args.random_model, args.max_len or 512) if args.random_model else args.model
    if args.fixed_len:
        texts = [" ".join(["hello"] * (args.fixed_len - 2))] * args.texts
    elif args.lengths:
        lo, hi = map(int, args.lengths.split(":"))
        rng = np.random.default_rng(0)
        texts = [" ".join(["hello"] * int(n)) for n in rng.integers(lo, hi + 1, args.texts)]
    else:
        texts = load_texts(args.texts)

    t0 = time.perf_counter()
    llm = LLM(model, dtype=args.dtype, device=args.device, compile=args.compile, max_model_len=args.max_len,
              max_num_batched_tokens=args.budget, packing=args.packing)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    llm.embed(texts[: min(len(texts), 512)], truncate_prompt_tokens=-1, use_tqdm=False)  # warm-up: compiles buckets
    warm_s = time.perf_counter() - t1
    lengths = np.array([len(o.prompt_token_ids) for o in llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)])
    tokens = int(lengths.sum())
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
        if llm.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    ours = np.array([o.outputs.embedding for o in outs], dtype=np.float32)
    print(f"poolkit   {llm!r}")
    print(f"poolkit   cold start: load {load_s:.1f} s + first batches/compile {warm_s:.1f} s")
    print(f"poolkit   {len(texts) / best:9.1f} texts/s {tokens / best:10.0f} tokens/s  ({len(texts)} texts, {tokens} tokens)")
    cfg = llm.model_config.hf_config
    # Attention costs ∝ L² per sequence: the token-weighted mean length is the right average.
    # Approximate for other shapes: GLU MLPs (Qwen3, ModernBERT) have three projections where BERT has two;
    # grouped-query / wider attention projections are counted as four hidden x hidden matrices.
    intermediate = cfg.intermediate_size * {"qwen3": 1.5, "modernbert": 1.5}.get(cfg.model_type, 1.0)
    fpt = flops_per_token(cfg.hidden_size, cfg.num_hidden_layers, int(intermediate), (lengths**2).sum() / tokens)
    achieved = fpt * tokens / best
    line = f"poolkit   model FLOP/s {achieved / 1e12:.2f} TFLOP/s ({fpt / 1e6:.1f} MFLOP/token)"
    if args.peak_tflops:
        line += f" = {100 * achieved / (args.peak_tflops * 1e12):.1f}% of {args.peak_tflops} TFLOP/s peak"
    print(line)
    print(f"poolkit   peak RSS {peak_rss_mib():.0f} MiB (process, before the peer runs)")

    if args.peer == "st":
        from sentence_transformers import SentenceTransformer

        path = model or default_model_path()
        st = SentenceTransformer(path, device="cpu" if llm.device.type == "cpu" else str(llm.device))
        st.max_seq_length = llm.model_config.max_model_len
        st.encode(texts[:64], batch_size=32)
        best_st = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            ref = st.encode(texts, batch_size=32, convert_to_numpy=True)
            best_st = min(best_st, time.perf_counter() - t)
        cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"st        {len(texts) / best_st:9.1f} texts/s {tokens / best_st:10.0f} tokens/s  (fp32, batch_size=32)")
        print(f"ratio     {best_st / best:.2f}x sentence-transformers; cosine vs ST min {cos.min():.5f} mean {cos.mean():.5f}")
    print(f"peak RSS  {peak_rss_mib():.0f} MiB (process, end of run)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
