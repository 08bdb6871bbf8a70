"""Where the vectors and scores come from: an in-process ``poolkit.LLM`` or a ``poolkit serve`` URL.

Both backends expose the same calls on plain Python values (``embed``/``aembed``,
``embed_images``/``aembed_images``, ``embed_sparse``/``aembed_sparse``, ``score``/``ascore``, and
``prompt_source``/``aprompt_source`` for the model's Sentence-Transformers prompts), so the LangChain
classes above them never see torch, the engine or HTTP. Async calls never block the event loop: the
in-process engine runs in a worker thread, the server is reached with ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import mimetypes
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx

if TYPE_CHECKING:
    from poolkit import LLM
    from poolkit.config import ModelConfig

logger = logging.getLogger("langchain_poolkit")


@dataclass(frozen=True)
class EmbedOptions:
    """What one embedding call asks of the engine; every chunk of the call shares it.

    ``prompt`` / ``prompt_name`` are passed on as they are (at most one is set): the
    engine or server applies the prompt, exactly as ``LLM.embed`` does.
    ``enable_chunked_processing``: ``True`` embeds inputs longer than the model in chunks
    (``LLM.embed(enable_chunked_processing=True)``, the server's request field of that name);
    ``None`` sends nothing (the model's pooler config decides).
    """

    dimensions: int | None = None
    truncate_prompt_tokens: int | None = -1
    prompt: str | None = None
    prompt_name: str | None = None
    enable_chunked_processing: bool | None = None


class Embedded(NamedTuple):
    """One chunk's vectors, and how many of its texts were cut (as the engine or server reported it)."""

    vectors: list[list[float]]
    truncated: int


class SparseVector(NamedTuple):
    """One text's sparse (SPLADE) embedding: active dimensions (token ids, ascending) and their weights.

    ``dim`` is the vocabulary size when the source says it (the in-process engine does;
    TEI's ``/embed_sparse`` answer does not, so it is ``None`` from a server).
    """

    indices: list[int]
    values: list[float]
    dim: int | None


def _not_sparse(name: str, outputs: Any) -> ValueError:
    return ValueError(
        f"Model {name!r} gives no sparse embeddings (its outputs: {', '.join(outputs) or 'dense'}): "
        "use a sparse (SPLADE / BGE-M3) model, e.g. a sentence-transformers SparseEncoder checkpoint"
    )


# -- images -------------------------------------------------------------------

# URL schemes an image uri may use as it is (a server fetches them itself); anything else is a local file.
_IMAGE_URL_PREFIXES = ("data:", "http://", "https://")
# Data URIs one request to a server may carry, in characters: a server refuses bodies over a limit
# (``poolkit serve --max-request-bytes``, 64 MiB by default), so larger batches of images go in several requests.
IMAGE_REQUEST_CHARS = 16 << 20


def is_image_url(uri: str) -> bool:
    """Whether ``uri`` is a ``data:`` or ``http(s)://`` URL (else it names a local file)."""
    return uri[:8].lower().startswith(_IMAGE_URL_PREFIXES)


def image_file_path(uri: str | os.PathLike[str]) -> Path:
    """The local file an image uri names: a path, or a ``file://`` URL."""
    if isinstance(uri, str) and uri[:7].lower() == "file://":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {uri!r} names another host ({parts.netloc}); only local files can be read")
        return Path(url2pathname(parts.path))
    return Path(uri)


def image_data_uri(path: Path, index: int) -> str:
    """A local image file as a ``data:`` URI (base64), read with poolkit's byte limit for images.

    The server cannot read the client's disk, so local files travel inside the request. The bytes are
    sent as they are (the server decodes them, whatever the file's name says).
    """
    from poolkit.media import DEFAULT_LIMITS, check_byte_size

    shown = f"image {index} ({path})"
    try:
        with open(path, "rb") as handle:
            check_byte_size(os.fstat(handle.fileno()).st_size, DEFAULT_LIMITS, source=shown)
            data = handle.read(DEFAULT_LIMITS.max_bytes + 1)  # bounded even if the file grows meanwhile
    except FileNotFoundError:
        raise ValueError(f"{shown}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{shown}: is a directory, not an image file") from None
    check_byte_size(len(data), DEFAULT_LIMITS, source=shown, at_least=True)
    media_type = mimetypes.guess_type(path.name)[0] or ""
    if not media_type.startswith("image/"):
        media_type = "application/octet-stream"  # the server sniffs the format from the bytes
    return f"data:{media_type};base64," + base64.b64encode(data).decode("ascii")


def _text_only(name: str, modalities: Sequence[str]) -> ValueError:
    return ValueError(
        f"Model {name!r} takes text only (modalities: {list(modalities)}): embedding images needs an "
        "image-text model such as CLIP or SigLIP"
    )


# -- in-process -------------------------------------------------------------

# The engine is not thread-safe. Every wrapper around the same LLM object
# (an Embeddings and a reranker sharing one engine, say) must take the same lock.
_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def engine_lock(llm: Any) -> threading.Lock:
    """The process-wide lock that serialises calls into ``llm``."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(llm)
        if lock is None:
            lock = _LOCKS[llm] = threading.Lock()
        return lock


def llm_init_parameters() -> set[str]:
    """Keyword arguments ``poolkit.LLM`` accepts besides ``model``: the fields of ``EngineArgs``.

    Read from the settings dataclass (the one declaration of them), so a new engine
    setting is accepted here without a change.
    """
    from poolkit.settings import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)} - {"model"}


def load_llm(model: str | None, engine_kwargs: dict[str, Any]) -> LLM:
    """Build a ``poolkit.LLM``; ``model=None`` is the bundled default model."""
    from poolkit import LLM

    logger.info("Loading poolkit engine for model %r", model or "default")
    return LLM(model=model, **engine_kwargs)


def is_llm(obj: Any) -> bool:
    """Duck-typed check, so that importing this module never imports torch."""
    return all(hasattr(obj, name) for name in ("embed", "score", "model_config"))


class LocalBackend:
    """Calls a ``poolkit.LLM`` in this process, one call at a time."""

    kind = "in-process"
    prompts_known = True

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.lock = engine_lock(llm)

    @property
    def model_name(self) -> str:
        return str(self.llm.model_config.served_model_name)

    @property
    def max_model_len(self) -> int:
        return int(self.llm.model_config.max_model_len)

    def prompt_source(self) -> ModelConfig:
        """The engine's model config: its prompts and default prompt name."""
        return self.llm.model_config

    async def aprompt_source(self) -> ModelConfig:
        return self.prompt_source()

    def embed(self, texts: list[str], options: EmbedOptions, *, show_progress: bool = False) -> Embedded:
        """Embeddings of ``texts``; the truncation count is the outputs' own ``truncated`` flags."""
        from poolkit import PoolingParams

        # LangChain embeddings are dense vectors; a sparse or multi-vector model is refused with the engine's message
        params = PoolingParams(dimensions=options.dimensions, output="dense")
        with self.lock:
            outputs = self.llm.embed(
                texts,
                pooling_params=params,
                truncate_prompt_tokens=options.truncate_prompt_tokens,
                use_tqdm=show_progress,
                prompt=options.prompt,
                prompt_name=options.prompt_name,
                enable_chunked_processing=options.enable_chunked_processing,
            )
        return Embedded([out.outputs.numpy().tolist() for out in outputs], sum(out.truncated for out in outputs))

    async def aembed(self, texts: list[str], options: EmbedOptions) -> Embedded:
        return await asyncio.to_thread(self.embed, texts, options)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The kinds of input the model embeds (``("text", "image")`` for CLIP / SigLIP)."""
        return tuple(self.llm.model_config.modalities)

    def _image_sources(self, uris: list[str], first_index: int = 0) -> list[Any]:
        """What ``LLM.embed`` takes for each uri: a ``Path`` for a local file (the engine reads it), a decoded
        image for a ``data:`` / ``http(s)`` URL (loaded here, with poolkit.media's limits)."""
        from poolkit.media import MediaError, load_image_url

        sources: list[Any] = []
        client: httpx.Client | None = None
        try:
            for index, uri in enumerate(uris):
                if not is_image_url(uri):
                    sources.append(image_file_path(uri))
                    continue
                if client is None and uri[:5].lower() != "data:":
                    client = httpx.Client()  # one connection pool for the batch's downloads
                try:
                    sources.append(load_image_url(uri, client=client))
                except MediaError as exc:
                    raise ValueError(f"Image {first_index + index}: {exc}") from None
        finally:
            if client is not None:
                client.close()
        return sources

    def embed_images(self, uris: list[str], *, dimensions: int | None = None, show_progress: bool = False,
                     first_index: int = 0) -> list[list[float]]:
        """Embeddings of the images ``uris`` name (local files or ``data:`` / ``http(s)`` URLs), in order;
        ``first_index`` (their position in the caller's whole list) numbers error messages."""
        if not uris:
            return []
        if "image" not in self.modalities:
            raise _text_only(self.model_name, self.modalities)
        from poolkit import PoolingParams

        # Downloads and decoding happen before taking the lock: the engine serves others meanwhile.
        # vLLM's prompt dicts (LLM.embed's annotation names only its own prompt types)
        prompts: list[Any] = [{"multi_modal_data": {"image": s}} for s in self._image_sources(uris, first_index)]
        params = PoolingParams(dimensions=dimensions, output="dense")
        with self.lock:
            outputs = self.llm.embed(prompts, pooling_params=params, use_tqdm=show_progress)
        return [out.outputs.numpy().tolist() for out in outputs]

    async def aembed_images(self, uris: list[str], *, dimensions: int | None = None,
                            first_index: int = 0) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_images, uris, dimensions=dimensions, first_index=first_index)

    def embed_sparse(self, texts: list[str], *, truncate_prompt_tokens: int | None = -1,
                     prompt_name: str | None = None) -> list[SparseVector]:
        """Sparse embeddings of ``texts``: ``LLM.embed`` asking for the model's sparse output.

        A model with several outputs (BGE-M3: dense first) is asked for ``output="sparse"`` explicitly.
        """
        if not texts:
            return []
        from poolkit import PoolingParams, SparseEmbeddingOutput

        supported = self.llm.model_config.outputs
        if "sparse" not in supported:
            raise _not_sparse(self.model_name, supported)
        params = PoolingParams(output="sparse")
        with self.lock:
            outputs = self.llm.embed(texts, pooling_params=params, truncate_prompt_tokens=truncate_prompt_tokens,
                                     use_tqdm=False, prompt_name=prompt_name)
        sparse = [o.outputs for o in outputs]
        return [SparseVector(v.indices.tolist(), v.values.tolist(), int(v.dim))
                for v in sparse if isinstance(v, SparseEmbeddingOutput)]

    async def aembed_sparse(self, texts: list[str], *, truncate_prompt_tokens: int | None = -1,
                            prompt_name: str | None = None) -> list[SparseVector]:
        return await asyncio.to_thread(self.embed_sparse, texts, truncate_prompt_tokens=truncate_prompt_tokens,
                                       prompt_name=prompt_name)

    def score(self, query: str, documents: list[str], *, truncate_prompt_tokens: int | None,
              dimensions: int | None = None) -> list[float]:
        """One relevance score per document: ``LLM.score`` (cross-encoder pair score, or cosine;
        ``dimensions``: the cosine of Matryoshka-truncated vectors)."""
        if not documents:
            return []
        from poolkit import PoolingParams

        params = PoolingParams(dimensions=dimensions) if dimensions is not None else None
        with self.lock:
            outputs = self.llm.score(query, documents, truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=False,
                                     pooling_params=params)
        return [float(out.outputs.score) for out in outputs]

    async def ascore(self, query: str, documents: list[str], *, truncate_prompt_tokens: int | None,
                     dimensions: int | None = None) -> list[float]:
        return await asyncio.to_thread(self.score, query, documents, truncate_prompt_tokens=truncate_prompt_tokens,
                                       dimensions=dimensions)

    def describe(self) -> str:
        return f"in-process {self.model_name!r}"


# -- server -----------------------------------------------------------------


class PoolkitServerError(RuntimeError):
    """The poolkit server answered with an error (its error JSON's message is kept)."""

    def __init__(self, message: str, *, status_code: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type


class PoolkitBadRequestError(PoolkitServerError, ValueError):
    """A 4xx answer: the request itself was wrong (also a ``ValueError``, as in-process)."""


_RETRY_STATUS = frozenset({429, 502, 503, 504})
MODELS_PATH = "/v1/models"
EMBEDDINGS_PATH = "/v1/embeddings"
RERANK_PATH = "/rerank"
EMBED_SPARSE_PATH = "/embed_sparse"


def _error_from_response(response: httpx.Response, url: str) -> PoolkitServerError:
    """Turn the server's error JSON (``{"message", "type", "code"}`` or FastAPI's ``detail``) into an exception."""
    message: str | None = None
    error_type: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
        if isinstance(err.get("message"), str):
            message, error_type = err["message"], err.get("type")
        elif "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list):
                detail = "; ".join(
                    f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                    for d in detail
                )
            message = str(detail)
    if message is None:
        message = response.text.strip()[:500] or response.reason_phrase
    status = response.status_code
    text = f"poolkit server {url} answered HTTP {status}" + (f" ({error_type})" if error_type else "") + f": {message}"
    cls = PoolkitBadRequestError if 400 <= status < 500 else PoolkitServerError
    return cls(text, status_code=status, error_type=error_type)


@dataclass(frozen=True)
class ServedModel:
    """A served model's ``/v1/models`` card, as far as the client needs it.

    ``prompts`` and ``default_prompt_name`` are what poolkit's prompt rules read, so the
    same rules pick a query/document prompt for a served model as for a local one.
    """

    name: str
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    max_model_len: int | None = None
    modalities: tuple[str, ...] | None = None
    """The kinds of input the model embeds (poolkit's card extension); ``None`` when the card does not say."""

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> ServedModel:
        limit = card.get("max_model_len")
        modalities = card.get("modalities")
        return cls(
            name=str(card.get("id")),
            prompts={str(k): str(v) for k, v in (card.get("prompts") or {}).items()},
            default_prompt_name=card.get("default_prompt_name"),
            max_model_len=int(limit) if limit is not None else None,
            modalities=tuple(str(m) for m in modalities) if isinstance(modalities, list) else None,
        )


class RemoteBackend:
    """Talks to ``poolkit serve``: ``POST /v1/embeddings``, ``POST /rerank`` and, once, ``GET /v1/models``.

    A sync ``httpx.Client`` is kept for the instance; async calls open an
    ``httpx.AsyncClient`` per call (so an instance works across event loops).
    429/502/503/504 answers and connection errors are retried with backoff.
    The model card (its prompts and length limit) is read lazily, on the first
    call that needs it, so constructing a client never touches the network.
    """

    kind = "server"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        model: str | None,
        timeout: float,
        max_retries: int,
    ) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.base_url = base
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.headers = {"Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._card: ServedModel | None = None
        self._card_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.model or "(server default)"

    @property
    def max_model_len(self) -> int | None:
        """The served model's limit, once its card has been read (``None`` before)."""
        return self._card.max_model_len if self._card is not None else None

    @property
    def prompts_known(self) -> bool:
        """Whether the model card has been read (so asking for prompts needs no request)."""
        return self._card is not None

    def describe(self) -> str:
        return f"server {self.base_url} model={self.model_name!r}"

    # transport ----------------------------------------------------------

    def _sync_client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after:
                try:
                    return min(float(retry_after), 30.0)
                except ValueError:
                    pass
        return min(0.5 * 2**attempt, 8.0)

    def _retry_after_error(self, url: str, attempt: int, exc: httpx.TransportError) -> float:
        """Seconds to wait before retrying a request that did not reach the server; raises once retries are spent."""
        if attempt >= self.max_retries:
            raise PoolkitServerError(f"could not reach poolkit server {url}: {exc}") from exc
        return self._delay(attempt, None)

    def _retry_after_answer(self, url: str, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before retrying this answer, or ``None`` when it is final (an error answer raises)."""
        if response.status_code in _RETRY_STATUS and attempt < self.max_retries:
            logger.debug("%s answered %s; retrying", url, response.status_code)
            return self._delay(attempt, response)
        if response.is_error:
            raise _error_from_response(response, url)
        return None

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request (with retries) on the instance's client; the answer's JSON."""
        url = self.base_url + path
        attempt = 0
        delay: float | None
        while True:
            try:
                response = self._sync_client().request(method, path, json=body)
            except httpx.TransportError as exc:
                delay = self._retry_after_error(url, attempt, exc)
            else:
                delay = self._retry_after_answer(url, attempt, response)
                if delay is None:
                    return response.json()
            time.sleep(delay)
            attempt += 1

    async def _asend(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Async ``_send``, on a client of its own (bound to the running event loop)."""
        url = self.base_url + path
        attempt = 0
        delay: float | None
        async with httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout) as client:
            while True:
                try:
                    response = await client.request(method, path, json=body)
                except httpx.TransportError as exc:
                    delay = self._retry_after_error(url, attempt, exc)
                else:
                    delay = self._retry_after_answer(url, attempt, response)
                    if delay is None:
                        return response.json()
                await asyncio.sleep(delay)
                attempt += 1

    # the model card ---------------------------------------------------------

    def prompt_source(self) -> ServedModel:
        """The served model's card, read from ``/v1/models`` on first use and kept."""
        with self._card_lock:
            if self._card is None:
                try:
                    payload = self._send("GET", MODELS_PATH)
                except PoolkitServerError as exc:
                    raise self._card_error(exc) from exc
                self._card = self._pick_card(payload)
            return self._card

    async def aprompt_source(self) -> ServedModel:
        """Async ``prompt_source``. Two first calls racing may both read the card; the answers are the same."""
        if self._card is None:
            try:
                payload = await self._asend("GET", MODELS_PATH)
            except PoolkitServerError as exc:
                raise self._card_error(exc) from exc
            self._card = self._pick_card(payload)
        return self._card

    def _card_error(self, exc: PoolkitServerError) -> PoolkitServerError:
        """The same error, saying what it was needed for (the prompts decide the vectors)."""
        return type(exc)(
            f"could not read the served model's prompts from {self.base_url}{MODELS_PATH}: {exc}",
            status_code=exc.status_code,
            error_type=exc.error_type,
        )

    def _pick_card(self, payload: Any) -> ServedModel:
        """The card of the requested model, or the server's first (the one it serves by default)."""
        cards = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(cards, list) or not cards or not all(isinstance(c, dict) for c in cards):
            raise PoolkitServerError(f"poolkit server {self.base_url}{MODELS_PATH} listed no models")
        if not self.model:
            return ServedModel.from_card(cards[0])
        for card in cards:
            if card.get("id") == self.model:
                return ServedModel.from_card(card)
        served = ", ".join(repr(c.get("id")) for c in cards)
        raise PoolkitBadRequestError(
            f"poolkit server {self.base_url} does not serve model {self.model!r}; it serves {served}", status_code=404
        )

    # requests -------------------------------------------------------------

    def _embed_body(self, texts: list[str], options: EmbedOptions) -> dict[str, Any]:
        optional = {
            "model": self.model or None,
            "dimensions": options.dimensions,
            "truncate_prompt_tokens": options.truncate_prompt_tokens,
            "prompt": options.prompt,  # "" is sent: it turns the model's default prompt off
            "prompt_name": options.prompt_name,
            "enable_chunked_processing": options.enable_chunked_processing,
        }
        body: dict[str, Any] = {"input": texts, "encoding_format": "float", "output": "dense"}
        body.update({key: value for key, value in optional.items() if value is not None})
        return body

    @staticmethod
    def _parse_embeddings(payload: Any, n: int) -> Embedded:
        """Vectors in input order, and the server's count of inputs it cut (``usage.truncated_inputs``)."""
        data = sorted(payload["data"], key=lambda item: item["index"])
        if len(data) != n:
            raise PoolkitServerError(f"poolkit server returned {len(data)} embeddings for {n} inputs")
        truncated = int((payload.get("usage") or {}).get("truncated_inputs") or 0)
        return Embedded([[float(x) for x in item["embedding"]] for item in data], truncated)

    def _rerank_body(self, query: str, documents: list[str], truncate_prompt_tokens: int | None,
                     dimensions: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query": query,
            "documents": documents,
            "top_n": len(documents),
            "return_documents": False,
        }
        if self.model:
            body["model"] = self.model
        if truncate_prompt_tokens is not None:
            body["truncate_prompt_tokens"] = truncate_prompt_tokens
        if dimensions is not None:
            body["dimensions"] = dimensions
        return body

    @staticmethod
    def _parse_rerank(payload: Any, n: int) -> list[float]:
        scores: list[float | None] = [None] * n
        for item in payload["results"]:
            scores[int(item["index"])] = float(item["relevance_score"])
        if any(s is None for s in scores):
            raise PoolkitServerError(
                f"poolkit server returned {sum(s is not None for s in scores)} scores for {n} documents"
            )
        return scores  # type: ignore[return-value]

    @staticmethod
    def _embed_sparse_body(texts: list[str], truncate_prompt_tokens: int | None,
                           prompt_name: str | None) -> dict[str, Any]:
        """TEI's ``/embed_sparse`` body: ``truncate`` is a bool (cut at the model's limit or not)."""
        if truncate_prompt_tokens not in (None, -1):
            raise ValueError(
                f"truncate_prompt_tokens={truncate_prompt_tokens}: the server's /embed_sparse (TEI's API) can only "
                "cut inputs at the model's limit; use -1 (cut there) or None (over-long inputs are an error)"
            )
        body: dict[str, Any] = {"inputs": texts, "truncate": truncate_prompt_tokens is not None}
        if prompt_name is not None:
            body["prompt_name"] = prompt_name
        return body

    @staticmethod
    def _parse_sparse(payload: Any, n: int) -> list[SparseVector]:
        """TEI's ``[[{"index": int, "value": float}, ...], ...]``, one list per input in input order."""
        if not isinstance(payload, list) or len(payload) != n:
            got = len(payload) if isinstance(payload, list) else type(payload).__name__
            raise PoolkitServerError(f"poolkit server returned {got} sparse embeddings for {n} inputs")
        vectors = []
        for item in payload:
            pairs = sorted((int(entry["index"]), float(entry["value"])) for entry in item)
            vectors.append(SparseVector([i for i, _ in pairs], [v for _, v in pairs], None))
        return vectors

    def embed_sparse(self, texts: list[str], *, truncate_prompt_tokens: int | None = -1,
                     prompt_name: str | None = None) -> list[SparseVector]:
        """``POST /embed_sparse`` (``dim`` is ``None``: TEI's answer does not carry the vocabulary size)."""
        if not texts:
            return []
        body = self._embed_sparse_body(texts, truncate_prompt_tokens, prompt_name)
        return self._parse_sparse(self._send("POST", EMBED_SPARSE_PATH, body), len(texts))

    async def aembed_sparse(self, texts: list[str], *, truncate_prompt_tokens: int | None = -1,
                            prompt_name: str | None = None) -> list[SparseVector]:
        if not texts:
            return []
        body = self._embed_sparse_body(texts, truncate_prompt_tokens, prompt_name)
        return self._parse_sparse(await self._asend("POST", EMBED_SPARSE_PATH, body), len(texts))

    def embed(self, texts: list[str], options: EmbedOptions, *, show_progress: bool = False) -> Embedded:
        """``POST /v1/embeddings`` (``show_progress`` is for the in-process engine; a server shows none)."""
        return self._parse_embeddings(self._send("POST", EMBEDDINGS_PATH, self._embed_body(texts, options)), len(texts))

    async def aembed(self, texts: list[str], options: EmbedOptions) -> Embedded:
        payload = await self._asend("POST", EMBEDDINGS_PATH, self._embed_body(texts, options))
        return self._parse_embeddings(payload, len(texts))

    # images -------------------------------------------------------------

    def _check_images(self, card: ServedModel | None) -> None:
        """Refuse before sending images to a model whose card says it takes text only."""
        if card is not None and card.modalities is not None and "image" not in card.modalities:
            raise _text_only(card.name, card.modalities)

    def _image_card(self) -> ServedModel | None:
        """The model card, to check its modalities; ``None`` when it cannot be read (e.g. a server without
        ``/v1/models``): the embeddings request then answers for itself."""
        try:
            return self.prompt_source()
        except PoolkitServerError as exc:
            logger.debug("not checking the served model's modalities: %s", exc)
            return None

    async def _aimage_card(self) -> ServedModel | None:
        try:
            return await self.aprompt_source()
        except PoolkitServerError as exc:
            logger.debug("not checking the served model's modalities: %s", exc)
            return None

    @staticmethod
    def image_urls(uris: list[str], first_index: int = 0) -> list[str]:
        """What the server is sent for each uri: URLs as they are, local files as ``data:`` URIs."""
        return [uri if is_image_url(uri) else image_data_uri(image_file_path(uri), first_index + i)
                for i, uri in enumerate(uris)]

    def _image_bodies(self, urls: list[str], dimensions: int | None) -> list[tuple[dict[str, Any], int]]:
        """``/v1/embeddings`` bodies with ``messages`` (one conversation per image), and their image counts;
        split so that no body carries much more than ``IMAGE_REQUEST_CHARS`` of URLs."""
        groups: list[list[str]] = []
        size = 0
        for url in urls:
            if not groups or (size + len(url) > IMAGE_REQUEST_CHARS and groups[-1]):
                groups.append([])
                size = 0
            groups[-1].append(url)
            size += len(url)
        bodies = []
        for group in groups:
            body: dict[str, Any] = {
                "messages": [[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
                             for url in group],
                "encoding_format": "float",
                "output": "dense",
            }
            if self.model:
                body["model"] = self.model
            if dimensions is not None:
                body["dimensions"] = dimensions
            bodies.append((body, len(group)))
        return bodies

    def embed_images(self, uris: list[str], *, dimensions: int | None = None, show_progress: bool = False,
                     first_index: int = 0) -> list[list[float]]:
        """``POST /v1/embeddings`` with chat-style ``messages``, one ``image_url`` conversation per image
        (``show_progress`` is for the in-process engine; ``first_index`` numbers error messages)."""
        if not uris:
            return []
        self._check_images(self._image_card())
        vectors: list[list[float]] = []
        for body, n in self._image_bodies(self.image_urls(uris, first_index), dimensions):
            vectors += self._parse_embeddings(self._send("POST", EMBEDDINGS_PATH, body), n).vectors
        return vectors

    async def aembed_images(self, uris: list[str], *, dimensions: int | None = None,
                            first_index: int = 0) -> list[list[float]]:
        if not uris:
            return []
        self._check_images(await self._aimage_card())
        urls = await asyncio.to_thread(self.image_urls, uris, first_index)  # file reads and base64 off the event loop
        vectors: list[list[float]] = []
        for body, n in self._image_bodies(urls, dimensions):
            vectors += self._parse_embeddings(await self._asend("POST", EMBEDDINGS_PATH, body), n).vectors
        return vectors

    def score(self, query: str, documents: list[str], *, truncate_prompt_tokens: int | None,
              dimensions: int | None = None) -> list[float]:
        if not documents:
            return []
        body = self._rerank_body(query, documents, truncate_prompt_tokens, dimensions)
        return self._parse_rerank(self._send("POST", RERANK_PATH, body), len(documents))

    async def ascore(self, query: str, documents: list[str], *, truncate_prompt_tokens: int | None,
                     dimensions: int | None = None) -> list[float]:
        if not documents:
            return []
        body = self._rerank_body(query, documents, truncate_prompt_tokens, dimensions)
        return self._parse_rerank(await self._asend("POST", RERANK_PATH, body), len(documents))


Backend = LocalBackend | RemoteBackend
