"""Packed attention kernel vs what transformers runs on a padded batch, same inputs, one run.

    python benchmarks/bench_attention.py                 # MiniLM heads (12 × 32), bf16, CPU
    python benchmarks/bench_attention.py --heads 12 --head-dim 64 --dtype float32

For each (rows, longest length) it draws lengths in [3/4 longest, longest]
sorted longest first (as the scheduler hands them), and times:

* ``sdpa``: ``scaled_dot_product_attention`` on the right-padded ``(B, H, L, d)``
  batch with a boolean key-padding mask — transformers' ``sdpa`` path;
* ``packed``: :func:`poolkit.attention.run_attention` on the packed tokens.

It prints milliseconds per call, the speed-up, and the largest difference of
the packed result from SDPA on the real (unpadded) tokens.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from poolkit.attention import length_runs, run_attention


def timed(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=8192, help="token budget per batch (rows = budget / length)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    heads, dim = args.heads, args.head_dim
    generator = torch.Generator().manual_seed(0)
    print(f"{'rows':>5} {'len':>5} {'sdpa ms':>9} {'packed ms':>10} {'speed-up':>9} {'max diff':>9}")
    for longest in (32, 64, 128, 256, 512, 1024):
        rows = max(1, args.tokens // longest)
        lengths = sorted(torch.randint(3 * longest // 4, longest + 1, (rows,), generator=generator).tolist(), reverse=True)
        total = sum(lengths)
        # (H, T, d) views of (T, H, d) storage: the layout transformers hands the attention function.
        q, k, v = (torch.randn(total, heads, dim, generator=generator).to(args.device, dtype).transpose(0, 1) for _ in range(3))
        # The same tokens, right-padded, as transformers' sdpa path sees them.
        padded = [torch.zeros(rows, heads, longest, dim, device=args.device, dtype=dtype) for _ in range(3)]
        start = 0
        for row, n in enumerate(lengths):
            for dst, src in zip(padded, (q, k, v)):
                dst[row, :, :n] = src[:, start : start + n]
            start += n
        mask = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :].to(args.device)
        runs = length_runs(lengths)
        sdpa_ms = timed(lambda: F.scaled_dot_product_attention(*padded, attn_mask=mask), args.repeat)
        packed_ms = timed(lambda: run_attention(q, k, v, runs, dim**-0.5, False), args.repeat)
        ref = F.scaled_dot_product_attention(*padded, attn_mask=mask)
        got = run_attention(q, k, v, runs, dim**-0.5, False)
        diff, start = 0.0, 0
        for row, n in enumerate(lengths):
            diff = max(diff, (got[start : start + n].transpose(0, 1) - ref[row, :, :n]).abs().max().item())
            start += n
        print(f"{rows:5d} {longest:5d} {sdpa_ms:9.2f} {packed_ms:10.2f} {sdpa_ms / packed_ms:8.2f}x {diff:9.4f}")


if __name__ == "__main__":
    main()
