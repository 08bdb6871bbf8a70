"""Async front of the engine for the server: cross-request batching on one model thread.

One :class:`AsyncPoolingEngine` owns the model of an ``LLM`` and drives the
same task layer (:mod:`poolkit.tasks`) as the offline API: a request is
prepared (checked, prompted, tokenized) off the event loop on one tokenizer
thread (fast tokenizers are not safe to reconfigure from several threads, and
truncation reconfigures them); invalid input raises ``ValueError``/``TypeError``
there, before any batching. Valid work goes into a queue bounded in tokens; ONE
model worker thread takes everything queued within a short window (a few ms)
up to a token budget, runs ``PoolingEngine.execute`` once on the merged batch
and resolves each request's future on its event loop. If a merged batch
fails, every request in it is retried on its own, so one bad request never
fails the others. The task turns the pooled NumPy arrays into the same output
objects ``LLM`` returns: callers above this module never touch torch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .engine import LLM
from .inputs import TokenizedPrompt
from .outputs import RequestOutput
from .params import HeadOptions
from .tasks import PreparedRequest, counter_ids

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The queue holds more tokens than allowed; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosedError(RuntimeError):
    """The engine is shutting down and accepts no new work."""


class EngineExecutionError(RuntimeError):
    """The model failed on a request's own inputs (not a validation error)."""


class EngineStats(Protocol):
    """What the worker reports (implemented by the server's Prometheus metrics)."""

    def observe_queue_wait(self, seconds: float) -> None: ...

    def observe_batch(self, num_seqs: int, num_tokens: int, seconds: float) -> None: ...

    def set_queued_tokens(self, tokens: int) -> None: ...


