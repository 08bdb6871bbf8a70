"""Remote code of a GTE-v1.5-like encoder (Alibaba-NLP "new-impl" style), written the way hub remote code is.

Rotary position embeddings, a gated GELU MLP (fused ``up_gate_proj``), post-LayerNorm blocks and its own
attention (``scaled_dot_product_attention`` with a key-padding mask), not transformers' AttentionInterface:
the engine runs it on padded batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class GteLikeConfig(PretrainedConfig):
    model_type = "poolkit_gte_like"

    def __init__(self, vocab_size: int = 400, hidden_size: int = 32, num_hidden_layers: int = 2,
                 num_attention_heads: int = 4, intermediate_size: int = 64, max_position_embeddings: int = 128,
                 type_vocab_size: int = 2, rope_theta: float = 500000.0, layer_norm_eps: float = 1e-12,
                 initializer_range: float = 0.02, **kwargs: Any) -> None:
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
        self.max_position_embeddings, self.type_vocab_size, self.rope_theta = max_position_embeddings, type_vocab_size, rope_theta
        self.layer_norm_eps, self.initializer_range = layer_norm_eps, initializer_range
        super().__init__(**kwargs)


class GteLikeRotary(nn.Module):
    def __init__(self, dim: int, base: float) -> None:
        super().__init__()
        self.dim, self.base = dim, base  # no buffer: computed per call, so meta-device loading leaves nothing unset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, H, L, d)``; interleaved-free (half-split) rotation by position 0..L-1."""
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=x.device, dtype=torch.float32) / self.dim))
        freqs = torch.outer(torch.arange(x.shape[-2], device=x.device, dtype=torch.float32), inv_freq)
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class GteLikeLayer(nn.Module):
    def __init__(self, config: GteLikeConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.up_gate_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.attn_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None, rotary: GteLikeRotary) -> torch.Tensor:
        batch, length, _ = hidden.shape
        q, k, v = self.qkv_proj(hidden).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(rotary(q), rotary(k), v, attn_mask=mask)
        hidden = self.attn_ln(hidden + self.o_proj(attn.transpose(1, 2).reshape(batch, length, -1)))
        up, gate = self.up_gate_proj(hidden).chunk(2, dim=-1)
        return self.mlp_ln(hidden + self.down_proj(F.gelu(gate) * up))


class GteLikePreTrainedModel(PreTrainedModel):
    config_class = GteLikeConfig
    base_model_prefix = "new"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()


class GteLikeModel(GteLikePreTrainedModel):
    def __init__(self, config: GteLikeConfig) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary = GteLikeRotary(config.hidden_size // config.num_attention_heads, config.rope_theta)
        self.layers = nn.ModuleList(GteLikeLayer(config) for _ in range(config.num_hidden_layers))
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
            hidden = layer(hidden, mask, self.rotary)
        return BaseModelOutput(last_hidden_state=hidden)
