"""Remote code of a jina-embeddings-v3-like checkpoint: an XLM-RoBERTa encoder under a model_type of its own.

Loaded only through ``auto_map`` + ``trust_remote_code=True`` (the model_type is unknown to transformers),
like the real model's ``xlm-roberta-flash-implementation`` code. Attention is transformers' own
(AttentionInterface), so the engine can pack its batches.
"""

from __future__ import annotations

from transformers import XLMRobertaConfig, XLMRobertaModel


class JinaLikeConfig(XLMRobertaConfig):
    model_type = "poolkit_jina_like"


class JinaLikeModel(XLMRobertaModel):
    config_class = JinaLikeConfig
