"""``PoolkitEmbeddings``: LangChain ``Embeddings`` over an in-process poolkit engine or ``poolkit serve``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import Field, PrivateAttr, model_validator

from ._backends import LocalBackend
from ._base import PoolkitClientBase

logger = logging.getLogger("langchain_poolkit")

# Sentence-Transformers' encode_document() looks for these prompt names, in order.
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")
QUERY_PROMPT_NAME = "query"


class PoolkitEmbeddings(PoolkitClientBase, Embeddings):
    """Text embeddings from a poolkit engine, in-process or through ``poolkit serve``.

    Three ways to build it::

        PoolkitEmbeddings()                                   # bundled all-MiniLM-L6-v2, in-process
        PoolkitEmbeddings(model="path/or/id", dtype="bfloat16", device="cpu")   # engine kwargs
        PoolkitEmbeddings(llm=existing_llm)                   # share an engine already loaded
        PoolkitEmbeddings(base_url="http://127.0.0.1:8000", api_key="...", model="served-name")

    Queries and documents may get different prefixes: ``query_instruction`` /
    ``document_instruction`` set them explicitly; otherwise the model's
    Sentence-Transformers ``prompts`` are used like ``SentenceTransformer.encode_query``
    (prompt ``"query"``) and ``encode_document`` (``"document"``, ``"passage"`` or
    ``"corpus"``), falling back to the model's ``default_prompt_name``.
    In server mode the model's prompts are not known here: pass ``prompts`` or the
    instructions explicitly.

    Over-long texts are cut at the model's limit by default (``truncate_prompt_tokens=-1``),
    as with ``HuggingFaceEmbeddings``, and one warning is logged per instance;
    ``truncate_prompt_tokens=None`` makes them an error instead.

    All methods return plain Python ``float`` lists. The async methods run the
    engine in a worker thread (in-process) or use an async HTTP client, so they
    never block the event loop.
    """

    dimensions: int | None = None
    """Matryoshka output size (the model must support it); ``None``: the full size."""

    query_instruction: str | None = None
    """Explicit prefix for queries (beats the model's prompts), e.g. ``"query: "``."""

    document_instruction: str | None = None
    """Explicit prefix for documents (beats the model's prompts), e.g. ``"passage: "``."""

    query_prompt_name: str | None = None
    """Name of the prompt (in the model's or ``prompts``) to use for queries."""

    document_prompt_name: str | None = None
    """Name of the prompt (in the model's or ``prompts``) to use for documents."""

    prompts: dict[str, str] | None = None
    """Prompts merged over the model's Sentence-Transformers prompts."""

    chunk_size: int = Field(default=1024, gt=0)
    """Texts per engine call or HTTP request."""

    show_progress: bool = False
    """In-process: show the engine's progress bar."""

    max_concurrency: int = Field(default=4, gt=0)
    """Server mode, async: requests in flight at once."""

    _warned_truncation: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _check_embedding_options(self) -> PoolkitEmbeddings:
        backend = self.backend
        if isinstance(backend, LocalBackend):
            mc = backend.llm.model_config
            if "embed" not in mc.supported_methods:
                raise ValueError(
                    f"Model {mc.served_model_name!r} (task={mc.task!r}) is not an embedding model; "
                    "load it with task='embed' or use PoolkitReranker for cross-encoders"
                )
            if self.dimensions is not None:
                from poolkit import PoolingParams

                PoolingParams(dimensions=self.dimensions).verify("embed", mc)
        # Resolve prompt names now so a typo fails at construction.
        _ = (self.query_prefix, self.document_prefix)
        return self

    # -- prompts ------------------------------------------------------------

    @property
    def available_prompts(self) -> dict[str, str]:
        """The model's Sentence-Transformers prompts (in-process) merged with ``prompts``."""
        model_prompts: dict[str, str] = {}
        if isinstance(self.backend, LocalBackend):
            model_prompts = dict(self.backend.llm.model_config.prompts or {})
        return {**model_prompts, **(self.prompts or {})}

    def _default_prompt(self, prompts: dict[str, str]) -> str:
        name = None
        if isinstance(self.backend, LocalBackend):
            name = self.backend.llm.model_config.default_prompt_name
        return prompts.get(name, "") if name else ""

    def _named_prompt(self, name: str, prompts: dict[str, str]) -> str:
        if name not in prompts:
            raise ValueError(f"Prompt {name!r} not found; available prompts: {sorted(prompts) or 'none'}")
        return prompts[name]

    @property
    def query_prefix(self) -> str:
        """The text put before every query."""
        if self.query_instruction is not None:
            return self.query_instruction
        prompts = self.available_prompts
        if self.query_prompt_name is not None:
            return self._named_prompt(self.query_prompt_name, prompts)
        if QUERY_PROMPT_NAME in prompts:
            return prompts[QUERY_PROMPT_NAME]
        return self._default_prompt(prompts)

    @property
    def document_prefix(self) -> str:
        """The text put before every document."""
        if self.document_instruction is not None:
            return self.document_instruction
        prompts = self.available_prompts
        if self.document_prompt_name is not None:
            return self._named_prompt(self.document_prompt_name, prompts)
        for name in DOCUMENT_PROMPT_NAMES:
            if name in prompts:
                return prompts[name]
        return self._default_prompt(prompts)

    # -- embedding ----------------------------------------------------------

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        return [texts[i : i + self.chunk_size] for i in range(0, len(texts), self.chunk_size)]

    def _prepare(self, texts: list[str], prefix: str) -> list[str]:
        if not isinstance(texts, list):
            texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Text {index} must be a str, got {type(text).__name__}")
        return [prefix + t for t in texts] if prefix else texts

    def _note_truncation(self, truncated: int, total: int) -> None:
        if truncated and not self._warned_truncation:
            self._warned_truncation = True
            limit = self.truncate_prompt_tokens
            where = "the model's limit" if limit == -1 else f"{limit} tokens"
            config = getattr(getattr(self.backend, "llm", None), "model_config", None)
            max_len_text = f" ({config.max_model_len} tokens)" if config is not None and limit == -1 else ""
            logger.warning(
                "PoolkitEmbeddings(model=%r): %d of %d texts were longer than %s%s and were truncated. "
                "This is logged once per instance; pass truncate_prompt_tokens=None to raise instead, "
                "or split long documents into smaller chunks.",
                self.model_name,
                truncated,
                total,
                where,
                max_len_text,
            )

    def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        truncated = 0
        for chunk in self._chunks(texts):
            if isinstance(self.backend, LocalBackend):
                out, cut = self.backend.embed(
                    chunk,
                    dimensions=self.dimensions,
                    truncate_prompt_tokens=self.truncate_prompt_tokens,
                    use_tqdm=self.show_progress,
                )
            else:
                out, cut = self.backend.embed(
                    chunk, dimensions=self.dimensions, truncate_prompt_tokens=self.truncate_prompt_tokens
                )
            vectors.extend(out)
            truncated += cut
        self._note_truncation(truncated, len(texts))
        return vectors

    async def _aembed(self, texts: list[str]) -> list[list[float]]:
        chunks = self._chunks(texts)
        if isinstance(self.backend, LocalBackend):
            # One engine at a time anyway: run the chunks in order, each in a worker thread.
            results = [
                await self.backend.aembed(
                    c, dimensions=self.dimensions, truncate_prompt_tokens=self.truncate_prompt_tokens
                )
                for c in chunks
            ]
        else:
            semaphore = asyncio.Semaphore(self.max_concurrency)

            async def one(chunk: list[str]) -> tuple[list[list[float]], int]:
                async with semaphore:
                    return await self.backend.aembed(
                        chunk, dimensions=self.dimensions, truncate_prompt_tokens=self.truncate_prompt_tokens
                    )

            results = list(await asyncio.gather(*(one(c) for c in chunks)))
        self._note_truncation(sum(cut for _, cut in results), len(texts))
        return [v for out, _ in results for v in out]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (with the document prompt, if any)."""
        prepared = self._prepare(texts, self.document_prefix)
        return self._embed(prepared) if prepared else []

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (with the query prompt, if any)."""
        return self._embed(self._prepare([text], self.query_prefix))[0]

    def embed_queries(self, texts: list[str]) -> list[list[float]]:
        """Embed many queries in one batch (same vectors as ``embed_query`` on each)."""
        prepared = self._prepare(texts, self.query_prefix)
        return self._embed(prepared) if prepared else []

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async ``embed_documents``: never blocks the event loop."""
        prepared = self._prepare(texts, self.document_prefix)
        return await self._aembed(prepared) if prepared else []

    async def aembed_query(self, text: str) -> list[float]:
        """Async ``embed_query``: never blocks the event loop."""
        return (await self._aembed(self._prepare([text], self.query_prefix)))[0]

    async def aembed_queries(self, texts: list[str]) -> list[list[float]]:
        """Async ``embed_queries``."""
        prepared = self._prepare(texts, self.query_prefix)
        return await self._aembed(prepared) if prepared else []

    # -- info ---------------------------------------------------------------

    @property
    def embedding_dim(self) -> int | None:
        """Length of the returned vectors (``None`` in server mode until known)."""
        if self.dimensions is not None:
            return self.dimensions
        if isinstance(self.backend, LocalBackend):
            return int(self.backend.llm.model_config.embedding_dim)
        return None

    def _repr_fields(self) -> dict[str, Any]:
        fields = super()._repr_fields()
        fields["dimensions"] = self.dimensions
        if self.query_prefix:
            fields["query_prefix"] = self.query_prefix
        if self.document_prefix:
            fields["document_prefix"] = self.document_prefix
        return fields
