"""Heads that read every token: sparse (SPLADE, BGE-M3 lexical weights) and multi-vector (ColBERT-style).

They take the backbone's right-padded ``(B, L, D)`` hidden states with true
lengths, like the poolers in :mod:`poolkit.pooling`, and work on the valid
tokens only, so padding (and its side) never reaches a result. The SPLADE head
runs the masked-LM head a slice of tokens at a time: the ``(tokens, vocab)``
logits of a whole 8k-token batch would take gigabytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import MultiVectorSpec, SparseSpec

# Tokens whose MLM logits are computed at once (a (rows, vocab) float32 block: 32 MB for a 30k vocabulary).
LOGIT_ROWS = 256


def masked_lm_head(model: nn.Module) -> nn.Module:
    """The part of a ``*ForMaskedLM`` model after its backbone, as a module of hidden states.

    transformers names it per family; :func:`check_masked_lm_split` verifies the split against the whole model.
    """
    if isinstance(getattr(model, "cls", None), nn.Module):  # BERT family
        return model.cls
    if isinstance(getattr(model, "lm_head", None), nn.Module):  # RoBERTa, XLM-R, MPNet, CamemBERT
        return model.lm_head
    if isinstance(getattr(model, "vocab_projector", None), nn.Module):  # DistilBERT
        return nn.Sequential(model.vocab_transform, model.activation, model.vocab_layer_norm, model.vocab_projector)
    if isinstance(getattr(model, "head", None), nn.Module) and isinstance(getattr(model, "decoder", None), nn.Module):
        return nn.Sequential(model.head, model.decoder)  # ModernBERT
    raise ValueError(f"Cannot find the masked-LM head of {type(model).__name__}: sparse (SPLADE) pooling needs it")


@torch.inference_mode()
def check_masked_lm_split(model: nn.Module, head: nn.Module) -> None:
    """The backbone + head must reproduce the whole model's logits (on a short probe), or the split is wrong."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(5, vocab, (1, 12), generator=torch.Generator().manual_seed(0))
    device = next(model.parameters()).device
    ids = ids.to(device)
    whole = model(input_ids=ids).logits.float()
    split = head(model.base_model(input_ids=ids).last_hidden_state).float()
    if not torch.allclose(whole, split, rtol=1e-2, atol=1e-2 * (1 + float(whole.abs().max()))):
        raise ValueError(f"{type(model).__name__}: its backbone and masked-LM head do not reproduce the model's logits; "
                         "sparse (SPLADE) pooling of this architecture is not supported")


def valid_tokens(states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(T, D)`` states of all real tokens, row by row, and each token's row (packed states already are)."""
    if states.dim() == 2:
        return states, torch.repeat_interleave(torch.arange(lengths.shape[0], device=states.device), lengths)
    keep = torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]
    rows = torch.arange(states.shape[0], device=states.device)[:, None].expand_as(keep)
    return states[keep], rows[keep]


