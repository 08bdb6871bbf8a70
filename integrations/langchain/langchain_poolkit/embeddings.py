"""``PoolkitEmbeddings``: LangChain ``Embeddings`` over an in-process poolkit engine or ``poolkit serve``."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import Field, PrivateAttr, model_validator

from ._backends import Embedded, EmbedOptions, LocalBackend
from ._base import PoolkitClientBase
from ._prompts import ROLES, RequestPrompt, Role, explicit_prompt, model_prompt

logger = logging.getLogger("langchain_poolkit")


def _checked_uris(uris: Iterable[str | os.PathLike[str]]) -> list[str]:
    """``uris`` as a list of strings (``Path`` objects are accepted), with a clear ``TypeError`` for anything else."""
    out = []
    for index, uri in enumerate(uris):
        if not isinstance(uri, (str, os.PathLike)):
            raise TypeError(f"Image uri {index} must be a str (a file path or a data:/http(s) URL) or a path, "
                            f"got {type(uri).__name__}")
        out.append(os.fspath(uri))
    return out


def _checked_texts(texts: Iterable[str]) -> list[str]:
    """``texts`` as a list, with a clear ``TypeError`` for a non-string (LangChain passes anything along)."""
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Text {index} must be a str, got {type(text).__name__}")
    return texts


class PoolkitEmbeddings(PoolkitClientBase, Embeddings):
    """Text (and, for image-text models, image) embeddings from a poolkit engine, in-process or through
    ``poolkit serve``.

    Three ways to build it::

        PoolkitEmbeddings()                                   # bundled all-MiniLM-L6-v2, in-process
        PoolkitEmbeddings(model="path/or/id", dtype="bfloat16", device="cpu")   # engine kwargs
        PoolkitEmbeddings(llm=existing_llm)                   # share an engine already loaded
        PoolkitEmbeddings(base_url="http://127.0.0.1:8000", api_key="...", model="served-name")

    Queries and documents may get different prompts: ``query_instruction`` /
    ``document_instruction`` set them explicitly; otherwise the model's
    Sentence-Transformers ``prompts`` are used like ``SentenceTransformer.encode_query``
    (prompt ``"query"``) and ``encode_document`` (``"document"``, ``"passage"`` or
    ``"corpus"``), falling back to the model's ``default_prompt_name``. The prompt is
    passed to the engine (``LLM.embed(prompt_name=...)`` / ``prompt=...``) or the server,
    never glued onto the texts here, so models that leave the prompt out of pooling get
    Sentence-Transformers' vectors. In server mode the model's prompts come from the
    server's ``/v1/models`` (read once, on the first call that needs them).

    Over-long texts are cut at the model's limit by default (``truncate_prompt_tokens=-1``),
    as with ``HuggingFaceEmbeddings``, and one warning is logged per instance;
    ``truncate_prompt_tokens=None`` makes them an error instead, and
    ``chunk_long_inputs=True`` embeds them whole, in chunks merged into one vector.

    Image-text models (CLIP, SigLIP) also embed images, into the space of their texts:
    ``embed_image(uris)`` (the method LangChain's image-capable embeddings, such as
    ``OpenCLIPEmbeddings``, have and image-capable vector stores call) takes local file paths
    and ``data:`` / ``http(s)`` URLs; a text-only model refuses with a ``ValueError``.

    All methods return plain Python ``float`` lists. The async methods run the
    engine in a worker thread (in-process) or use an async HTTP client, so they
    never block the event loop.
    """

    dimensions: int | None = None
    """Matryoshka output size (the model must support it); ``None``: the full size."""

    query_instruction: str | None = None
    """Explicit prompt text for queries (beats the model's prompts), e.g. ``"query: "``; ``""``: none."""

    document_instruction: str | None = None
    """Explicit prompt text for documents (beats the model's prompts), e.g. ``"passage: "``; ``""``: none."""

    query_prompt_name: str | None = None
    """Name of the prompt (in the model's or ``prompts``) to use for queries."""

    document_prompt_name: str | None = None
    """Name of the prompt (in the model's or ``prompts``) to use for documents."""

    prompts: dict[str, str] | None = None
    """Prompts merged over the model's Sentence-Transformers prompts."""

    chunk_size: int = Field(default=1024, gt=0)
    """Texts (or images, for ``embed_image``) per engine call or HTTP request."""

    show_progress: bool = False
    """In-process: show the engine's progress bar."""

    max_concurrency: int = Field(default=4, gt=0)
    """Server mode, async: requests in flight at once."""

    chunk_long_inputs: bool = False
    """Embed texts longer than the model's limit whole: cut into chunks that each fit, the chunk
    vectors merged (token-weighted) into one vector per text. This is poolkit's
    ``enable_chunked_processing`` (``LLM.embed(..., enable_chunked_processing=True)``; in server mode
    the ``/v1/embeddings`` request field of that name). ``truncate_prompt_tokens`` is then not
    applied (nothing is cut), and a text longer than the model's ``max_embed_len`` (default: 32 times
    its limit) raises ``ValueError``. Not to be confused with ``chunk_size`` (texts per call).
    In-process, a model that cannot chunk (not an embedding model pooling one vector per input)
    fails at construction."""

    _warned_truncation: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _check_embedding_options(self) -> PoolkitEmbeddings:
        backend = self.backend
        if self.chunk_long_inputs and "truncate_prompt_tokens" in self.model_fields_set \
                and self.truncate_prompt_tokens is not None:
            logger.warning("PoolkitEmbeddings: truncate_prompt_tokens=%s is not applied with chunk_long_inputs=True "
                           "(long texts are embedded whole, in chunks)", self.truncate_prompt_tokens)
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
            if self.chunk_long_inputs:
                from poolkit.tasks.chunking import check_chunking

                check_chunking(mc, backend.llm.tasks.processor)
            # Resolve the prompts now so that a typo fails at construction. In server mode the
            # model's prompts are only known after a request, so that happens on the first call.
            for role in ROLES:
                self._request_prompt(role)
        return self

    # -- prompts ------------------------------------------------------------

    def _role_settings(self, role: Role) -> tuple[str | None, str | None]:
        """This instance's ``(instruction, prompt name)`` for ``role``."""
        if role == "query":
            return self.query_instruction, self.query_prompt_name
        return self.document_instruction, self.document_prompt_name

    def _request_prompt(self, role: Role) -> RequestPrompt:
        """The prompt ``role``'s texts are embedded with (server mode: may read the model card once)."""
        instruction, name = self._role_settings(role)
        explicit = explicit_prompt(instruction)
        if explicit is not None:  # no need to know the model's prompts
            return explicit
        return model_prompt(self.backend.prompt_source(), role, name, self.prompts)

    async def _arequest_prompt(self, role: Role) -> RequestPrompt:
        """Async ``_request_prompt`` (a server's model card is read without blocking the loop)."""
        instruction, name = self._role_settings(role)
        explicit = explicit_prompt(instruction)
        if explicit is not None:
            return explicit
        return model_prompt(await self.backend.aprompt_source(), role, name, self.prompts)

    @property
    def available_prompts(self) -> dict[str, str]:
        """The model's Sentence-Transformers prompts merged with ``prompts`` (server mode: from ``/v1/models``)."""
        return {**self.backend.prompt_source().prompts, **(self.prompts or {})}

    @property
    def query_prefix(self) -> str:
        """The prompt text put before every query ("" for none)."""
        return self._request_prompt("query").text

    @property
    def document_prefix(self) -> str:
        """The prompt text put before every document ("" for none)."""
        return self._request_prompt("document").text

    # -- embedding ----------------------------------------------------------

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        return [texts[i : i + self.chunk_size] for i in range(0, len(texts), self.chunk_size)]

    def _options(self, prompt: RequestPrompt) -> EmbedOptions:
        chunked = self.chunk_long_inputs
        return EmbedOptions(
            dimensions=self.dimensions,
            # Truncation asked for wins over chunking in poolkit: chunking means asking for none.
            truncate_prompt_tokens=None if chunked else self.truncate_prompt_tokens,
            prompt=prompt.prompt,
            prompt_name=prompt.prompt_name,
            enable_chunked_processing=True if chunked else None,
        )

    @property
    def _concurrency(self) -> int:
        """Async chunks in flight: one in-process (the engine runs one call at a time), else ``max_concurrency``."""
        return 1 if isinstance(self.backend, LocalBackend) else self.max_concurrency

    def _note_truncation(self, truncated: int, total: int) -> None:
        """Warn once per instance that texts were cut: silently losing their ends would hide bad chunking."""
        if not truncated or self._warned_truncation:
            return
        self._warned_truncation = True
        limit = self.truncate_prompt_tokens
        if limit == -1:
            max_len = self.backend.max_model_len
            where = "the model's limit" + (f" ({max_len} tokens)" if max_len is not None else "")
        else:
            where = f"{limit} tokens"
        logger.warning(
            "PoolkitEmbeddings(model=%r): %d of %d texts were longer than %s and were truncated. "
            "This is logged once per instance; pass chunk_long_inputs=True to embed them whole (in chunks), "
            "truncate_prompt_tokens=None to raise instead, or split long documents into smaller pieces.",
            self.model_name,
            truncated,
            total,
            where,
        )

    def _collect(self, results: Sequence[Embedded], total: int) -> list[list[float]]:
        """The chunks' vectors in order; their truncation counts feed the one-time warning."""
        self._note_truncation(sum(r.truncated for r in results), total)
        return [vector for result in results for vector in result.vectors]

    def _embed(self, texts: Iterable[str], role: Role) -> list[list[float]]:
        texts = _checked_texts(texts)
        if not texts:
            return []
        options = self._options(self._request_prompt(role))
        results = [
            self.backend.embed(chunk, options, show_progress=self.show_progress) for chunk in self._chunks(texts)
        ]
        return self._collect(results, len(texts))

    async def _aembed(self, texts: Iterable[str], role: Role) -> list[list[float]]:
        texts = _checked_texts(texts)
        if not texts:
            return []
        options = self._options(await self._arequest_prompt(role))
        semaphore = asyncio.Semaphore(self._concurrency)

        async def one(chunk: list[str]) -> Embedded:
            async with semaphore:
                return await self.backend.aembed(chunk, options)

        results = await asyncio.gather(*(one(chunk) for chunk in self._chunks(texts)))
        return self._collect(results, len(texts))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (with the document prompt, if any)."""
        return self._embed(texts, "document")

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (with the query prompt, if any)."""
        return self._embed([text], "query")[0]

    def embed_queries(self, texts: list[str]) -> list[list[float]]:
        """Embed many queries in one batch (same vectors as ``embed_query`` on each)."""
        return self._embed(texts, "query")

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async ``embed_documents``: never blocks the event loop."""
        return await self._aembed(texts, "document")

    async def aembed_query(self, text: str) -> list[float]:
        """Async ``embed_query``: never blocks the event loop."""
        return (await self._aembed([text], "query"))[0]

    async def aembed_queries(self, texts: list[str]) -> list[list[float]]:
        """Async ``embed_queries``."""
        return await self._aembed(texts, "query")

    # -- images -------------------------------------------------------------

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images, one vector per uri, in the space of this model's texts (image-text models only).

        ``uris``: local file paths (or ``file://`` URLs; relative paths from the working directory)
        and ``data:image/...;base64,...`` / ``http(s)://`` URLs. In-process, files are read by the
        engine and URLs loaded here (``poolkit.media``: byte, pixel and time limits); with a server,
        local files are sent as ``data:`` URIs (the server cannot read this machine's disk) and URLs
        as they are, in ``/v1/embeddings`` chat-style ``messages``. ``chunk_size`` images go per
        engine call or request (a request is split further when its data URIs pass 16 MiB), and
        ``dimensions`` applies as for texts. No prompt is put before images.

        Raises ``ValueError`` for a model that takes text only, and for an image that cannot be loaded.
        """
        uris = _checked_uris(uris)
        vectors: list[list[float]] = []
        for start in range(0, len(uris), self.chunk_size):
            vectors += self.backend.embed_images(uris[start : start + self.chunk_size], dimensions=self.dimensions,
                                                 show_progress=self.show_progress, first_index=start)
        return vectors

    async def aembed_image(self, uris: list[str]) -> list[list[float]]:
        """Async ``embed_image``: never blocks the event loop (up to ``max_concurrency`` requests to a server)."""
        uris = _checked_uris(uris)
        semaphore = asyncio.Semaphore(self._concurrency)

        async def one(start: int) -> list[list[float]]:
            async with semaphore:
                return await self.backend.aembed_images(uris[start : start + self.chunk_size],
                                                        dimensions=self.dimensions, first_index=start)

        parts = await asyncio.gather(*(one(start) for start in range(0, len(uris), self.chunk_size)))
        return [vector for part in parts for vector in part]

    @property
    def modalities(self) -> tuple[str, ...] | None:
        """What the model embeds: ``("text",)`` or ``("text", "image")``; in server mode ``None`` until the
        server's model card has been read (or when it does not say)."""
        backend = self.backend
        if isinstance(backend, LocalBackend):
            return backend.modalities
        return backend.prompt_source().modalities if backend.prompts_known else None

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
        if self.chunk_long_inputs:
            fields["chunk_long_inputs"] = True
            fields.pop("truncate_prompt_tokens", None)  # not applied
        for role in ROLES:
            instruction, _ = self._role_settings(role)
            # repr never sends a request: a server's prompts show once they have been read.
            if instruction is None and not self.backend.prompts_known:
                continue
            text = self._request_prompt(role).text
            if text:
                fields[f"{role}_prefix"] = text
        return fields
