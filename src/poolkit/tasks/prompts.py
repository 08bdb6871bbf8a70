"""Sentence-Transformers prompts: which text goes before an input, and which of its tokens are pooled.

The rules are sentence-transformers' (``SentenceTransformer.encode``): an
explicit ``prompt`` text, else the named ``prompt_name`` from the model's
``config_sentence_transformers.json``, else its ``default_prompt_name``.
``encode_query`` / ``encode_document`` pick the prompt named ``query`` /
the first of ``document``, ``passage``, ``corpus`` (:func:`role_prompt_name`).
With ``include_prompt: false`` in the model's Pooling config the prompt's
tokens are left out of the pooled tokens (INSTRUCTOR-style models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

Role = Literal["query", "document"]
QUERY_PROMPT_NAMES = ("query",)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


class PromptSource(Protocol):
    """Where a model's prompts are known: its ``ModelConfig``, or a server's ``/v1/models`` card."""

    @property
    def prompts(self) -> Mapping[str, str]: ...

    @property
    def default_prompt_name(self) -> str | None: ...


def resolve_prompt(model_config: PromptSource, prompt: str | None = None, prompt_name: str | None = None,
                   prompts: dict[str, str] | None = None) -> str | None:
    """The prompt text for a request (``None``: no prompt). ``prompts`` are merged over the model's."""
    available = {**model_config.prompts, **(prompts or {})}
    if prompt is not None and prompt_name is not None:
        raise ValueError("Pass either prompt or prompt_name, not both")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        return prompt or None
    if prompt_name is not None:
        if prompt_name not in available:
            names = ", ".join(sorted(available)) or "none"
            raise ValueError(f"Prompt name {prompt_name!r} not found; the model's prompts: {names}")
        return available[prompt_name] or None
    default = model_config.default_prompt_name
    return (available.get(default) or None) if default else None


def role_prompt_name(model_config: PromptSource, role: Role, prompts: dict[str, str] | None = None) -> str | None:
    """The prompt name sentence-transformers' ``encode_query``/``encode_document`` would use, if the model has one."""
    available = {**model_config.prompts, **(prompts or {})}
    for name in QUERY_PROMPT_NAMES if role == "query" else DOCUMENT_PROMPT_NAMES:
        if name in available:
            return name
    return None
