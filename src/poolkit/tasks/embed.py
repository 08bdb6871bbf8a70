"""``embed``: one vector per input, with the model's prompts, Matryoshka ``dimensions`` and normalization."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..inputs import Prompt, TokenizedPrompt, normalize_prompts
from ..outputs import EmbeddingOutput, EmbeddingRequestOutput
from .base import PoolingParamsArg, PreparedRequest, RequestIds, Task
from .prompts import resolve_prompt


class EmbedTask(Task):
    name = "embed"

    def prepare(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParamsArg = None,
        *,
        truncate_prompt_tokens: int | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        first_index: int = 0,
    ) -> PreparedRequest:
        self.require()
        items = normalize_prompts(prompts)
        options = self.options(pooling_params, len(items))
        return PreparedRequest(self.name, self.tokenize(items, truncate_prompt_tokens, prompt, prompt_name, first_index),
                               options, first_index=first_index)

    def tokenize(self, items: list[Prompt], truncate_prompt_tokens: int | None, prompt: str | None,
                 prompt_name: str | None, first_index: int = 0) -> list[TokenizedPrompt]:
        """Prompts applied to the texts, then tokenized (shared with scoring by cosine)."""
        text = resolve_prompt(self.model_config, prompt, prompt_name)
        explicit = prompt is not None or prompt_name is not None
        if text is not None:
            token_ids = [i for i, item in enumerate(items) if not isinstance(item, str)]
            if token_ids and explicit:
                raise ValueError(f"Prompt {first_index + token_ids[0]} is a list of token ids; prompt and "
                                 "prompt_name apply to text inputs only (put the prompt's tokens in it yourself)")
            items = [text + item if isinstance(item, str) else item for item in items]
        tokens = self.processor.encode(items, truncate_prompt_tokens, first_index)
        if text is not None and not self.model_config.include_prompt:
            start = self.prompt_length(text)
            for item, token in zip(items, tokens):
                if isinstance(item, str):
                    token.pool_start = min(start, len(token) - 1)
        return tokens

    def prompt_length(self, text: str) -> int:
        """Tokens of the prompt that pooling leaves out (sentence-transformers' rule: the prompt tokenized
        alone, without a trailing special token)."""
        ids = self.processor.tokenize(text)
        special = set(getattr(self.processor.tokenizer, "all_special_ids", ()))
        return len(ids) - 1 if ids and ids[-1] in special else len(ids)

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray],
               request_ids: RequestIds) -> list[EmbeddingRequestOutput]:
        return [EmbeddingRequestOutput(request_ids(), p.input_ids, EmbeddingOutput(v), p.num_input_tokens)
                for p, v in zip(request.prompts, pooled)]
