"""One embedding model for the corpus engines, on the task layer.

Tokenizing and running the model are split on purpose: :class:`TextTokenizer`
turns texts into a :class:`~poolkit.tasks.PreparedRequest` with nothing but the
tokenizer and config (so it can run in a DataLoader worker or a Ray actor while
the model is busy), and :meth:`Embedder.run` executes such a request on the
process that holds the weights. Both go through ``Tasks.prepare("embed", ...)``
(:meth:`EmbedOptions.prepare`), the same code path as ``LLM.embed``, so prompts,
truncation, chunked processing of long texts and Matryoshka ``dimensions``
behave exactly as there, and whether a row was truncated comes from the
outputs (``RequestOutput.truncated``) instead of tokenizing again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..inputs import Prompt
from ..tasks import PreparedRequest, Tasks
from .options import EmbedOptions

if TYPE_CHECKING:
    from ..engine import LLM
    from ..outputs import RequestOutput


def _embed_kwargs(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``LLM`` settings for an embedding job: ``task`` defaults to ``embed`` (not ``auto``)."""
    return {"task": "embed", **engine_kwargs}


class TextTokenizer:
    """Texts → a prepared ``embed`` request (prompted, tokenized, truncated or chunked), without the model.

    Images (:class:`~poolkit.inputs.ImagePrompt`, for image-text models) are prepared the same way:
    loaded and preprocessed by the model's image processor, which needs no weights either.

    ``options``: the :class:`EmbedOptions` every text is embedded with (default: ``EmbedOptions()``,
    the model's limit and prompt).

    Picklable: built from ``model`` and ``engine_kwargs`` (the settings of
    ``LLM(model, **engine_kwargs)``) it loads the tokenizer lazily in whichever
    process first uses it (e.g. a DataLoader worker or a Ray actor). Built on
    an existing ``tasks`` it pickles them along, since they cannot be rebuilt
    from a name.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        options: EmbedOptions | None = None,
        *,
        tasks: Tasks | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.model = os.fspath(model) if model is not None else None
        self.options = options if options is not None else EmbedOptions()
        self.engine_kwargs = _embed_kwargs(engine_kwargs)
        self._tasks = tasks
        self._rebuildable = tasks is None

    @property
    def tasks(self) -> Tasks:
        """The model's tasks (loaded on first use when built from a model name)."""
        if self._tasks is None:
            self._tasks = Tasks.from_model(self.model, **self.engine_kwargs)
        return self._tasks

    def check(self) -> None:
        """Fail now rather than at the first shard (see :meth:`EmbedOptions.check`)."""
        self.options.check(self.tasks)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._rebuildable:
            state["_tasks"] = None  # the receiving process loads its own tokenizer
        return state

    def __call__(self, texts: Sequence[Prompt], *, first_index: int = 0) -> PreparedRequest:
        """The request for ``texts`` (or images); ``first_index`` (their position in the whole input) numbers
        error messages."""
        return self.options.prepare(self.tasks, texts, first_index=first_index)


@dataclass
class Embedded:
    """Embeddings of a batch of texts, in input order."""

    vectors: np.ndarray      # float32 [n, dim]
    num_tokens: np.ndarray   # int32 [n] (the input's tokens, after truncation; a chunked text: all of them)
    truncated: np.ndarray    # bool [n]

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def empty(cls, dim: int) -> Embedded:
        return cls(np.zeros((0, dim), np.float32), np.zeros(0, np.int32), np.zeros(0, bool))

    @classmethod
    def from_outputs(cls, outputs: Sequence[RequestOutput[Any]]) -> Embedded:
        """From ``embed`` outputs: their vectors, their inputs' tokens (``prompt_token_ids``: after truncation,
        or the whole text when it was embedded in chunks), and whether each was truncated."""
        return cls(
            np.stack([o.outputs.numpy() for o in outputs]).astype(np.float32, copy=False),
            np.array([len(o.prompt_token_ids) for o in outputs], dtype=np.int32),
            np.array([o.truncated for o in outputs], dtype=bool),
        )


def concat_embedded(parts: Sequence[Embedded], dim: int) -> Embedded:
    """One :class:`Embedded` from consecutive parts (``dim`` shapes the empty result)."""
    if not parts:
        return Embedded.empty(dim)
    return Embedded(np.concatenate([p.vectors for p in parts]), np.concatenate([p.num_tokens for p in parts]),
                    np.concatenate([p.truncated for p in parts]))


class Embedder:
    """One embedding model (an ``LLM``) with fixed :class:`EmbedOptions`.

    The options are checked against the model up front. :attr:`tokenizer`
    prepares requests exactly as this embedder expects them.
    """

    def __init__(self, llm: LLM, options: EmbedOptions | None = None) -> None:
        self.llm = llm
        self.tokenizer = TextTokenizer(None, options, tasks=llm.tasks)
        self.tokenizer.check()
        self.options = self.tokenizer.options
        self.dim = self.options.dimensions or llm.model_config.embedding_dim

    @classmethod
    def from_model(cls, model: str | os.PathLike[str] | None = None, options: EmbedOptions | None = None,
                   **engine_kwargs: Any) -> Embedder:
        """Load ``LLM(model, task="embed", **engine_kwargs)`` and wrap it."""
        from ..engine import LLM

        return cls(LLM(model, **_embed_kwargs(engine_kwargs)), options)

    def run(self, request: PreparedRequest) -> Embedded:
        """Execute a request prepared by a matching :class:`TextTokenizer` (maybe in another process)."""
        if request.task != "embed":
            raise ValueError(f"Embedder.run takes an 'embed' request, got {request.task!r}")
        if not request.prompts:
            return Embedded.empty(self.dim)
        embedded = Embedded.from_outputs(self.llm.execute(request))
        if embedded.vectors.shape[1] != self.dim:
            raise ValueError(f"The request yields {embedded.vectors.shape[1]}-d vectors, this embedder "
                             f"{self.dim}-d: prepare it with the same dimensions")
        return embedded

    def embed(self, texts: Sequence[Prompt], *, first_index: int = 0) -> Embedded:
        """Tokenize and embed ``texts`` (or images: :class:`~poolkit.inputs.ImagePrompt`) in this process."""
        return self.run(self.tokenizer(texts, first_index=first_index))
