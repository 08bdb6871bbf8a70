"""Pooling and heads: hidden states → pooled vectors → normalize / activation / Matryoshka.

Small modules in the spirit of Sentence-Transformers (Pooling, Dense,
Normalize) operating on right-padded batches with known lengths, so the
padding side of the tokenizer never matters. All maths runs in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, PoolerConfig, PoolingType
from .inputs import TokenizedPrompt
from .params import HeadOptions
from .token_heads import MultiVectorHead, SparseHead, keep_top

Activation = Literal["softmax", "sigmoid", "identity"]


def classification_activation(problem_type: str | None, num_labels: int) -> Activation:
    """Activation implied by the head, as transformers' losses interpret it."""
    if problem_type == "multi_label_classification":
        return "sigmoid"
    if problem_type == "regression":
        return "identity"
    if num_labels == 1:
        return "sigmoid"
    return "softmax"


def apply_activation(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    logits = logits.float()
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)  # subtracts the row max: stable for large logits
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def by_option(rows: torch.Tensor, options: Sequence[HeadOptions], key: Callable[[HeadOptions], Any],
              apply: Callable[[torch.Tensor, Any], torch.Tensor]) -> list[torch.Tensor]:
    """``apply(block, key)`` once per group of rows whose options share ``key``, not once per row: every tensor
    call retakes the GIL, which the server's event loop thread often holds."""
    groups: dict[Any, list[int]] = {}
    for i, opt in enumerate(options):
        groups.setdefault(key(opt), []).append(i)
    if len(groups) == 1:
        return list(apply(rows, next(iter(groups))).unbind(0))
    out: list[torch.Tensor] = [torch.empty(0)] * len(options)
    for group, members in groups.items():
        for i, row in zip(members, apply(rows[members], group).unbind(0)):
            out[i] = row
    return out


def _embedding_rows(vectors: torch.Tensor, dimensions_normalize: tuple[int | None, bool]) -> torch.Tensor:
    dimensions, normalize = dimensions_normalize
    if dimensions is not None:
        vectors = vectors[:, :dimensions]  # Matryoshka: truncate first, then re-normalize
    return F.normalize(vectors, p=2, dim=-1) if normalize else vectors


def sequence_rows(lengths: torch.Tensor) -> torch.Tensor:
    """The sequence of each token of packed ``(T, D)`` states."""
    return torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths)


