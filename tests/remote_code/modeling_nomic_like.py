"""Remote code of a NomicBert-like encoder (nomic-embed-text style), written the way hub remote code is.

Rotary position embeddings (no position-embedding table), a SwiGLU MLP, post-LayerNorm blocks, a
fused QKV projection, and its own attention (``scaled_dot_product_attention`` with a key-padding mask),
not transformers' AttentionInterface: the engine runs it on padded batches.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class NomicLikeConfig(PretrainedConfig):
    model_type = "poolkit_nomic_like"
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
        "max_position_embeddings": "n_positions",
    }

    def __init__(self, vocab_size: int = 400, n_embd: int = 32, n_head: int = 4, n_layer: int = 2, n_inner: int = 64,
                 n_positions: int = 128, type_vocab_size: int = 2, rotary_emb_base: float = 1000.0,
                 layer_norm_epsilon: float = 1e-12, initializer_range: float = 0.02, **kwargs: Any) -> None:
        self.vocab_size, self.n_embd, self.n_head, self.n_layer, self.n_inner = vocab_size, n_embd, n_head, n_layer, n_inner
        self.n_positions, self.type_vocab_size, self.rotary_emb_base = n_positions, type_vocab_size, rotary_emb_base
        self.layer_norm_epsilon, self.initializer_range = layer_norm_epsilon, initializer_range
        super().__init__(**kwargs)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary(q: torch.Tensor, k: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-NeoX style rotary embeddings on ``(B, H, L, d)``, positions 0..L-1."""
    length, dim = q.shape[-2], q.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=q.device, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(length, device=q.device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class NomicLikeBlock(nn.Module):
    def __init__(self, config: NomicLikeConfig) -> None:
        super().__init__()
        self.heads, self.base = config.n_head, config.rotary_emb_base
        self.Wqkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd)
        self.fc11 = nn.Linear(config.n_embd, config.n_inner)
        self.fc12 = nn.Linear(config.n_embd, config.n_inner)
        self.fc2 = nn.Linear(config.n_inner, config.n_embd)
        self.norm1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.norm2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = hidden.shape
        qkv = self.Wqkv(hidden).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = rotary(qkv[0], qkv[1], self.base)
        attn = F.scaled_dot_product_attention(q, k, qkv[2], attn_mask=mask)
        hidden = self.norm1(hidden + self.out_proj(attn.transpose(1, 2).reshape(batch, length, -1)))
        mlp = self.fc2(self.fc11(hidden) * F.silu(self.fc12(hidden)))  # SwiGLU
        return self.norm2(hidden + mlp)


class NomicLikePreTrainedModel(PreTrainedModel):
    config_class = NomicLikeConfig
    base_model_prefix = "model"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()


class NomicLikeModel(NomicLikePreTrainedModel):
    def __init__(self, config: NomicLikeConfig) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.n_embd)
        self.emb_ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.layers = nn.ModuleList(NomicLikeBlock(config) for _ in range(config.n_layer))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.word_embeddings = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **kwargs: Any) -> BaseModelOutput:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.emb_ln(self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids))
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return BaseModelOutput(last_hidden_state=hidden)
