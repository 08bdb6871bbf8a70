"""Async front of the engine for the server: cross-request batching on one model thread, and a queue that
sheds load by time.

One :class:`AsyncPoolingEngine` owns the model of an ``LLM`` and drives the
same task layer (:mod:`poolkit.tasks`) as the offline API.

- **Admission, before any work**: a request is refused at once
  (:class:`QueueFullError`, 429 with ``Retry-After``) when the work already
  queued would keep it waiting longer than ``max_queue_wait`` (queued tokens /
  the measured tokens per second), or the queue holds ``max_queued_tokens``.
- **Tokenization that cannot block others**: requests are prepared off the
  event loop on two tokenizer threads, each with its own tokenizer (fast
  tokenizers must not be reconfigured from two threads at once): small requests
  take the *express* lane; large ones the *bulk* lane, slice by slice, each
  slice queued for the model as soon as it is tokenized, so two large requests
  interleave and the model starts before the whole request is tokenized.
  Invalid input raises ``ValueError``/``TypeError`` there, before batching.
- **Batching**: a model worker thread takes everything queued within a short
  window (a few ms) up to a token budget and runs ``PoolingEngine.execute``
  once on the merged batch. If a merged batch fails, every request in it is
  retried on its own, so one bad request never fails the others. On CPUs two
  workers by default (``model_workers``), sharing the model: the second takes a
  batch only while one runs and ``worker_spill_tokens`` more wait; a batch runs
  on all of torch's CPU threads when it starts alone with no such backlog, else
  on its share. A thread team that fills every core stalls whenever anything
  else takes one; two smaller teams lose only the core taken.
- **Cancelled and expired work is not run**: a request whose caller went away
  (its coroutine cancelled) drops its queued slices; a request still queued
  twice ``max_queue_wait`` after it arrived fails with :class:`QueueTimeoutError`
  (503) instead of running late.

The task turns the pooled NumPy arrays into the same output objects ``LLM``
returns: callers above this module never touch torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .engine import LLM, cpu_threads, use_cpu_threads
from .inputs import IMAGE_PROMPT_SIZE, ImagePrompt, InputProcessor, TokenizedPrompt, normalize_prompts, slices
from .outputs import RequestOutput
from .params import HeadOptions
from .settings import BatchingArgs
from .tasks import PreparedRequest, Tasks, counter_ids, params_list

logger = logging.getLogger(__name__)

# Requests with at most this many characters are tokenized on the express lane.
EXPRESS_CHARS = 32_768
# Large requests are tokenized (and queued) in slices of about this many characters.
SLICE_CHARS = 131_072
# What a token costs in characters, for estimates made before tokenizing (English-like text: ~4).
CHARS_PER_TOKEN = 4
# An image's share of a batch before it is preprocessed (a ViT-L/14 at 224 pixels has 257 positions).
IMAGE_TOKENS_ESTIMATE = 257
# A request still queued this many times max_queue_wait after it arrived is failed, not run.
DEADLINE_FACTOR = 2.0


class QueueFullError(RuntimeError):
    """Too much work is queued; retry after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueTimeoutError(RuntimeError):
    """The request waited in the queue past its deadline and was not run (HTTP 503)."""


class EngineClosedError(RuntimeError):
    """The engine is shutting down and accepts no new work."""


class EngineExecutionError(RuntimeError):
    """The model failed on a request's own inputs (not a validation error)."""


class EngineStats(Protocol):
    """What the worker reports (implemented by the server's Prometheus metrics)."""

    def observe_queue_wait(self, seconds: float) -> None: ...

    def observe_batch(self, num_seqs: int, num_tokens: int, seconds: float) -> None: ...

    def set_queued_tokens(self, tokens: int) -> None: ...

    def add_skipped_tokens(self, reason: str, tokens: int) -> None: ...


