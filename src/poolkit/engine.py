"""The engine core (tokenize → schedule → run → pool) and the offline ``LLM`` facade."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import ModelConfig, PoolerConfig, TaskOption
from .inputs import InputProcessor, Prompt, TokenizedPrompt, normalize_prompts
from .loader import CheckpointFiles, build_model_config, load_dense, load_hf_model, load_tokenizer, resolve_model_path
from .outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from .params import PoolingParams
from .pooling import HeadOptions, Pooler, cosine_scores
from .runner import ModelRunner, resolve_compile, resolve_packing, select_device, select_dtype
from .scheduler import SchedulerConfig, schedule

logger = logging.getLogger(__name__)

# Inputs longer than this are tokenized chunk by chunk on a helper thread,
# overlapping the model's work on the previous chunk.
TOKENIZE_CHUNK = 4096


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


class PoolingEngine:
    """Runs already-tokenized prompts through the model in token-budget batches.

    Thread-compatible, not thread-safe: one caller at a time (the offline API
    or the server's single model worker).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        processor: InputProcessor,
        runner: ModelRunner,
        pooler: Pooler,
        scheduler_config: SchedulerConfig,
    ) -> None:
        self.model_config = model_config
        self.processor = processor
        self.runner = runner
        self.pooler = pooler
        self.scheduler_config = scheduler_config

    def head_options(self, method: str, params: PoolingParams) -> HeadOptions:
        """Validate ``params`` for ``method`` and merge them over the pooler defaults."""
        params.verify(method, self.model_config)
        return self.pooler.options(params)

    @torch.inference_mode()
    def execute(
        self,
        prompts: Sequence[TokenizedPrompt],
        options: Sequence[HeadOptions],
        use_tqdm: bool = False,
        progress: tqdm | None = None,
    ) -> list[torch.Tensor]:
        """Pooled outputs in input order (CPU float32 tensors).

        ``progress``: an open tqdm bar to advance instead of a bar of this call's own.
        """
        results: list[torch.Tensor | None] = [None] * len(prompts)
        padded_length = None if self.runner.packing else self.runner.padded_length
        batches = schedule([len(p) for p in prompts], self.scheduler_config, padded_length)
        with contextlib.nullcontext(progress) if progress is not None else _progress(len(prompts), use_tqdm) as bar:
            for batch in batches:
                members = [prompts[i] for i in batch]
                states, lengths = self.runner.execute(members)
                pooled = self.pooler(states, lengths, [p.input_ids for p in members], [options[i] for i in batch])
                for index, value in zip(batch, pooled):
                    results[index] = value
                bar.update(len(batch))
        return results  # type: ignore[return-value]


def _progress(total: int, use_tqdm: bool) -> tqdm:
    """A prompt progress bar; tqdm hides it by itself when stderr is not a terminal."""
    return tqdm(total=total, desc="Processed prompts", unit="prompt", disable=None if use_tqdm else True)


def _as_params_list(pooling_params: PoolingParams | Sequence[PoolingParams] | None, n: int) -> list[PoolingParams]:
    if pooling_params is None:
        return [PoolingParams()] * n
    if isinstance(pooling_params, PoolingParams):
        return [pooling_params] * n
    params = list(pooling_params)
    if len(params) != n:
        raise ValueError(f"Got {len(params)} pooling_params for {n} prompts; pass one, or one per prompt")
    return params


