"""Padding-free ("packed" / varlen) attention for transformers models.

A packed batch is one row of ``T`` tokens: every sequence laid end to end,
``cu_seq_lens`` marking where each starts. The linear layers then do no work
on padding at all. Only attention needs the sequence boundaries; this module
registers an attention implementation, ``poolkit_varlen``, with transformers'
``AttentionInterface`` that honours them:

* CUDA, fp16/bf16: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention).
* elsewhere: the scheduler hands sequences sorted by length, so sequences of
  equal length sit next to each other and each such run is a plain
  ``(n, H, L, d)`` view of the packed tensor: attention over it needs no
  padding between sequences. On CPU a run is attended a few sequences at a
  time, in fp32 (two BLAS matmuls and a softmax, sized so the scores stay in
  cache), about as fast as SDPA's fused kernel on the padded batch
  (``benchmarks/bench_attention.py``) without its padding;
  on GPUs without varlen kernels, ``scaled_dot_product_attention`` per run.

Unpacked calls (a normal padded batch with a mask) go to transformers' SDPA
path unchanged, so a model set to ``poolkit_varlen`` behaves like ``sdpa``
until it is handed ``cu_seq_lens_q``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN_IMPLEMENTATION = "poolkit_varlen"
# Attention scores materialised per CPU chunk (elements): 8 MiB in fp32, cache-sized.
SCORES_PER_CHUNK = 1 << 21

Run = tuple[int, int, int, int]  # (first token, number of sequences, their length, keys each query sees)


def length_runs(lengths: Sequence[int], keys: Sequence[int] | None = None) -> list[Run]:
    """Consecutive sequences of equal length (and equal visible keys), as ``(first token, count, length, keys)``.

    ``keys``: per sequence, how many of its first tokens every token attends to (default: all). ColBERT-style
    query expansion appends tokens that attend to the query but that nothing attends to.
    """
    runs, start = [], 0
    for (length, visible), group in itertools.groupby(zip(lengths, keys if keys is not None else lengths)):
        count = len(list(group))
        runs.append((start, count, length, visible))
        start += count * length
    return runs


def blocked_positions(length: int, causal: bool, window: int | None, device: torch.device) -> torch.Tensor | None:
    """``(L, L)`` True where a query may not see a key: later tokens (causal) and tokens ``window`` or more
    positions away (sliding window, transformers' convention for both causal and bidirectional models)."""
    blocked = None
    if causal:
        blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu_(1)
    if window is not None and length > window:
        positions = torch.arange(length, device=device)
        far = (positions[:, None] - positions[None, :]).abs() >= window
        blocked = far if blocked is None else blocked | far
    return blocked


def _attend_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, blocked: torch.Tensor | None
                ) -> torch.Tensor:
    # fp32: the one copy these strided views need anyway also converts them, and fp32
    # matmuls go to BLAS — bf16 ones go to oneDNN, which keeps ~1-3 MB for every
    # distinct shape it has seen, and attention shapes vary with every batch.
    q, k, v = (torch.empty(t.shape, dtype=torch.float32, device=t.device).copy_(t) for t in (q, k, v))
    scores = torch.matmul(q.mul_(scaling), k.transpose(-1, -2))
    if blocked is not None:
        scores.masked_fill_(blocked, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def run_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, runs: Sequence[Run], scaling: float, causal: bool,
    window: int | None = None,
) -> torch.Tensor:
    """Attention over packed ``(H, T, d)`` tensors, one run of equal-length sequences at a time.

    ``window``: a sliding window (keys fewer than ``window`` positions away), honoured per sequence.
    Returns ``(T, H, d)``, the layout transformers' attention functions return.
    """
    heads, tokens, dim = query.shape
    groups = heads // key.shape[0]
    out = query.new_empty(tokens, heads, dim)
    on_cpu = query.device.type == "cpu"
    for start, count, length, visible in runs:
        blocked = blocked_positions(length, causal, window, query.device)
        if blocked is not None and visible < length:
            blocked = blocked[:, :visible]
        step = max(1, SCORES_PER_CHUNK // (heads * length * length)) if on_cpu else count
        for first in range(0, count, step):
            n = min(step, count - first)
            span = slice(start + first * length, start + (first + n) * length)
            q, k, v = (t[:, span].unflatten(1, (n, length)).transpose(0, 1) for t in (query, key, value))
            k, v = k[:, :, :visible], v[:, :, :visible]
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            if on_cpu:
                o = _attend_cpu(q, k, v, scaling, blocked)
            elif blocked is None:
                o = F.scaled_dot_product_attention(q, k, v, scale=scaling)
            else:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked, scale=scaling)
            out[span] = o.transpose(1, 2).reshape(n * length, heads, dim)
    return out


@functools.cache
def _torch_has_varlen_attn() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def use_flash_varlen(device: torch.device, dtype: torch.dtype) -> bool:
    """FlashAttention varlen runs on CUDA in half precision, where torch ships it."""
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _torch_has_varlen_attn()


def _flash_varlen(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_lens: torch.Tensor, max_len: int,
    scaling: float, causal: bool, window: int | None = None,
) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    # (H, T, d) → (T, H, d), the layout the kernel takes and returns.
    q, k, v = (t.transpose(0, 1) for t in (query, key, value))
    cu = cu_seq_lens.to(torch.int32)
    reach = -1 if window is None else window - 1  # FlashAttention counts the keys beside the query
    return varlen_attn(
        q, k, v, cu, cu, max_len, max_len, scale=scaling,
        window_size=(reach, 0) if causal else (reach, reach), enable_gqa=k.shape[1] != q.shape[1],
    )


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: packed when given ``cu_seq_lens_q``, else plain SDPA."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    for unsupported in ("softcap", "position_bias"):
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(f"packed attention does not support {unsupported}")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    max_len = int(kwargs["max_length_q"])
    # transformers' window (kwargs and masks alike): keys fewer than `sliding_window` positions away.
    # Sequences no longer than the window never reach its edge, the usual case (e5-mistral: 4096).
    window = kwargs.get("sliding_window")
    window = int(window) if window is not None and max_len > window else None
    q, k, v = query[0], key[0], value[0]  # transformers hands (1, H, T, d)
    # The runner computes the runs once per batch; every layer reuses them.
    runs = kwargs.get("packed_runs") or length_runs(cu_seq_lens.diff().tolist())
    partial_keys = any(visible < length for _, _, length, visible in runs)  # expanded queries: run by run
    if use_flash_varlen(q.device, q.dtype) and not partial_keys:
        out = _flash_varlen(q, k, v, cu_seq_lens, max_len, scaling, causal, window)
    else:
        out = run_attention(q, k, v, runs, scaling, causal, window)
    return out.unsqueeze(0), None


def _varlen_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
    """Packed calls carry no mask (boundaries travel as cu_seq_lens); padded calls get SDPA's."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make ``poolkit_varlen`` a valid ``attn_implementation``; returns its name."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, _varlen_mask)
    return ATTN_IMPLEMENTATION
