"""The per-request options of a corpus job's embeddings, in one place.

:class:`EmbedOptions` is what every text of a job is embedded with: Matryoshka
``dimensions``, ``truncate``, the prompt (``prompt_name`` / ``prompt``) and
``chunked`` (texts longer than the model embedded in chunks, merged into one
vector: ``LLM.embed(..., enable_chunked_processing=True)``). The tokenizer, the
embedder and the job hold one of these instead of each threading the options
one by one; :meth:`EmbedOptions.prepare` turns texts into the ``embed`` request
through the task layer, exactly as ``LLM.embed`` prepares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..inputs import Prompt
from ..params import PoolingParams

if TYPE_CHECKING:
    from ..tasks import PreparedRequest, Tasks


@dataclass(frozen=True)
class EmbedOptions:
    """How every text of a job is embedded (picklable, hashable).

    ``dimensions``: Matryoshka output size (``None``: the model's).
    ``truncate``: ``-1`` (cut at the model's limit, the default), ``N`` tokens, or
    ``None`` (an over-long text is an error, as in the engine).
    ``prompt_name`` / ``prompt``: a Sentence-Transformers prompt put before every text, as in ``LLM.embed``.
    ``chunked``: embed texts longer than the model in chunks merged into one vector
    (``enable_chunked_processing``); it implies no truncation, so ``truncate`` is then
    ``None`` (a given ``-1`` is taken as "not asked for"; ``N`` tokens is refused). Texts
    longer than the model's ``max_embed_len`` are still an error.
    """

    dimensions: int | None = None
    truncate: int | None = -1
    prompt_name: str | None = None
    prompt: str | None = None
    chunked: bool = False

    def __post_init__(self) -> None:
        if self.chunked and self.truncate is not None:
            if self.truncate != -1:
                raise ValueError(f"chunked embeds whole texts (in chunks): it cannot be combined with "
                                 f"truncate={self.truncate}; drop one of them")
            object.__setattr__(self, "truncate", None)  # chunking means nothing is cut

    @property
    def pooling_params(self) -> PoolingParams | None:
        return PoolingParams(dimensions=self.dimensions) if self.dimensions is not None else None

    def engine_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``LLM.embed`` / ``Tasks.prepare("embed", ...)`` these options stand for.

        ``enable_chunked_processing`` is ``None`` unless ``chunked``: the model's pooler config
        decides then, as for ``LLM.embed`` (with truncation asked for nothing is chunked anyway).
        """
        return {"truncate_prompt_tokens": self.truncate, "prompt_name": self.prompt_name, "prompt": self.prompt,
                "enable_chunked_processing": True if self.chunked else None}

    def prepare(self, tasks: Tasks, texts: Sequence[Prompt], *, first_index: int = 0) -> PreparedRequest:
        """The ``embed`` request for ``texts``; ``first_index`` (their position in the whole input) numbers
        error messages."""
        return tasks.prepare("embed", list(texts), self.pooling_params, first_index=first_index,
                             **self.engine_kwargs())

    def check(self, tasks: Tasks) -> None:
        """Fail now rather than at the first shard: the model embeds, ``dimensions`` fit, the prompt exists,
        and chunking, when asked for, works for this model."""
        from ..tasks import resolve_prompt
        from ..tasks.chunking import check_chunking

        task = tasks["embed"]
        task.require()
        task.options(self.pooling_params, 1)
        resolve_prompt(tasks.model_config, self.prompt, self.prompt_name)
        if self.chunked:
            check_chunking(tasks.model_config, tasks.processor)

    def check_images(self) -> None:
        """Refuse what has no meaning for images, rather than ignore it: a prompt (put before texts) and
        chunked processing (of long texts)."""
        asked = [name for name, value in (("prompt_name", self.prompt_name), ("prompt", self.prompt),
                                          ("chunked", self.chunked or None)) if value is not None]
        if asked:
            raise ValueError(f"{', '.join(asked)} apply to texts; an image column is embedded without "
                             f"{'them' if len(asked) > 1 else 'it'}")

    def identity(self) -> dict[str, Any]:
        """The options' part of a job's identity.

        ``prompt_name``, ``prompt`` and ``chunked`` appear only when asked for, so jobs without
        them keep the fingerprint they had before those were options (their shards stay reusable).
        """
        identity: dict[str, Any] = {"dimensions": self.dimensions, "truncate": self.truncate}
        if self.prompt_name is not None:
            identity["prompt_name"] = self.prompt_name
        if self.prompt is not None:
            identity["prompt"] = self.prompt
        if self.chunked:
            identity["chunked"] = True
        return identity