class LLM:
    """Offline pooling-model API, mirroring ``vllm.LLM`` for pooling tasks.

    Args:
        model: a local checkpoint directory or a hub id; ``None`` is the bundled
            default (sentence-transformers/all-MiniLM-L6-v2).
        task: ``auto`` (from the architecture), ``embed``, ``classify``,
            ``score``, ``reward`` or ``encode``.
        override_pooler_config: PoolerConfig, dict or JSON; beats every default.
        hf_overrides: merged into config.json (e.g. ``{"is_matryoshka": True}``).
        trust_remote_code: passed to transformers.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` …
        max_model_len: lower the length limit (tokens).
        served_model_name: the name used in messages and by the server.
        max_num_batched_tokens: tokens per forward pass (padded tokens for padded batches)
            (env ``POOLKIT_MAX_BATCHED_TOKENS``).
        max_num_seqs: rows per forward pass (env ``POOLKIT_MAX_NUM_SEQS``).
        compile: ``torch.compile`` the model per length bucket: ``on``, ``off``
            or ``auto`` (on for bf16 on CPUs with native bf16); default from env
            ``POOLKIT_COMPILE``, else ``off``. Compiled graphs are cached on disk
            by inductor, so later starts pay less compile time.
        packing: padding-free batches (all sequences in one row, attention
            kept per sequence): ``auto`` (where the model supports it), ``on``
            (error where it does not) or ``off``; env ``POOLKIT_PACKING``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        task: TaskOption = "auto",
        override_pooler_config: PoolerConfig | dict[str, Any] | str | None = None,
        hf_overrides: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        max_model_len: int | None = None,
        served_model_name: str | None = None,
        max_num_batched_tokens: int | None = None,
        max_num_seqs: int | None = None,
        compile: bool | str | None = None,
        packing: bool | str | None = None,
    ) -> None:
        model_path = resolve_model_path(model)
        tokenizer = load_tokenizer(model_path, trust_remote_code)
        tokenizer_limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
        self.model_config = build_model_config(
            str(model) if model is not None else None,
            task=task,
            override_pooler_config=override_pooler_config,
            hf_overrides=hf_overrides,
            trust_remote_code=trust_remote_code,
            max_model_len=max_model_len,
            served_model_name=served_model_name,
            tokenizer_max_length=tokenizer_limit,
        )
        self.device = select_device(device)
        self.dtype = select_dtype(dtype, self.device)
        hf_model = load_hf_model(self.model_config, self.dtype)
        score_head = None
        if self.model_config.head == "sequence" and isinstance(getattr(hf_model, "score", None), torch.nn.Linear):
            # Decoder classifiers: run the backbone and pool ourselves (LAST by default),
            # so the pooler config applies and padding never leaks into the result.
            score_head = hf_model.score
            hf_model = getattr(hf_model, hf_model.base_model_prefix)
            self.model_config.head = "decoder_score"
        files = CheckpointFiles(self.model_config.model_path)
        dense = None
        if self.model_config.dense:
            dense = torch.nn.Sequential(*(load_dense(files, spec) for spec in self.model_config.dense))
        pooler = Pooler(self.model_config, dense=dense, score_head=score_head).to(self.device)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        runner = ModelRunner(
            hf_model,
            self.device,
            self.dtype,
            max_model_len=self.model_config.max_model_len,
            pad_token_id=pad_id,
            compile_model=resolve_compile(compile, self.device, self.dtype),
            packing=resolve_packing(packing),
        )
        scheduler_config = SchedulerConfig(
            max_num_batched_tokens=max(
                max_num_batched_tokens or _env_int("POOLKIT_MAX_BATCHED_TOKENS", 8192), self.model_config.max_model_len
            ),
            max_num_seqs=max_num_seqs or _env_int("POOLKIT_MAX_NUM_SEQS", 256),
        )
        self.engine = PoolingEngine(
            self.model_config, InputProcessor(tokenizer, self.model_config), runner, pooler, scheduler_config
        )
        self._request_counter = itertools.count()
        logger.info("Loaded %r", self)

    def __repr__(self) -> str:
        mc = self.model_config
        return (
            f"LLM(model={mc.served_model_name!r}, task={mc.task!r}, architecture={mc.architecture}, "
            f"pooler={mc.pooler_config!r}, max_model_len={mc.max_model_len}, device={self.device}, dtype={self.dtype}, "
            f"packing={self.engine.runner.packing}, compiled={self.engine.runner.compiled})"
        )

    @property
    def tokenizer(self) -> Any:
        return self.engine.processor.tokenizer

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    # -- public methods ---------------------------------------------------

    def encode(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[PoolingRequestOutput]:
        """The pooler's raw output per prompt (``outputs.data``, a tensor)."""
        tokens, results = self._run("encode", prompts, pooling_params, truncate_prompt_tokens, use_tqdm)
        return [PoolingRequestOutput(self._next_id(), t.input_ids, PoolingOutput(r)) for t, r in zip(tokens, results)]

    def reward(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[PoolingRequestOutput]:
        """Per-token (ALL) or per-step (STEP) rewards of a reward model."""
        self._require("reward")
        return self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm)

    def embed(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding vector per prompt (``outputs.embedding``, a list of floats)."""
        tokens, results = self._run("embed", prompts, pooling_params, truncate_prompt_tokens, use_tqdm)
        return [
            EmbeddingRequestOutput(self._next_id(), t.input_ids, EmbeddingOutput(r.tolist()))
            for t, r in zip(tokens, results)
        ]

    def classify(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt (``outputs.probs``)."""
        tokens, results = self._run("classify", prompts, pooling_params, truncate_prompt_tokens, use_tqdm)
        return [
            ClassificationRequestOutput(self._next_id(), t.input_ids, ClassificationOutput(r.tolist()))
            for t, r in zip(tokens, results)
        ]

    def score(
        self,
        data_1: Prompt | Sequence[Prompt],
        data_2: Prompt | Sequence[Prompt],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | None = None,
    ) -> list[ScoringRequestOutput]:
        """Similarity of text pairs: 1:1, 1:N (one query, many documents) or N:N (zipped).

        Cross-encoders score each pair in one forward pass; embedding models
        use the cosine of the two embeddings.
        """
        self._require("score")
        left, right = pair_up(normalize_prompts(data_1), normalize_prompts(data_2))
        params = pooling_params or PoolingParams()
        if self.model_config.task == "embed":
            unique = list({prompt_key(p): p for p in (*left, *right)}.values())
            tokens = self.engine.processor.encode(unique, truncate_prompt_tokens)
            options = [self.engine.head_options("embed", PoolingParams())] * len(unique)
            vectors = dict(zip((prompt_key(p) for p in unique), zip(tokens, self.engine.execute(tokens, options, use_tqdm))))
            pairs = [(vectors[prompt_key(a)], vectors[prompt_key(b)]) for a, b in zip(left, right)]
            scores = cosine_scores([a[1] for a, _ in pairs], [b[1] for _, b in pairs])
            return [
                ScoringRequestOutput(self._next_id(), a[0].input_ids + b[0].input_ids, ScoringOutput(s))
                for (a, b), s in zip(pairs, scores)
            ]
        tokens = self.engine.processor.encode_pairs(left, right, truncate_prompt_tokens)
        options = [self.engine.head_options("score", params)] * len(tokens)
        results = self.engine.execute(tokens, options, use_tqdm)
        return [
            ScoringRequestOutput(self._next_id(), t.input_ids, ScoringOutput(float(r.reshape(-1)[0])))
            for t, r in zip(tokens, results)
        ]

    # -- internals --------------------------------------------------------

    def _next_id(self) -> str:
        return str(next(self._request_counter))

    def _require(self, method: str) -> None:
        self.model_config.require(method, caller=f"LLM.{method}()")

    def _run(
        self,
        method: str,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None,
        truncate_prompt_tokens: int | None,
        use_tqdm: bool,
    ) -> tuple[list[TokenizedPrompt], list[torch.Tensor]]:
        self._require(method)
        items = normalize_prompts(prompts)
        params = _as_params_list(pooling_params, len(items))
        options = [self.engine.head_options(method, p) for p in params]
        if not items:
            return [], []
        if len(items) <= TOKENIZE_CHUNK:
            tokens = self.engine.processor.encode(items, truncate_prompt_tokens)
            return tokens, self.engine.execute(tokens, options, use_tqdm)
        return self._run_pipelined(items, options, truncate_prompt_tokens, use_tqdm)

    def _run_pipelined(
        self, items: list[Prompt], options: list[HeadOptions], truncate_prompt_tokens: int | None, use_tqdm: bool
    ) -> tuple[list[TokenizedPrompt], list[torch.Tensor]]:
        """Tokenize chunk k+1 on a helper thread while the model runs chunk k."""
        encode = self.engine.processor.encode
        chunk_starts = range(0, len(items), TOKENIZE_CHUNK)
        tokens: list[TokenizedPrompt] = []
        results: list[torch.Tensor] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolkit-tokenize") as pool, \
                _progress(len(items), use_tqdm) as bar:
            pending = pool.submit(encode, items[:TOKENIZE_CHUNK], truncate_prompt_tokens, 0)
            for start in chunk_starts:
                chunk = pending.result()
                following = start + TOKENIZE_CHUNK
                if following < len(items):
                    pending = pool.submit(
                        encode, items[following : following + TOKENIZE_CHUNK], truncate_prompt_tokens, following
                    )
                results += self.engine.execute(chunk, options[start : start + len(chunk)], progress=bar)
                tokens += chunk
        return tokens, results


def prompt_key(prompt: Prompt) -> Any:
    """A hashable identity for a prompt (deduplicates the texts of 1:N scoring)."""
    return prompt if isinstance(prompt, str) else tuple(prompt)


def pair_up(left: list[Prompt], right: list[Prompt]) -> tuple[list[Prompt], list[Prompt]]:
    """Expand 1:1, 1:N and N:N inputs into two equally long lists."""
    if not right and len(left) <= 1:
        return [], []
    if len(left) == 1 and len(right) >= 1:
        return left * len(right), right
    if len(left) == len(right):
        return left, right
    raise ValueError(
        f"score() takes 1:1, 1:N or N:N inputs; got {len(left)} first and {len(right)} second prompts"
    )