class SparseHead(nn.Module):
    """Vocabulary-size weights per sequence (``(B, V)``, zeros where inactive) from its token states.

    ``splade``: ``log1p(relu(mlm_logits))`` per token (``log1p_relu``: log1p once more), max- or sum-reduced over
    the sequence, as sentence-transformers' ``SpladePooling``. ``lexical`` (BGE-M3): ``relu(sparse_linear(h))``,
    one weight per token, the largest per token id, special tokens left out (FlagEmbedding's rule).
    """

    def __init__(self, spec: SparseSpec, projection: nn.Module, skip_ids: Sequence[int] = (),
                 static_weights: torch.Tensor | None = None, special_template: tuple[int, int] = (0, 0)) -> None:
        super().__init__()
        self.special_template = special_template  # the tokenizer's added tokens before / after a text
        self.spec = spec
        self.projection = projection
        self.register_buffer("skip_ids", torch.tensor(sorted(set(skip_ids)), dtype=torch.long), persistent=False)
        self.register_buffer("static_weights", static_weights, persistent=False)

    def model_free(self, role: str) -> bool:
        """Inputs of this role are encoded from their token ids alone (an inference-free sparse encoder)."""
        return self.static_weights is not None and role == self.spec.static_role

    def static(self, input_ids: Sequence[int]) -> torch.Tensor:
        """sentence-transformers' ``SparseStaticEmbedding``: each token of the text present, once, times its
        weight (it tokenizes without special tokens: the ones the tokenizer added are left out)."""
        assert self.static_weights is not None
        before, after = self.special_template
        text_ids = list(input_ids)[before:len(input_ids) - after]
        out = torch.zeros(self.spec.vocab_size, dtype=torch.float32, device=self.static_weights.device)
        ids = torch.as_tensor(sorted(set(text_ids)), dtype=torch.long, device=out.device)
        return out.index_copy_(0, ids, self.static_weights[ids].float())

    def forward(self, states: torch.Tensor, lengths: torch.Tensor, input_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        tokens, rows = valid_tokens(states, lengths)
        dtype = next(self.projection.parameters()).dtype
        out = torch.zeros(lengths.shape[0], self.spec.vocab_size, dtype=torch.float32, device=states.device)
        if self.spec.source == "lexical":
            ids = torch.tensor([i for seq, n in zip(input_ids, lengths.tolist()) for i in seq[:n]], device=states.device)
            weights = torch.relu(self.projection(tokens.to(dtype))).float().squeeze(-1)
            keep = ~torch.isin(ids, self.skip_ids)
            flat = rows[keep] * self.spec.vocab_size + ids[keep]
            out.view(-1).scatter_reduce_(0, flat, weights[keep], "amax")
            return out
        # log1p and relu are monotonic, so the max of the activations is the activation of the max logit: max
        # pooling reduces raw logits and activates only the (B, V) result. Sum pooling activates every logit.
        by_max = self.spec.pooling_strategy == "max"
        pooled = torch.full_like(out, float("-inf")) if by_max else out
        ends = torch.cumsum(lengths, 0).tolist()
        token_rows = rows.tolist()
        for start in range(0, tokens.shape[0], LOGIT_ROWS):
            stop = min(start + LOGIT_ROWS, tokens.shape[0])
            logits = self.projection(tokens[start:stop].to(dtype))
            if not by_max:
                logits = self.activate(logits.float())
            # the sequences this slice of tokens covers, each reduced over its own rows
            for row in range(token_rows[start], token_rows[stop - 1] + 1):
                lo, hi = max(ends[row - 1] if row else 0, start) - start, min(ends[row], stop) - start
                if by_max:
                    pooled[row] = torch.maximum(pooled[row], logits[lo:hi].amax(0).float())
                else:
                    pooled[row] += logits[lo:hi].sum(0)
        return self.activate(pooled) if by_max else pooled

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        weights = torch.log1p(torch.relu(logits))
        return torch.log1p_(weights) if self.spec.activation == "log1p_relu" else weights


def keep_top(weights: torch.Tensor, max_active_dims: int) -> torch.Tensor:
    """``weights`` (``(V,)``) with all but the ``max_active_dims`` largest set to zero (sentence-transformers'
    ``max_active_dims``)."""
    if max_active_dims >= weights.shape[-1]:
        return weights
    top = torch.topk(weights, max_active_dims)
    return torch.zeros_like(weights).scatter_(0, top.indices, top.values)


class MultiVectorHead(nn.Module):
    """Per-token vectors: the projection (ST ``Dense`` modules or BGE-M3's ``colbert_linear``) on each real token,
    skiplisted tokens dropped for the roles the model says, then L2-normalized."""

    def __init__(self, spec: MultiVectorSpec, projection: nn.Module | None, skip_ids: Sequence[int] = ()) -> None:
        super().__init__()
        self.spec = spec
        self.projection = projection
        self.register_buffer("skip_ids", torch.tensor(sorted(set(skip_ids)), dtype=torch.long), persistent=False)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor, input_ids: Sequence[Sequence[int]],
                roles: Sequence[str]) -> list[torch.Tensor]:
        tokens, _ = valid_tokens(states, lengths)
        if self.projection is not None:
            tokens = self.projection(tokens.to(next(self.projection.parameters()).dtype))
        vectors = tokens.float()
        if self.spec.normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        out = []
        for row, piece in enumerate(torch.split(vectors, lengths.tolist())):
            ids = torch.as_tensor(input_ids[row][: piece.shape[0]], device=piece.device)
            keep = torch.ones(piece.shape[0], dtype=torch.bool, device=piece.device)
            if self.spec.colbert_linear:
                keep[0] = False  # BGE-M3 leaves the [CLS]/<s> token out of its ColBERT vectors
            if roles[row] in self.spec.skiplist_roles and self.skip_ids.numel():
                keep &= ~torch.isin(ids, self.skip_ids)
            out.append(piece[keep].cpu())
        return out


def linear_from_state(path: Any) -> nn.Linear:
    """An ``nn.Linear`` from a ``torch.save``'d state dict (BGE-M3's ``colbert_linear.pt`` / ``sparse_linear.pt``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weight = state["weight"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    linear.load_state_dict(state)
    return linear.eval()


def skiplist_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Token ids of the skiplist words that are single tokens of the vocabulary (sentence-transformers drops the
    rest: they would otherwise remove every ``[UNK]``)."""
    ids = []
    for word in words:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if token_id is not None and (token_id != tokenizer.unk_token_id or word == tokenizer.unk_token):
            ids.append(int(token_id))
    return ids


def special_token_ids(tokenizer: Any) -> list[int]:
    """The ids BGE-M3 leaves out of its lexical weights: CLS, EOS, PAD and UNK."""
    names = ("cls_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    return [int(i) for i in (getattr(tokenizer, n, None) for n in names) if i is not None]

