"""Where the vectors and scores come from: an in-process ``poolkit.LLM`` or a ``poolkit serve`` URL.

Both backends expose the same four calls (``embed``/``aembed``,
``score``/``ascore``) on plain Python lists, so the LangChain classes above
them never see torch, the engine or HTTP. Async calls never block the event
loop: the in-process engine runs in a worker thread, the server is reached
with ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from poolkit import LLM

logger = logging.getLogger("langchain_poolkit")

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
    """Keyword arguments ``poolkit.LLM`` accepts (besides ``model``)."""
    from poolkit import LLM

    return {n for n in inspect.signature(LLM.__init__).parameters if n not in ("self", "model")}


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

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.lock = engine_lock(llm)

    @property
    def model_name(self) -> str:
        return str(self.llm.model_config.served_model_name)

    @property
    def max_model_len(self) -> int:
        return int(self.llm.model_config.max_model_len)

    def _limit(self, truncate_prompt_tokens: int | None) -> int | None:
        if truncate_prompt_tokens is None:
            return None
        return self.max_model_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens

    def _count_truncated(self, texts: Sequence[str], token_ids: Sequence[Sequence[int]], limit: int | None) -> int:
        """How many ``texts`` were cut: only outputs exactly at the limit are re-tokenized to check."""
        if limit is None:
            return 0
        candidates = [t for t, ids in zip(texts, token_ids) if len(ids) >= limit]
        if not candidates:
            return 0
        tokenizer = self.llm.get_tokenizer()
        if getattr(self.llm.model_config, "do_lower_case", False):
            candidates = [t.lower() for t in candidates]
        lengths = [len(ids) for ids in tokenizer(candidates, add_special_tokens=True, verbose=False)["input_ids"]]
        return sum(n > limit for n in lengths)

    def embed(
        self, texts: list[str], *, dimensions: int | None, truncate_prompt_tokens: int | None, use_tqdm: bool = False
    ) -> tuple[list[list[float]], int]:
        """Embeddings of ``texts`` and the number of texts that were truncated."""
        from poolkit import PoolingParams

        params = PoolingParams(dimensions=dimensions) if dimensions is not None else None
        with self.lock:
            outputs = self.llm.embed(
                texts, pooling_params=params, truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm
            )
            # Under the lock too: the engine reconfigures the (Rust) tokenizer per call, which
            # is not safe to share with another thread mid-call.
            truncated = self._count_truncated(
                texts, [out.prompt_token_ids for out in outputs], self._limit(truncate_prompt_tokens)
            )
        vectors = [[float(x) for x in out.outputs.embedding] for out in outputs]
        return vectors, truncated

    def score(self, query: str, documents: list[str], *, truncate_prompt_tokens: int | None) -> list[float]:
        """One relevance score per document (cross-encoder logit/probability or cosine)."""
        if not documents:
            return []
        with self.lock:
            outputs = self.llm.score(query, documents, truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=False)
        return [float(out.outputs.score) for out in outputs]

    async def aembed(
        self, texts: list[str], *, dimensions: int | None, truncate_prompt_tokens: int | None
    ) -> tuple[list[list[float]], int]:
        return await asyncio.to_thread(
            self.embed, texts, dimensions=dimensions, truncate_prompt_tokens=truncate_prompt_tokens
        )

    async def ascore(self, query: str, documents: list[str], *, truncate_prompt_tokens: int | None) -> list[float]:
        return await asyncio.to_thread(self.score, query, documents, truncate_prompt_tokens=truncate_prompt_tokens)

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


def _error_from_response(response: httpx.Response, url: str) -> PoolkitServerError:
    """Turn the server's error JSON (``{"message", "type", "code"}`` or FastAPI's ``detail``) into an exception."""
    message: str | None = None
    error_type: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error") if isinstance(body.get("error"), dict) else body
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


class RemoteBackend:
    """Talks to ``poolkit serve``: ``POST /v1/embeddings`` and ``POST /rerank`` (Jina/Cohere shape).

    A sync ``httpx.Client`` is kept for the instance; async calls open an
    ``httpx.AsyncClient`` per call (so an instance works across event loops).
    429/502/503/504 answers and connection errors are retried with backoff.
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

    @property
    def model_name(self) -> str:
        return self.model or "(server default)"

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

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        url = self.base_url + path
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._sync_client().post(path, json=body)
            except httpx.TransportError as exc:
                if last:
                    raise PoolkitServerError(f"could not reach poolkit server {url}: {exc}") from exc
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in _RETRY_STATUS and not last:
                logger.debug("%s answered %s; retrying", url, response.status_code)
                time.sleep(self._delay(attempt, response))
                continue
            if response.is_error:
                raise _error_from_response(response, url)
            return response.json()
        raise AssertionError("unreachable")

    async def _apost(self, path: str, body: dict[str, Any]) -> Any:
        url = self.base_url + path
        async with httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout) as client:
            for attempt in range(self.max_retries + 1):
                last = attempt == self.max_retries
                try:
                    response = await client.post(path, json=body)
                except httpx.TransportError as exc:
                    if last:
                        raise PoolkitServerError(f"could not reach poolkit server {url}: {exc}") from exc
                    await asyncio.sleep(self._delay(attempt, None))
                    continue
                if response.status_code in _RETRY_STATUS and not last:
                    logger.debug("%s answered %s; retrying", url, response.status_code)
                    await asyncio.sleep(self._delay(attempt, response))
                    continue
                if response.is_error:
                    raise _error_from_response(response, url)
                return response.json()
        raise AssertionError("unreachable")

    # requests -------------------------------------------------------------

    def _embed_body(self, texts: list[str], dimensions: int | None, truncate_prompt_tokens: int | None) -> dict:
        body: dict[str, Any] = {"input": texts, "encoding_format": "float"}
        if self.model:
            body["model"] = self.model
        if dimensions is not None:
            body["dimensions"] = dimensions
        if truncate_prompt_tokens is not None:
            body["truncate_prompt_tokens"] = truncate_prompt_tokens
        return body

    @staticmethod
    def _parse_embeddings(payload: Any, n: int) -> list[list[float]]:
        data = sorted(payload["data"], key=lambda item: item["index"])
        if len(data) != n:
            raise PoolkitServerError(f"poolkit server returned {len(data)} embeddings for {n} inputs")
        return [[float(x) for x in item["embedding"]] for item in data]

    def _rerank_body(self, query: str, documents: list[str], truncate_prompt_tokens: int | None) -> dict:
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

    def embed(
        self, texts: list[str], *, dimensions: int | None, truncate_prompt_tokens: int | None
    ) -> tuple[list[list[float]], int]:
        payload = self._post("/v1/embeddings", self._embed_body(texts, dimensions, truncate_prompt_tokens))
        return self._parse_embeddings(payload, len(texts)), 0

    async def aembed(
        self, texts: list[str], *, dimensions: int | None, truncate_prompt_tokens: int | None
    ) -> tuple[list[list[float]], int]:
        payload = await self._apost("/v1/embeddings", self._embed_body(texts, dimensions, truncate_prompt_tokens))
        return self._parse_embeddings(payload, len(texts)), 0

    def score(self, query: str, documents: list[str], *, truncate_prompt_tokens: int | None) -> list[float]:
        if not documents:
            return []
        payload = self._post("/rerank", self._rerank_body(query, documents, truncate_prompt_tokens))
        return self._parse_rerank(payload, len(documents))

    async def ascore(self, query: str, documents: list[str], *, truncate_prompt_tokens: int | None) -> list[float]:
        if not documents:
            return []
        payload = await self._apost("/rerank", self._rerank_body(query, documents, truncate_prompt_tokens))
        return self._parse_rerank(payload, len(documents))


Backend = LocalBackend | RemoteBackend