def select_sequences(states: torch.Tensor, lengths: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """The states of sequences ``rows`` (packed ``(T, D)`` or padded ``(B, L, D)``), in the same form."""
    if states.dim() != 2:
        return states.index_select(0, torch.tensor(list(rows), device=states.device))
    begins = (torch.cumsum(lengths, 0) - lengths).tolist()
    sizes = lengths.tolist()
    return torch.cat([states[begins[r]:begins[r] + sizes[r]] for r in rows])


def pool_sequences(
    states: torch.Tensor, lengths: torch.Tensor, pooling_type: PoolingType, starts: torch.Tensor | None = None
) -> torch.Tensor:
    """Reduce packed ``(T, D)`` or right-padded ``(B, L, D)`` states to ``(B, D)`` using true lengths.

    ``starts``: per row, the first token to pool (tokens before it are a prompt
    that pooling leaves out; CLS then takes the first token after the prompt, as
    sentence-transformers does).
    """
    if states.dim() == 2:
        return _pool_packed(states, lengths, pooling_type, starts)
    states = states.float()
    rows = torch.arange(states.shape[0], device=states.device)
    if pooling_type is PoolingType.CLS:
        return states[:, 0] if starts is None else states[rows, starts]
    if pooling_type is PoolingType.LAST:
        return states[rows, lengths - 1]
    if pooling_type is PoolingType.MEAN:
        positions = torch.arange(states.shape[1], device=states.device)[None, :]
        keep = positions < lengths[:, None]
        if starts is not None:
            keep &= positions >= starts[:, None]
        mask = keep.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(dim=1) / mask.sum(dim=1)
    raise ValueError(f"{pooling_type.value} pooling yields per-token outputs, not one vector")


def _pool_packed(states: torch.Tensor, lengths: torch.Tensor, pooling_type: PoolingType,
                 starts: torch.Tensor | None) -> torch.Tensor:
    ends = torch.cumsum(lengths, 0)
    begins = ends - lengths
    if pooling_type is PoolingType.CLS:
        return states[begins if starts is None else begins + starts].float()
    if pooling_type is PoolingType.LAST:
        return states[ends - 1].float()
    if pooling_type is PoolingType.MEAN:
        rows = sequence_rows(lengths)
        counts = lengths
        tokens = states
        if starts is not None:
            keep = torch.arange(states.shape[0], device=states.device) - begins[rows] >= starts[rows]
            rows, tokens, counts = rows[keep], states[keep], lengths - starts
        sums = torch.zeros(lengths.shape[0], states.shape[1], dtype=torch.float32, device=states.device)
        return sums.index_add_(0, rows, tokens.float()) / counts[:, None].float()
    raise ValueError(f"{pooling_type.value} pooling yields per-token outputs, not one vector")


def pool_tokens(
    states: torch.Tensor,
    lengths: torch.Tensor,
    input_ids: Sequence[Sequence[int]],
    pooling_type: PoolingType,
    step_tag_id: int | None = None,
    returned_token_ids: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """ALL / STEP pooling: one ``(tokens, D)`` tensor per sequence (packed or padded states)."""
    out = []
    packed = torch.split(states, lengths.tolist()) if states.dim() == 2 else None
    for row, length in enumerate(lengths.tolist()):
        tokens = (packed[row] if packed is not None else states[row, :length]).float()
        if returned_token_ids:
            tokens = tokens[:, list(returned_token_ids)]
        if pooling_type is PoolingType.STEP and step_tag_id is not None:
            ids = torch.as_tensor(input_ids[row][:length], device=tokens.device)
            tokens = tokens[ids == step_tag_id]
        out.append(tokens)
    return out


class Pooler(nn.Module):
    """Pooling type + optional Dense stack + head, built from the resolved PoolerConfig."""

    def __init__(self, model_config: ModelConfig, dense: nn.Module | None = None, score_head: nn.Module | None = None,
                 sparse_head: SparseHead | None = None, multi_vector_head: MultiVectorHead | None = None):
        super().__init__()
        self.sparse_head = sparse_head
        self.multi_vector_head = multi_vector_head
        self.model_config = model_config
        self.config: PoolerConfig = model_config.pooler_config
        self.pooling_type = PoolingType.parse(self.config.pooling_type or "LAST")
        self.dense = dense
        self.score_head = score_head
        self.activation_kind = classification_activation(model_config.problem_type, model_config.num_labels)
        if model_config.task == "reward":
            # Reward heads: softmax over labels when several, sigmoid for a single logit.
            self.activation_kind = "softmax" if model_config.num_labels > 1 else "sigmoid"

    def model_free(self, option: HeadOptions) -> bool:
        """This output needs no forward pass (an inference-free sparse encoder's static role)."""
        return option.output == "sparse" and self.sparse_head is not None and self.sparse_head.model_free(option.role)

    def without_model(self, prompt: TokenizedPrompt, option: HeadOptions) -> torch.Tensor:
        """The output of a :meth:`model_free` prompt, from its token ids."""
        assert self.sparse_head is not None
        weights = self.sparse_head.static(prompt.input_ids).cpu()
        return weights if option.max_active_dims is None else keep_top(weights, option.max_active_dims)

    @property
    def per_token(self) -> bool:
        return self.pooling_type in (PoolingType.ALL, PoolingType.STEP)

    def forward(
        self,
        states: torch.Tensor,
        lengths: torch.Tensor,
        prompts: Sequence[TokenizedPrompt],
        options: Sequence[HeadOptions],
    ) -> list[torch.Tensor]:
        """Pooled, head-applied results for one batch, moved to CPU."""
        kinds = {opt.output for opt in options}
        if kinds == {"dense"}:
            return self._dense(states, lengths, prompts, options)
        results: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        for kind in kinds:  # a merged server batch may ask different outputs of one model (BGE-M3)
            rows = [i for i, opt in enumerate(options) if opt.output == kind]
            index = torch.tensor(rows, device=states.device)
            sub = (select_sequences(states, lengths, rows), lengths.index_select(0, index),
                   [prompts[i] for i in rows], [options[i] for i in rows])
            for i, value in zip(rows, self._by_kind(kind, *sub)):
                results[i] = value
        return results

    def _by_kind(self, kind: str, states: torch.Tensor, lengths: torch.Tensor, prompts: Sequence[TokenizedPrompt],
                 options: Sequence[HeadOptions]) -> list[torch.Tensor]:
        input_ids = [p.input_ids for p in prompts]
        if kind == "sparse" and self.sparse_head is not None:
            weights = self.sparse_head(states, lengths, input_ids).cpu()
            return [row if opt.max_active_dims is None else keep_top(row, opt.max_active_dims)
                    for row, opt in zip(weights, options)]
        if kind == "multi_vector" and self.multi_vector_head is not None:
            return self.multi_vector_head(states, lengths, input_ids, [opt.role for opt in options])
        if kind == "dense":
            return self._dense(states, lengths, prompts, options)
        raise ValueError(f"This model has no {kind} head")

    def _dense(
        self,
        states: torch.Tensor,
        lengths: torch.Tensor,
        prompts: Sequence[TokenizedPrompt],
        options: Sequence[HeadOptions],
    ) -> list[torch.Tensor]:
        input_ids = [p.input_ids for p in prompts]
        if self.model_config.head == "sequence":
            pooled = states.float()  # (B, num_labels) logits straight from the HF head
            return by_option(pooled.cpu(), options, lambda opt: opt.activation, self._activate_rows)
        if self.per_token:
            step_tag = self.config.step_tag_id if self.pooling_type is PoolingType.STEP else None
            rows = pool_tokens(states, lengths, input_ids, self.pooling_type, step_tag, self.config.returned_token_ids)
            return [self._token_head(row.cpu(), opt) for row, opt in zip(rows, options)]
        starts = None
        if any(p.pool_start for p in prompts):
            starts = torch.tensor([p.pool_start for p in prompts], device=states.device)
        pooled = pool_sequences(states, lengths, self.pooling_type, starts)
        if all(opt.raw for opt in options):
            return list(pooled.cpu())
        headed = self.head(pooled, options)
        return [raw if opt.raw else row for raw, row, opt in zip(pooled.cpu(), headed, options)]

    def head(self, pooled: torch.Tensor, options: Sequence[HeadOptions]) -> list[torch.Tensor]:
        """Dense layers, a decoder classifier's score head, then activation or Matryoshka + normalize,
        on pooled ``(B, D)`` vectors (also used on the merged vector of a chunked long input)."""
        if self.dense is not None:
            pooled = self.dense(pooled.to(next(self.dense.parameters()).dtype)).float()
        if self.score_head is not None:
            pooled = self.score_head(pooled.to(self.score_head.weight.dtype)).float()
            return by_option(pooled.cpu(), options, lambda opt: opt.activation, self._activate_rows)
        return by_option(pooled.cpu(), options, lambda opt: (opt.dimensions, opt.normalize), _embedding_rows)

    def _activate_rows(self, logits: torch.Tensor, activation: bool) -> torch.Tensor:
        return apply_activation(logits, self.activation_kind if activation else "identity")

    def _token_head(self, tokens: torch.Tensor, opt: HeadOptions) -> torch.Tensor:
        if self.model_config.head == "token" or self.model_config.task == "reward":
            return self._activate_rows(tokens, opt.activation)
        return F.normalize(tokens, p=2, dim=-1) if opt.normalize else tokens

