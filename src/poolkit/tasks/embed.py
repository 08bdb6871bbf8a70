"""``embed``: one vector per input, with the model's prompts, Matryoshka ``dimensions``, normalization and
chunked processing of long inputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..inputs import Prompt, TokenizedPrompt, TruncationSide, normalize_prompts
from ..outputs import EmbeddingRequestOutput, embedding_output
from ..params import HeadOptions
from .base import PoolingParamsArg, PreparedRequest, RequestIds, Task
from .chunking import Head
from .prompts import QUERY_PROMPT_NAMES, resolve_prompt


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
        enable_chunked_processing: bool | None = None,
        truncation_side: TruncationSide | None = None,
    ) -> PreparedRequest:
        """``enable_chunked_processing``: embed inputs longer than the model in chunks (default: the
        pooler config's setting; see :mod:`poolkit.tasks.chunking`). ``truncation_side``: ``"right"``
        (``truncate_prompt_tokens`` keeps the start of each input) or ``"left"`` (keeps the end, and the
        prompt before it); default: the tokenizer's ``truncation_side``."""
        self.require()
        items = normalize_prompts(prompts)
        options = self.with_role(self.options(pooling_params, len(items)), prompt_name)
        text, prompted = self.apply_prompt(items, prompt, prompt_name, first_index)
        tokens, run_options, plan = self.tokenize_inputs(
            prompted, options, truncate_prompt_tokens, first_index, enable_chunked_processing,
            adjust=lambda tokenized: self.exclude_prompt(text, prompted, tokenized), truncation_side=truncation_side,
            keep_text_start=self.prompt_length(text) if text is not None and truncation_side == "left" else 0)
        self.fit_roles(tokens, run_options, truncate_prompt_tokens, first_index, truncation_side)
        return PreparedRequest(self.name, tokens, run_options, state=plan, first_index=first_index,
                               num_inputs=len(items))

    @staticmethod
    def with_role(options: list[HeadOptions], prompt_name: str | None) -> list[HeadOptions]:
        """Inputs embedded with the ``query`` prompt are queries (as ``encode_query`` in sentence-transformers):
        multi-vector models keep tokens in queries that their skiplist drops from documents."""
        if prompt_name not in QUERY_PROMPT_NAMES:
            return options
        return [dataclasses.replace(opt, role="query") for opt in options]

    def fit_roles(self, tokens: list[TokenizedPrompt], options: Sequence[HeadOptions],
                  truncate_prompt_tokens: int | None, first_index: int = 0,
                  truncation_side: TruncationSide | None = None) -> None:
        """Multi-vector models: each role's length limit (``query_length`` / ``document_length``), and ColBERT
        query expansion (queries padded with the expansion token; with ``attend`` off, nothing attends to it)."""
        spec = self.model_config.multi_vector
        if spec is None:
            return
        expansion = spec.expansion
        for index, (token, option) in enumerate(zip(tokens, options), start=first_index):
            if option.output != "multi_vector":
                continue
            query = option.role == "query"
            limit = spec.query_length if query else spec.document_length
            if query and expansion is not None and expansion["strategy"] == "fixed":
                limit = expansion["length"]  # fixed: every query is exactly this long
            if limit is not None and len(token) > limit:
                role = "query" if query else "document"
                if truncate_prompt_tokens is None:
                    raise ValueError(
                        f"Prompt {index} has {len(token)} tokens, more than the {limit} this model takes in a {role}. "
                        f"Shorten it, or pass truncate_prompt_tokens=-1 (truncate to the limit).")
                original = token.num_input_tokens
                token.input_ids = self.processor.truncate_ids(token.input_ids, limit, truncation_side)
                token.num_input_tokens = original
            if query and expansion is not None and len(token) < expansion["length"]:
                real = len(token)
                token.input_ids = token.input_ids + [self.expansion_token_id] * (expansion["length"] - real)
                if token.token_type_ids is not None:
                    token.token_type_ids = token.token_type_ids + [0] * (expansion["length"] - real)
                if not expansion["attend"]:
                    token.attend_len = real

    @property
    def expansion_token_id(self) -> int:
        """The query expansion token: the configured one, else ``[MASK]``, else EOS (sentence-transformers' rule)."""
        tokenizer = self.processor.tokenizer
        expansion = self.model_config.multi_vector.expansion if self.model_config.multi_vector else None
        if expansion is not None and expansion.get("token") is not None:
            return int(tokenizer.convert_tokens_to_ids(expansion["token"]))
        token_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.eos_token_id
        if token_id is None:
            raise ValueError("query_expansion needs an expansion token: the tokenizer has no mask or EOS token")
        return int(token_id)

    def tokenize(self, items: list[Prompt], truncate_prompt_tokens: int | None, prompt: str | None,
                 prompt_name: str | None, first_index: int = 0) -> list[TokenizedPrompt]:
        """Prompts applied to the texts, then tokenized (shared with scoring by cosine)."""
        text, prompted = self.apply_prompt(items, prompt, prompt_name, first_index)
        tokens = self.processor.encode(prompted, truncate_prompt_tokens, first_index)
        self.exclude_prompt(text, prompted, tokens)
        return tokens

    def apply_prompt(self, items: list[Prompt], prompt: str | None, prompt_name: str | None,
                     first_index: int) -> tuple[str | None, list[Prompt]]:
        """The prompt text (``None``: none) and the inputs with it put before every text."""
        text = resolve_prompt(self.model_config, prompt, prompt_name)
        if text is None:
            return None, items
        token_ids = [i for i, item in enumerate(items) if isinstance(item, list)]
        if token_ids and (prompt is not None or prompt_name is not None):
            raise ValueError(f"Prompt {first_index + token_ids[0]} is a list of token ids; prompt and "
                             "prompt_name apply to text inputs only (put the prompt's tokens in it yourself)")
        return text, [text + item if isinstance(item, str) else item for item in items]

    def exclude_prompt(self, text: str | None, items: list[Prompt], tokens: list[TokenizedPrompt]) -> None:
        """Mark the prompt's tokens as not pooled, for models whose Pooling has ``include_prompt: false``."""
        if text is None or self.model_config.include_prompt:
            return
        start = self.prompt_length(text)
        for item, token in zip(items, tokens):
            if isinstance(item, str):
                token.pool_start = min(start, len(token) - 1)

    def prompt_length(self, text: str) -> int:
        """Tokens of the prompt that pooling leaves out (sentence-transformers' rule: the prompt tokenized
        alone, without a trailing special token)."""
        ids = self.processor.tokenize(text)
        special = set(getattr(self.processor.tokenizer, "all_special_ids", ()))
        return len(ids) - 1 if ids and ids[-1] in special else len(ids)

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray], request_ids: RequestIds,
               head: Head | None = None) -> list[EmbeddingRequestOutput]:
        kinds = [opt.output for opt in request.options] if request.state is None else None  # chunked: dense
        return [EmbeddingRequestOutput(request_ids(), p.input_ids, embedding_output(v, kinds[i] if kinds else "dense"),
                                       p.num_input_tokens, num_processed_tokens=processed)
                for i, (p, v, processed) in enumerate(self.per_input(request, pooled, head))]