@dataclass(eq=False)
class _Work:
    prompts: list[TokenizedPrompt]
    options: list[HeadOptions]
    future: asyncio.Future[list[np.ndarray]]
    num_tokens: int
    enqueued: float = field(default_factory=time.monotonic)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled: the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class AsyncPoolingEngine:
    """Serve an ``LLM`` to many concurrent asyncio callers.

    Args:
        llm: the loaded offline engine; its ``PoolingEngine`` is used from one thread only.
        batch_wait_ms: how long the worker waits after the latest queued request
            for others to join its batch (it also waits for requests still being
            tokenized).
        max_batch_wait_ms: the longest a request waits for partners (default
            10 × ``batch_wait_ms``).
        max_batch_tokens: tokens (sum of prompt lengths) merged into one
            ``execute`` call; large requests are split into chunks of this size
            so they interleave with small ones. Default: the engine's
            ``max_num_batched_tokens``.
        max_queued_tokens: queued tokens beyond which new requests get
            :class:`QueueFullError` (a request arriving at an empty queue is
            always accepted).
        stats: optional metrics sink.
    """

    def __init__(
        self,
        llm: LLM,
        *,
        batch_wait_ms: float = 2.0,
        max_batch_wait_ms: float | None = None,
        max_batch_tokens: int | None = None,
        max_queued_tokens: int = 1 << 20,
        stats: EngineStats | None = None,
    ) -> None:
        self.llm = llm
        self.engine = llm.engine
        self.tasks = llm.tasks
        self.model_config = llm.model_config
        self.batch_wait_s = max(0.0, batch_wait_ms) / 1000.0
        self.max_batch_wait_s = max(self.batch_wait_s, (max_batch_wait_ms if max_batch_wait_ms is not None
                                                        else 10 * batch_wait_ms) / 1000.0)
        self.max_batch_tokens = max(1, max_batch_tokens or self.engine.scheduler_config.max_num_batched_tokens)
        self.max_queued_tokens = max_queued_tokens
        self.stats = stats
        self._queue: collections.deque[_Work] = collections.deque()
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closing = False
        self._incoming = 0  # requests accepted and being tokenized, not yet queued
        self._tokens_per_s = 0.0  # moving average, for Retry-After
        self._worker: threading.Thread | None = None
        self._request_ids = counter_ids()
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolkit-tokenizer")

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._worker_loop, name="poolkit-model-worker", daemon=True)
            self._worker.start()

    @property
    def is_running(self) -> bool:
        return self._worker is not None and self._worker.is_alive() and not self._closing

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, finish everything queued, then stop the threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._worker is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._worker.join, timeout)
            if self._worker.is_alive():
                logger.warning("Model worker still busy after %.1f s; leaving it behind", timeout or 0.0)
        self._tokenizer.shutdown(wait=False, cancel_futures=True)

    # -- building blocks ------------------------------------------------------

    @contextlib.contextmanager
    def _arriving(self) -> Iterator[None]:
        """Mark a request as on its way to the queue (the worker waits for it to join a batch)."""
        self._incoming += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                self._cond.notify()

    async def _in_tokenizer(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._closing:
            raise EngineClosedError("The server is shutting down")
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer, call)

    async def tokenize_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text, without the length check (for ``/tokenize``)."""
        return await self._in_tokenizer(self.tasks.processor.tokenize, text, add_special_tokens)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        processor = self.tasks.processor
        bad = [t for t in token_ids if t < 0 or t >= processor.vocab_size]
        if bad:
            raise ValueError(f"Token id {bad[0]} is outside the vocabulary (size {processor.vocab_size})")
        return await self._in_tokenizer(processor.tokenizer.decode, list(token_ids))

    def submit(self, prompts: Sequence[TokenizedPrompt], options: Sequence[HeadOptions]) -> Awaitable[list[np.ndarray]]:
        """Queue now (raising :class:`QueueFullError` / :class:`EngineClosedError` at once); await the outputs.

        A request larger than ``max_batch_tokens`` is queued as several chunks so
        that it interleaves with small requests instead of holding them up.
        """
        loop = asyncio.get_running_loop()
        if self._closing:
            raise EngineClosedError("The server is shutting down")
        items: list[_Work] = []
        start, tokens = 0, 0
        for i, prompt in enumerate(prompts):  # chunks of at most max_batch_tokens (one prompt at least)
            if i > start and tokens + len(prompt) > self.max_batch_tokens:
                items.append(_Work(list(prompts[start:i]), list(options[start:i]), loop.create_future(), tokens))
                start, tokens = i, 0
            tokens += len(prompt)
        if start < len(prompts):
            items.append(_Work(list(prompts[start:]), list(options[start:]), loop.create_future(), tokens))
        total = sum(w.num_tokens for w in items)
        with self._cond:
            if self._closing:
                raise EngineClosedError("The server is shutting down")
            if self._queued_tokens and self._queued_tokens + total > self.max_queued_tokens:
                raise QueueFullError(
                    f"The server is overloaded: {self._queued_tokens} tokens are queued (limit "
                    f"{self.max_queued_tokens}); retry later",
                    self._retry_after(),
                )
            self._queue.extend(items)
            self._queued_tokens += total
            self._cond.notify()
        if self.stats is not None:
            self.stats.set_queued_tokens(self._queued_tokens)
        return self._collect(items)

    @staticmethod
    async def _collect(items: list[_Work]) -> list[np.ndarray]:
        try:
            results = await asyncio.gather(*(w.future for w in items))
        except BaseException:
            for w in items:  # one chunk failed (or we were cancelled): drop the rest of this request
                if not w.future.done():
                    w.future.cancel()
                else:
                    w.future.cancelled() or w.future.exception()  # mark retrieved: no "never retrieved" noise
            raise
        return [value for chunk in results for value in chunk]

    def check_capacity(self) -> None:
        """Fail fast (before tokenizing) when the queue is already full."""
        if self._closing:
            raise EngineClosedError("The server is shutting down")
        if self._queued_tokens >= self.max_queued_tokens:
            raise QueueFullError(
                f"The server is overloaded: {self._queued_tokens} tokens are queued (limit "
                f"{self.max_queued_tokens}); retry later",
                self._retry_after(),
            )

    def _retry_after(self) -> int:
        if self._tokens_per_s <= 0:
            return 1
        return int(min(60, max(1, math.ceil(self._queued_tokens / self._tokens_per_s))))

    # -- requests -------------------------------------------------------------------

    async def process(self, task: str, *args: Any, **kwargs: Any) -> list[RequestOutput[Any]]:
        """Like ``LLM.<task>(*args, **kwargs)``, batched with every other caller's work.

        The queue is checked before tokenizing (a full queue answers at once), the
        request is prepared on the tokenizer thread, queued, and its outputs built
        by the task when the model worker is done.
        """
        self.check_capacity()
        with self._arriving():
            request: PreparedRequest = await self._in_tokenizer(self.tasks.prepare, task, *args, **kwargs)
            pending = self.submit(request.prompts, request.options)
        pooled = await pending
        return self.tasks.finish(request, pooled, self._request_ids)

    # -- the model worker thread ---------------------------------------------------

    def _next_batch(self) -> list[_Work] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            # Wait batch_wait after the latest arrival (a burst keeps the window open), and while
            # requests the server already holds are still being tokenized; never past max_batch_wait
            # after the oldest request, nor once the token budget is full.
            hard_deadline = self._queue[0].enqueued + self.max_batch_wait_s
            while not self._closing and self._queued_tokens < self.max_batch_tokens:
                deadline = hard_deadline
                if self._incoming == 0:
                    deadline = min(deadline, self._queue[-1].enqueued + self.batch_wait_s)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Work] = []
            tokens = 0
            while self._queue and (not batch or tokens + self._queue[0].num_tokens <= self.max_batch_tokens):
                item = self._queue.popleft()
                batch.append(item)
                tokens += item.num_tokens
            self._queued_tokens -= tokens
            queued = self._queued_tokens
        if self.stats is not None:
            self.stats.set_queued_tokens(queued)
        return batch

    def _execute(self, prompts: list[TokenizedPrompt], options: list[HeadOptions]) -> list[np.ndarray]:
        return self.engine.execute(prompts, options, use_tqdm=False)

    def _run_batch(self, batch: list[_Work]) -> None:
        now = time.monotonic()
        live = [w for w in batch if not w.future.cancelled()]
        if self.stats is not None:
            for w in live:
                self.stats.observe_queue_wait(now - w.enqueued)
        if not live:
            return
        prompts = [p for w in live for p in w.prompts]
        options = [o for w in live for o in w.options]
        num_tokens = sum(w.num_tokens for w in live)
        try:
            outputs = self._execute(prompts, options)
        except Exception as exc:
            if len(live) == 1:
                self._finish(live[0], None, self._wrap_error(live[0], exc))
                return
            logger.warning("A merged batch of %d requests failed; retrying them one by one", len(live), exc_info=True)
            for w in live:  # isolate the request(s) that cause the failure
                try:
                    self._finish(w, self._execute(w.prompts, w.options), None)
                except Exception as retry_exc:
                    self._finish(w, None, self._wrap_error(w, retry_exc))
            return
        elapsed = time.monotonic() - now
        if elapsed > 0:
            rate = num_tokens / elapsed
            self._tokens_per_s = rate if self._tokens_per_s == 0 else 0.8 * self._tokens_per_s + 0.2 * rate
        if self.stats is not None:
            self.stats.observe_batch(len(prompts), num_tokens, elapsed)
        start = 0
        for w in live:
            self._finish(w, outputs[start:start + len(w.prompts)], None)
            start += len(w.prompts)

    @staticmethod
    def _wrap_error(work: _Work, exc: Exception) -> EngineExecutionError:
        logger.error("Model execution failed for a request of %d prompts", len(work.prompts), exc_info=exc)
        error = EngineExecutionError(f"Model execution failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    @staticmethod
    def _finish(work: _Work, value: list[np.ndarray] | None, error: BaseException | None) -> None:
        try:
            work.future.get_loop().call_soon_threadsafe(_resolve, work.future, value, error)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass

    def _worker_loop(self) -> None:
        logger.info("Model worker started (batch wait %.1f ms, batch budget %d tokens, queue limit %d tokens)",
                    self.batch_wait_s * 1000, self.max_batch_tokens, self.max_queued_tokens)
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never die with requests outstanding
                logger.exception("Model worker error")
                for w in batch:
                    self._finish(w, None, EngineExecutionError(f"Internal error: {exc}"))
        logger.info("Model worker stopped")
