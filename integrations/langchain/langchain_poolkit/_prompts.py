"""Which prompt a query or a document is embedded with, decided by poolkit's own rules.

``PoolkitEmbeddings`` only *chooses* the prompt (an explicit instruction, a
prompt name, or the role's Sentence-Transformers prompt); the engine (in-process)
or the server puts it before the texts. That is what keeps the vectors equal to
``SentenceTransformer.encode_query`` / ``encode_document`` for models whose
pooling leaves the prompt's tokens out (``include_prompt: false``): prefixing
the texts here would pool those tokens too.

The rules themselves (``role_prompt_name``, ``resolve_prompt``) are poolkit's,
so in-process and server mode, and any other poolkit front-end, agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from poolkit.tasks.prompts import PromptSource

Role = Literal["query", "document"]
ROLES: tuple[Role, ...] = ("query", "document")


@dataclass(frozen=True)
class RequestPrompt:
    """One role's prompt: its resolved ``text`` ("" for none) and how to ask the engine for it.

    At most one of ``prompt`` (a text) and ``prompt_name`` (a prompt of the model)
    is set; neither means the model's default prompt, which the engine applies unasked.
    """

    text: str
    prompt: str | None = None
    prompt_name: str | None = None


def explicit_prompt(instruction: str | None) -> RequestPrompt | None:
    """An explicit instruction beats the model's prompts (``""`` turns even the default prompt off)."""
    return None if instruction is None else RequestPrompt(instruction, prompt=instruction)


def model_prompt(
    source: PromptSource, role: Role, prompt_name: str | None, extra_prompts: dict[str, str] | None
) -> RequestPrompt:
    """The prompt for ``role`` from the model's prompts (``extra_prompts`` merged over them).

    ``prompt_name`` picks one by name; otherwise the role's Sentence-Transformers prompt
    (``"query"``; ``"document"``, ``"passage"`` or ``"corpus"``), else the model's default.
    An unknown name raises poolkit's ``ValueError`` listing the available prompts.
    A prompt that comes from ``extra_prompts`` is sent as text (the engine only knows the
    model's own); one of the model's is sent by name.
    """
    from poolkit.tasks import resolve_prompt, role_prompt_name

    # The rules read only ``prompts`` and ``default_prompt_name``, which a server's card has too.
    name = prompt_name if prompt_name is not None else role_prompt_name(source, role, extra_prompts)
    text = resolve_prompt(source, prompt_name=name, prompts=extra_prompts) or ""
    effective_name = name if name is not None else source.default_prompt_name
    if extra_prompts and effective_name in extra_prompts:
        return RequestPrompt(text, prompt=text)
    return RequestPrompt(text, prompt_name=name)
