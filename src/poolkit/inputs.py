"""Tokenization: prompts (text or token ids, single or pairs) → checked token sequences.

Nothing is cut silently: a prompt longer than the model's limit is an error
unless the caller asked for ``truncate_prompt_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from .config import ModelConfig

Prompt = Union[str, Sequence[int]]


@dataclass
class TokenizedPrompt:
    input_ids: list[int]
    token_type_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def is_token_ids(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def normalize_prompts(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """One prompt or a list of prompts → a list (a flat list of ints is one prompt)."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        if prompts and is_token_ids(prompts):
            return [list(prompts)]
        out: list[Prompt] = []
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                out.append(prompt)
            elif is_token_ids(prompt):
                out.append(list(prompt))
            else:
                raise TypeError(f"Prompt {index} must be a string or a list of token ids, got {type(prompt).__name__}")
        return out
    raise TypeError(f"Prompts must be a string, a list of token ids, or a list of those; got {type(prompts).__name__}")


class InputProcessor:
    """Wraps the model's (fast) tokenizer with the engine's length rules."""

    def __init__(self, tokenizer: Any, model_config: ModelConfig) -> None:
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.max_model_len = model_config.max_model_len
        self.vocab_size = len(tokenizer)

    def resolve_truncation(self, truncate_prompt_tokens: int | None) -> int | None:
        if truncate_prompt_tokens is None:
            return None
        if truncate_prompt_tokens == -1:
            return self.max_model_len
        if truncate_prompt_tokens < 1:
            raise ValueError("truncate_prompt_tokens must be -1 (the model's limit) or a positive number of tokens")
        if truncate_prompt_tokens > self.max_model_len:
            raise ValueError(
                f"truncate_prompt_tokens={truncate_prompt_tokens} exceeds the model's maximum "
                f"length of {self.max_model_len} tokens"
            )
        return truncate_prompt_tokens

    def prepare_text(self, text: str) -> str:
        """The model's own text normalization (Sentence-Transformers ``do_lower_case``)."""
        return text.lower() if self.model_config.do_lower_case else text

    def encode(
        self, prompts: Sequence[Prompt], truncate_prompt_tokens: int | None = None, first_index: int = 0
    ) -> list[TokenizedPrompt]:
        """Tokenize texts in one batched call; token-id prompts pass through checked.

        ``first_index`` is the position of ``prompts[0]`` in the caller's input, for error messages.
        """
        limit = self.resolve_truncation(truncate_prompt_tokens)
        texts = [(i, self.prepare_text(p)) for i, p in enumerate(prompts) if isinstance(p, str)]
        out: list[TokenizedPrompt | None] = [None] * len(prompts)
        if texts:
            enc = self.tokenizer([t for _, t in texts], add_special_tokens=True, truncation=False, verbose=False)
            for (i, _), ids in zip(texts, enc["input_ids"]):
                out[i] = TokenizedPrompt(list(ids))
            too_long = [i for i, _ in texts if limit is not None and len(out[i]) > limit]
            if too_long:
                enc = self.tokenizer([self.prepare_text(prompts[i]) for i in too_long], add_special_tokens=True,
                                     truncation=True, max_length=limit, verbose=False)
                for i, ids in zip(too_long, enc["input_ids"]):
                    out[i] = TokenizedPrompt(list(ids))
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                ids = list(prompt)
                bad = [t for t in ids if t < 0 or t >= self.vocab_size]
                if bad:
                    raise ValueError(f"Prompt {first_index + i} has token id {bad[0]} outside the vocabulary (size {self.vocab_size})")
                if limit is not None and len(ids) > limit:
                    ids = ids[-limit:] if self.tokenizer.truncation_side == "left" else ids[:limit]
                out[i] = TokenizedPrompt(ids)
        result = [p for p in out if p is not None]
        self.check(result, first_index)
        return result

    def encode_pairs(
        self, lefts: Sequence[str], rights: Sequence[str], truncate_prompt_tokens: int | None = None
    ) -> list[TokenizedPrompt]:
        """Cross-encoder pairs with the tokenizer's own pair template and token_type_ids."""
        limit = self.resolve_truncation(truncate_prompt_tokens)
        if not all(isinstance(t, str) for t in (*lefts, *rights)):
            raise TypeError("Cross-encoder scoring takes text prompts, not token ids")
        lefts = [self.prepare_text(t) for t in lefts]
        rights = [self.prepare_text(t) for t in rights]
        kwargs: dict[str, Any] = {"truncation": False}
        if limit is not None:
            kwargs = {"truncation": True, "max_length": limit}
        enc = self.tokenizer(list(lefts), list(rights), add_special_tokens=True, verbose=False, **kwargs)
        types = enc.get("token_type_ids")
        result = [
            TokenizedPrompt(list(ids), list(types[i]) if types is not None else None)
            for i, ids in enumerate(enc["input_ids"])
        ]
        self.check(result)
        return result

    def check(self, prompts: Sequence[TokenizedPrompt], first_index: int = 0) -> None:
        for index, prompt in enumerate(prompts, start=first_index):
            if len(prompt) == 0:
                raise ValueError(f"Prompt {index} is empty: it has no tokens to pool")
            if len(prompt) > self.max_model_len:
                raise ValueError(
                    f"Prompt {index} has {len(prompt)} tokens, more than the model's maximum of "
                    f"{self.max_model_len} tokens. Shorten it, or pass truncate_prompt_tokens=-1 "
                    f"(truncate to the model's limit) or truncate_prompt_tokens=N with N <= {self.max_model_len}."
                )