@dataclass(eq=False)
class _Work:
    """A slice of one request in the queue (a request larger than the batch budget is several)."""

    prompts: list[TokenizedPrompt]
    options: list[HeadOptions]
    future: asyncio.Future[list[np.ndarray]]
    num_tokens: int
    deadline: float
    part: int  # its place in its request: the worker serves every request's first parts before later ones
    enqueued: float = field(default_factory=time.monotonic)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled: the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def count_chars(value: Any) -> int:
    """Characters in the texts of a request's arguments (token-id prompts count one per token)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, ImagePrompt):
        return IMAGE_PROMPT_SIZE
    if isinstance(value, (list, tuple)):
        return sum(count_chars(v) if isinstance(v, (str, list, tuple, ImagePrompt)) else 1 for v in value)
    return 0


def estimate_tokens(value: Any, cap: int) -> int:
    """Tokens a request's texts will have, before tokenizing: ~4 characters a token, each text at most ``cap``
    (what truncation, or the length check, lets through)."""
    if isinstance(value, str):
        return min(len(value) // CHARS_PER_TOKEN + 2, cap)
    if isinstance(value, ImagePrompt):
        return min(IMAGE_TOKENS_ESTIMATE, cap)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) for v in value):
            return min(len(value), cap)
        return sum(estimate_tokens(v, cap) for v in value)
    return 0


@dataclass
class _Lane:
    """A tokenizer thread with its own copy of the tasks (tokenizer state is per thread)."""

    tasks: Tasks
    pool: ThreadPoolExecutor

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        call = functools.partial(fn, self.tasks, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)


class AsyncPoolingEngine:
    """Serve an ``LLM`` to many concurrent asyncio callers.

    Args:
        llm: the loaded offline engine; its ``PoolingEngine`` runs on the model worker thread(s) only.
        args: :class:`~poolkit.settings.BatchingArgs` (batch window, batch budget,
            queue limits, model workers); keyword ``overrides`` replace single fields.
        stats: optional metrics sink.
    """

    def __init__(self, llm: LLM, args: BatchingArgs | None = None, *, stats: EngineStats | None = None,
                 **overrides: Any) -> None:
        self.args = dataclasses.replace(args or BatchingArgs(), **overrides)
        self.llm = llm
        self.engine = llm.engine
        self.tasks = llm.tasks
        self.model_config = llm.model_config
        self.batch_wait_s = self.args.batch_wait_ms / 1000.0
        max_wait_ms = self.args.max_batch_wait_ms
        self.max_batch_wait_s = max(self.batch_wait_s, (10 * self.args.batch_wait_ms if max_wait_ms is None
                                                        else max_wait_ms) / 1000.0)
        self.max_batch_tokens = max(1, self.args.max_batch_tokens
                                    or self.engine.scheduler_config.max_num_batched_tokens)
        bulk = self.args.max_bulk_batch_tokens
        self.max_bulk_batch_tokens = min(bulk, self.max_batch_tokens) if bulk > 0 else self.max_batch_tokens
        self.max_queued_tokens = self.args.max_queued_tokens
        self.max_queue_wait = self.args.max_queue_wait
        self.stats = stats
        on_cpu = self.engine.runner.device.type == "cpu"
        workers = self.args.model_workers
        if workers is None:  # auto
            workers = 2 if on_cpu and cpu_threads() >= 2 else 1
        elif workers > 1 and not on_cpu:
            raise ValueError(f"model_workers={workers}: several model workers run CPU engines only "
                             f"(this one runs on {self.engine.runner.device.type})")
        self.num_workers = workers
        self.spill_tokens = self.args.worker_spill_tokens
        self._running = 0  # batches running now
        self._cpu_threads = 0  # what the starting thread had: the workers' threads, shared by the batches running
        self._queue: list[_Work] = []
        self._queued_tokens = 0
        self._cond = threading.Condition()
        self._closing = False
        self._incoming = 0  # requests accepted and being tokenized, not yet queued
        self._incoming_tokens = 0  # the estimated tokens of their first parts
        self._queued_first_tokens = 0  # queued tokens of requests' first parts (what a newcomer waits for)
        self._tokens_per_s = 0.0  # moving average of the model's speed, for admission and Retry-After
        self._workers: list[threading.Thread] = []
        self._request_ids = counter_ids()
        processor = self.tasks.processor
        express_tasks = Tasks(self.model_config, InputProcessor(copy.deepcopy(processor.tokenizer),
                                                                self.model_config))
        self._express = _Lane(express_tasks, ThreadPoolExecutor(1, thread_name_prefix="poolkit-tokenize-express"))
        self._bulk = _Lane(self.tasks, ThreadPoolExecutor(1, thread_name_prefix="poolkit-tokenize-bulk"))

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the model worker(s); their batches share this thread's CPU threads."""
        if self._workers:
            return
        self._cpu_threads = cpu_threads()
        for index in range(self.num_workers):
            name = "poolkit-model-worker" + (f"-{index}" if self.num_workers > 1 else "")
            worker = threading.Thread(target=self._worker_loop, args=(index,), name=name, daemon=True)
            worker.start()
            self._workers.append(worker)

    @property
    def is_running(self) -> bool:
        return any(w.is_alive() for w in self._workers) and not self._closing

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, finish everything queued, then stop the threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.get_running_loop().run_in_executor(None, worker.join, left)
            if worker.is_alive():
                logger.warning("Model worker %s still busy after %.1f s; leaving it behind", worker.name,
                               timeout or 0.0)
        for lane in (self._express, self._bulk):
            lane.pool.shutdown(wait=False, cancel_futures=True)

    # -- admission ----------------------------------------------------------------

    def expected_wait(self) -> float:
        """Seconds a request arriving now would wait for the model (0 until the speed is measured).

        The worker serves every request's first part before any later part, so a newcomer waits for
        the first parts queued or on their way, not for the rest of large requests.
        """
        if self._tokens_per_s <= 0:
            return 0.0
        return (self._queued_first_tokens + self._incoming_tokens) / self._tokens_per_s

    def admit(self) -> None:
        """Refuse at once what would wait too long (``QueueFullError``) or arrives while closing."""
        if self._closing:
            raise EngineClosedError("The server is shutting down")
        wait = self.expected_wait()
        if self.max_queue_wait and wait > self.max_queue_wait:
            raise QueueFullError(
                f"The server is overloaded: queued work would keep this request waiting ~{wait:.1f} s "
                f"(limit {self.max_queue_wait:g} s); retry later",
                int(min(60, max(1, math.ceil(wait - self.max_queue_wait)))),
            )
        if self._queued_tokens >= self.max_queued_tokens:
            raise QueueFullError(
                f"The server is overloaded: {self._queued_tokens} tokens are queued (limit "
                f"{self.max_queued_tokens}); retry later",
                int(min(60, max(1, math.ceil(wait)))),
            )

    def _deadline(self) -> float:
        """When a request that has not started must give up (its later parts have none: it is running)."""
        if not self.max_queue_wait:
            return math.inf
        return time.monotonic() + DEADLINE_FACTOR * self.max_queue_wait

    def _token_cap(self, task: str, kwargs: dict[str, Any]) -> int:
        """The most tokens one text of this request can run with (for estimates before tokenizing)."""
        truncate = kwargs.get("truncate_prompt_tokens")
        if truncate is not None:
            return self.model_config.max_model_len if truncate == -1 else max(1, int(truncate))
        chunked = kwargs.get("enable_chunked_processing")
        if chunked is None:
            chunked = bool(self.model_config.pooler_config.enable_chunked_processing)
        if chunked and task in ("embed", "encode"):
            from .tasks.chunking import max_embed_len

            return max_embed_len(self.model_config)
        return self.model_config.max_model_len

    @contextlib.contextmanager
    def _arriving(self, estimated_tokens: int) -> Iterator[None]:
        """Mark a request as on its way to the queue (the worker waits for it; admission counts it)."""
        with self._cond:
            self._incoming += 1
            self._incoming_tokens += estimated_tokens
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                self._incoming_tokens -= estimated_tokens
                self._cond.notify_all()

    # -- requests -------------------------------------------------------------------

    async def process(self, task: str, *args: Any, **kwargs: Any) -> list[RequestOutput[Any]]:
        """Like ``LLM.<task>(*args, **kwargs)``, batched with every other caller's work.

        Admission is checked before tokenizing; the request is prepared on a
        tokenizer lane, queued (a large one slice by slice), and its outputs built
        by the task when the model worker is done. Cancelling the caller drops the
        request's queued work.
        """
        self.admit()
        chars = count_chars(args)
        first_tokens = min(estimate_tokens(args, self._token_cap(task, kwargs)), self.max_batch_tokens)
        deadline = self._deadline()
        parts: list[tuple[PreparedRequest, list[_Work]]] = []
        try:
            with self._arriving(first_tokens):
                if chars <= EXPRESS_CHARS or not self.tasks[task].splittable:
                    lane = self._express if chars <= EXPRESS_CHARS else self._bulk
                    request = await lane.run(Tasks.prepare, task, *args, **kwargs)
                    parts.append((request, self._enqueue(request, deadline, first_part=0)))
                else:
                    async for request in self._prepare_slices(task, args, kwargs):
                        first_part = sum(len(items) for _, items in parts)
                        parts.append((request, self._enqueue(request, deadline, first_part)))
            pooled = await self._collect([w for _, items in parts for w in items])
        except BaseException:
            self._cancel([w for _, items in parts for w in items])
            raise
        outputs: list[RequestOutput[Any]] = []
        start = 0
        for request, _ in parts:
            outputs += self.tasks.finish(request, pooled[start:start + len(request.prompts)], self._request_ids,
                                         head=self.engine.apply_head)
            start += len(request.prompts)
        return outputs

    async def _prepare_slices(self, task: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Prepare a large per-input request slice by slice on the bulk lane (``first_index`` keeps messages right)."""
        items = normalize_prompts(args[0])
        params = params_list(args[1] if len(args) > 1 else kwargs.pop("pooling_params", None), len(items))
        for start, end in slices(items, len(items), SLICE_CHARS):
            yield await self._bulk.run(Tasks.prepare, task, items[start:end], params[start:end],
                                       first_index=start, **kwargs)

    async def tokenize_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text, without the length check (for ``/tokenize``)."""
        if self._closing:
            raise EngineClosedError("The server is shutting down")
        return await self._express.run(lambda tasks: tasks.processor.tokenize(text, add_special_tokens))

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        processor = self.tasks.processor
        bad = [t for t in token_ids if t < 0 or t >= processor.vocab_size]
        if bad:
            raise ValueError(f"Token id {bad[0]} is outside the vocabulary (size {processor.vocab_size})")
        return await self._express.run(lambda tasks: tasks.processor.tokenizer.decode(list(token_ids)))

    def _enqueue(self, request: PreparedRequest, deadline: float, first_part: int) -> list[_Work]:
        """Queue a prepared request now: whole if it fits one batch, else in parts of at most
        ``max_bulk_batch_tokens`` (at least one prompt each), so that a large request interleaves with small
        ones instead of holding them up.

        ``first_part``: how many parts of the same request are queued already. The token cap
        (``max_queued_tokens``, now that the request's tokens are known) and the deadline apply to a
        request's first part; an admitted request is not refused half-way.
        """
        loop = asyncio.get_running_loop()
        prompts, options = request.prompts, request.options
        bounds: list[tuple[int, int, int]] = []
        start, tokens = 0, 0
        whole = first_part == 0 and sum(len(p) for p in prompts) <= self.max_batch_tokens
        part_tokens = self.max_batch_tokens if whole else self.max_bulk_batch_tokens
        for i, prompt in enumerate(prompts):
            if i > start and tokens + len(prompt) > part_tokens:
                bounds.append((start, i, tokens))
                start, tokens = i, 0
            tokens += len(prompt)
        if start < len(prompts):
            bounds.append((start, len(prompts), tokens))
        items = [_Work(prompts[a:b], options[a:b], loop.create_future(), n,
                       deadline if first_part + k == 0 else math.inf, first_part + k)
                 for k, (a, b, n) in enumerate(bounds)]
        total = sum(w.num_tokens for w in items)
        with self._cond:
            if self._closing:
                raise EngineClosedError("The server is shutting down")
            if first_part == 0 and self._queued_tokens and self._queued_tokens + total > self.max_queued_tokens:
                raise QueueFullError(
                    f"The server is overloaded: {self._queued_tokens} tokens are queued and this request has "
                    f"{total} (limit {self.max_queued_tokens}); retry later",
                    int(min(60, max(1, math.ceil(self.expected_wait())))),
                )
            self._queue.extend(items)
            self._queued_tokens += total
            self._queued_first_tokens += sum(w.num_tokens for w in items if w.part == 0)
            queued = self._queued_tokens
            self._cond.notify_all()
        if self.stats is not None:
            self.stats.set_queued_tokens(queued)
        return items

    @staticmethod
    async def _collect(items: list[_Work]) -> list[np.ndarray]:
        results = await asyncio.gather(*(w.future for w in items))
        return [value for chunk in results for value in chunk]

    @staticmethod
    def _cancel(items: list[_Work]) -> None:
        """Drop a failed or abandoned request's queued slices (the worker skips cancelled ones)."""
        for w in items:
            if not w.future.done():
                w.future.cancel()
            else:
                w.future.cancelled() or w.future.exception()  # mark retrieved: no "never retrieved" noise

    # -- the model worker thread ---------------------------------------------------

    def _may_take(self, index: int) -> bool:
        """Whether worker ``index`` may take a batch now: the first whenever work is queued, the others only
        while a batch runs and at least ``spill_tokens`` wait (or the engine is draining)."""
        if not self._queue:
            return False
        return index == 0 or self._closing or (self._running > 0 and self._queued_tokens >= self.spill_tokens)

    def _next_batch(self, index: int = 0) -> tuple[list[_Work], int] | None:
        """Worker ``index``'s next batch (counted as running) and the CPU threads to run it on, or None once
        the engine is closed and drained."""
        with self._cond:
            while True:
                while not self._may_take(index):
                    if self._closing and not self._queue:
                        return None
                    self._cond.wait()
                # Wait batch_wait after the latest arrival (a burst keeps the window open), and while
                # requests the server already holds are still being tokenized; never past max_batch_wait
                # after the oldest request, nor once the token budget is full.
                while self._queue and not self._closing and self._queued_tokens < self.max_batch_tokens:
                    deadline = self._queue[0].enqueued + self.max_batch_wait_s
                    if self._incoming == 0:
                        deadline = min(deadline, self._queue[-1].enqueued + self.batch_wait_s)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._may_take(index):  # (another worker may have taken the work meanwhile)
                    break
            # Every request's first parts before any later part (then oldest first): a small request is
            # served next even behind a large one, and large requests take turns. Later parts fill a call
            # only up to the bulk budget, so that the call a newcomer waits for stays short.
            order = sorted(self._queue, key=lambda w: (w.part, w.enqueued))
            batch: list[_Work] = []
            taken: set[int] = set()
            tokens = 0
            for item in order:
                budget = self.max_batch_tokens if item.part == 0 else self.max_bulk_batch_tokens
                if taken and tokens + item.num_tokens > budget:
                    break
                taken.add(id(item))
                self._queued_tokens -= item.num_tokens
                if item.part == 0:
                    self._queued_first_tokens -= item.num_tokens
                if not self._skipped(item):
                    batch.append(item)
                    tokens += item.num_tokens
            self._queue = [w for w in self._queue if id(w) not in taken]
            queued = self._queued_tokens
            self._running += 1
            # This batch's share of the CPU threads: all of them while it runs alone and no other worker is
            # about to join (a thread team cannot shrink mid-call, and one joining later would crowd it).
            company = self._running > 1 or (self.num_workers > 1 and self._queued_tokens >= self.spill_tokens)
            threads = max(1, self._cpu_threads // self.num_workers) if company else self._cpu_threads
            self._cond.notify_all()  # another worker may join now
        if self.stats is not None:
            self.stats.set_queued_tokens(queued)
        return batch, threads

    def _skipped(self, item: _Work) -> bool:
        """True for work that must not run: its caller went away, or it waited past its deadline."""
        if item.future.cancelled():
            reason = "cancelled"
        elif time.monotonic() > item.deadline:
            reason = "expired"
            self._finish(item, None, QueueTimeoutError(
                f"The request waited more than {DEADLINE_FACTOR * self.max_queue_wait:g} s in the queue and was "
                "not run; retry later"))
        else:
            return False
        if self.stats is not None:
            self.stats.add_skipped_tokens(reason, item.num_tokens)
        return True

    def _execute(self, prompts: list[TokenizedPrompt], options: list[HeadOptions]) -> list[np.ndarray]:
        return self.engine.execute(prompts, options, use_tqdm=False)

    def _run_batch(self, batch: list[_Work]) -> None:
        now = time.monotonic()
        running = max(1, self._running)  # batches running beside this one share the machine
        live = [w for w in batch if not w.future.cancelled()]
        if self.stats is not None:
            for w in batch:
                if w.future.cancelled():
                    self.stats.add_skipped_tokens("cancelled", w.num_tokens)
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
            rate = running * num_tokens / elapsed  # the whole model's speed, not this worker's share
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

    def _worker_loop(self, index: int = 0) -> None:
        if index == 0:
            logger.info("Model worker(s) started: %d (batch wait %.1f ms, batch budget %d tokens, %d for large "
                        "requests' parts, queue limits %d tokens and %gs of expected wait, %d CPU threads shared "
                        "by the batches running, a second batch while %d tokens wait)", self.num_workers,
                        self.batch_wait_s * 1000, self.max_batch_tokens, self.max_bulk_batch_tokens,
                        self.max_queued_tokens, self.max_queue_wait, self._cpu_threads, self.spill_tokens)
        current = None
        while True:
            taken = self._next_batch(index)
            if taken is None:
                break
            batch, threads = taken
            try:
                if self.num_workers > 1 and threads != current:
                    use_cpu_threads(threads)
                    current = threads
                self._run_batch(batch)
            except BaseException as exc:  # never die with requests outstanding
                logger.exception("Model worker error")
                for w in batch:
                    self._finish(w, None, EngineExecutionError(f"Internal error: {exc}"))
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
        logger.info("Model worker stopped")
