"""Chunked processing of inputs longer than the model (vLLM's ``enable_chunked_processing``).

An over-long input is cut into chunks that each fit ``max_model_len``, with the
model's special tokens (e.g. ``[CLS]`` … ``[SEP]``) re-added to every chunk —
vLLM does not re-add them; we do, so every chunk looks like an ordinary input
to the model — and ``chunk_overlap`` tokens shared between neighbours. Each
chunk is pooled without the head; the chunk vectors are averaged weighted by the
tokens each pooled, then the head runs once on the result (Dense, Matryoshka
truncation, normalization: normalizing *after* merging).

For MEAN pooling that average is exactly the mean over all tokens of the
chunk-wise forward passes. For CLS and LAST it is a token-weighted mean of the
chunks' first/last-token vectors: an approximation of what one long pass would
give, and documented as such.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import ModelConfig
from ..inputs import InputProcessor, TokenizedPrompt
from ..params import HeadOptions

# The default cap on an input's length with chunked processing (a multiple of max_model_len).
MAX_EMBED_LEN_FACTOR = 32
Head = Callable[[np.ndarray, Sequence[HeadOptions]], list[np.ndarray]]


@dataclass
class ChunkPlan:
    """How a request's sequences map back to its inputs.

    ``inputs``: every input as tokenized whole; ``spans[i]``: the range of the request's
    prompts that input ``i`` became (one, unless it was chunked); ``chunked[i]``: whether it was.
    """

    inputs: list[TokenizedPrompt]
    spans: list[tuple[int, int]]
    chunked: list[bool]
    options: list[HeadOptions]  # per input, the head to apply after merging


def max_embed_len(model_config: ModelConfig) -> int:
    limit = model_config.pooler_config.max_embed_len
    return limit if limit is not None else MAX_EMBED_LEN_FACTOR * model_config.max_model_len


def check_chunking(model_config: ModelConfig, processor: InputProcessor) -> None:
    """Refuse settings that cannot work, when the request asks for chunking (``ValueError``)."""
    from ..loader import check_chunked_processing

    pooler = model_config.pooler_config
    check_chunked_processing(pooler, model_config.task)
    if max_embed_len(model_config) < model_config.max_model_len:
        raise ValueError(f"max_embed_len={pooler.max_embed_len} is below max_model_len={model_config.max_model_len}")
    prefix, suffix = processor.special_template
    room = model_config.max_model_len - len(prefix) - len(suffix)
    overlap = pooler.chunk_overlap or 0
    if not 0 <= overlap < room:
        raise ValueError(f"chunk_overlap must be between 0 and {room - 1} tokens (a chunk holds {room} besides "
                         f"the special tokens); got {overlap}")


def split(prompt: TokenizedPrompt, processor: InputProcessor, overlap: int) -> list[TokenizedPrompt]:
    """Chunks of an over-long prompt, each within the model's limit, special tokens re-added to each.

    A token-id prompt without the model's special tokens is cut as it is (nothing is added that the
    caller did not send).
    """
    prefix, suffix = processor.special_template
    ids = prompt.input_ids
    framed = ids[:len(prefix)] == prefix and (not suffix or ids[len(ids) - len(suffix):] == suffix)
    if not framed:
        prefix, suffix = [], []
    body = ids[len(prefix):len(ids) - len(suffix)]
    room = processor.max_model_len - len(prefix) - len(suffix)
    step = room - overlap
    chunks = []
    start = 0
    while True:
        piece = body[start:start + room]
        # Only the first chunk holds the prompt that pooling may leave out.
        chunks.append(TokenizedPrompt(prefix + piece + suffix, pool_start=prompt.pool_start if start == 0 else 0))
        if start + room >= len(body):
            return chunks
        start += step


def plan(processor: InputProcessor, model_config: ModelConfig, tokens: list[TokenizedPrompt],
         options: list[HeadOptions]) -> tuple[list[TokenizedPrompt], list[HeadOptions], ChunkPlan | None]:
    """The sequences to run for ``tokens`` (over-long ones chunked) and how to merge them back."""
    if all(len(t) <= processor.max_model_len for t in tokens):
        return tokens, options, None
    overlap = model_config.pooler_config.chunk_overlap or 0
    prompts: list[TokenizedPrompt] = []
    run_options: list[HeadOptions] = []
    spans, chunked = [], []
    for token, option in zip(tokens, options):
        pieces = split(token, processor, overlap) if len(token) > processor.max_model_len else [token]
        is_chunked = len(pieces) > 1 or pieces[0] is not token
        spans.append((len(prompts), len(prompts) + len(pieces)))
        chunked.append(is_chunked)
        prompts += pieces
        run_option = HeadOptions(option.normalize, option.activation, option.dimensions, raw=True) \
            if is_chunked else option
        run_options += [run_option] * len(pieces)
    return prompts, run_options, ChunkPlan(tokens, spans, chunked, options)


def merge(request_prompts: Sequence[TokenizedPrompt], pooled: Sequence[np.ndarray], chunk_plan: ChunkPlan,
          head: Head | None) -> list[np.ndarray]:
    """One vector per input: chunked inputs' chunk vectors merged (token-weighted), then the head on them."""
    results: list[np.ndarray | None] = []
    merged, merged_options, slots = [], [], []
    for i, (start, stop) in enumerate(chunk_plan.spans):
        if not chunk_plan.chunked[i]:
            results.append(pooled[start])
            continue
        weights = np.array([len(p) - p.pool_start for p in request_prompts[start:stop]], dtype=np.float64)
        stacked = np.stack([np.asarray(v, dtype=np.float64) for v in pooled[start:stop]])
        merged.append((weights[:, None] * stacked).sum(0) / weights.sum())
        merged_options.append(chunk_plan.options[i])
        slots.append(i)
        results.append(None)
    if merged:
        if head is None:
            raise RuntimeError("chunked inputs need the engine's head to finish (LLM.execute / the async engine)")
        for slot, vector in zip(slots, head(np.stack(merged).astype(np.float32), merged_options)):
            results[slot] = vector
    return results  # type: ignore[return-value]
