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
  padding between sequences, one ``scaled_dot_product_attention`` call per
  run. On CPU that is torch's fused flash kernel, in the model's dtype
  (``benchmarks/bench_attention.py`` times it against SDPA on the padded
  batch). With AMX, bf16 runs through oneDNN brgemm kernels cached per block
  shape: the cache grows with the distinct lengths seen and levels off
  (~120 MB for lengths up to 512, ~470 MB past 1,500 on the project's AMX
  VM, Xeon family 6 model 207).

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


def run_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, runs: Sequence[Run], scaling: float, causal: bool,
    window: int | None = None,
) -> torch.Tensor:
    """Attention over packed ``(H, T, d)`` tensors, one run of equal-length sequences at a time.

    ``window``: a sliding window (keys fewer than ``window`` positions away), honoured per sequence.
    Returns ``(T, H, d)``, the layout transformers' attention functions return.
    """
    heads, tokens, dim = query.shape
    grouped = key.shape[0] != heads
    out = query.new_empty(tokens, heads, dim)
    # Every run is one strided view per tensor (as_strided, not slice/unflatten/transpose): each tensor call
    # returns to Python and retakes the GIL, which in the server means waiting for the event loop's thread.
    for start, count, length, visible in runs:
        q, k, v = (_run_view(t, start, count, length, keys) for t, keys in
                   ((query, length), (key, visible), (value, visible)))
        # A plain causal run takes the kernels' is_causal path; windows and hidden keys need a mask.
        plain_causal = causal and visible == length and (window is None or length <= window)
        blocked = None if plain_causal else blocked_positions(length, causal, window, query.device)
        if blocked is not None and visible < length:
            blocked = blocked[:, :visible]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if blocked is None else ~blocked,
                                           is_causal=plain_causal, scale=scaling, enable_gqa=grouped)
        out.as_strided((count, heads, length, dim), (length * heads * dim, dim, heads * dim, 1),
                       start * heads * dim).copy_(o)
    return out


def _run_view(packed: torch.Tensor, start: int, count: int, length: int, keep: int) -> torch.Tensor:
    """``(count, H, keep, d)``: the first ``keep`` tokens of each of ``count`` sequences of ``length`` tokens that
    start at token ``start`` of a packed ``(H, T, d)`` tensor (any strides)."""
    heads, _, dim = packed.shape
    head_stride, token_stride, dim_stride = packed.stride()
    return packed.as_strided((count, heads, keep, dim), (length * token_stride, head_stride, token_stride, dim_stride),
                             packed.storage_offset() + start * token_stride)


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
