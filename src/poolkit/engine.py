"""The engine core (schedule → run → pool) and the offline ``LLM`` facade over the task layer."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import ModelConfig, SparseSpec, TokenClassifierSpec
from .inputs import InputProcessor, Prompt, TokenizedPrompt, normalize_prompts, slices
from .loader import CheckpointFiles, load_dense, load_hf_model, load_model_config_and_tokenizer
from .outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringRequestOutput,
)
from .params import HeadOptions, PoolingParams
from .pooling import Pooler
from .runner import ModelRunner, resolve_compile, select_device, select_dtype
from .scheduler import SchedulerConfig, schedule
from .settings import EngineArgs, describe, docstring, setting_fields
from .tasks import PreparedRequest, Tasks, counter_ids
from .tasks.base import PoolingParamsArg, params_list
from .token_heads import (
    MultiVectorHead,
    SparseHead,
    check_masked_lm_split,
    linear_from_state,
    masked_lm_head,
    skiplist_ids,
    special_token_ids,
)
from .towers import TowerRunner

logger = logging.getLogger(__name__)

# Inputs with more prompts or characters than this are tokenized slice by slice on a helper
# thread, overlapping the model's work on the previous slice.
TOKENIZE_SLICE_PROMPTS = 4096
TOKENIZE_SLICE_CHARS = 1 << 20
DEFAULT_BATCHED_TOKENS = 8192


class PoolingEngine:
    """Runs already-tokenized prompts through the model in token-budget batches.

    Thread-compatible, not thread-safe: one caller at a time (the offline API
    or the server's single model worker).
    """

    def __init__(self, model_config: ModelConfig, runner: ModelRunner | TowerRunner, pooler: Pooler,
                 scheduler_config: SchedulerConfig) -> None:
        self.model_config = model_config
        self.runner = runner
        self.pooler = pooler
        self.scheduler_config = scheduler_config

    @torch.inference_mode()
    def execute(
        self,
        prompts: Sequence[TokenizedPrompt],
        options: Sequence[HeadOptions],
        use_tqdm: bool = False,
        progress: tqdm | None = None,
    ) -> list[np.ndarray]:
        """Pooled outputs in input order, as float32 NumPy arrays.

        ``progress``: an open tqdm bar to advance instead of a bar of this call's own.
        """
        results: list[np.ndarray | None] = [None] * len(prompts)
        padded_length = None if self.runner.packing else self.runner.padded_length
        run = [i for i, opt in enumerate(options) if not self.pooler.model_free(opt)]
        batches = [[run[j] for j in batch] for batch in
                   schedule([len(prompts[i]) for i in run], self.scheduler_config, padded_length)]
        with contextlib.nullcontext(progress) if progress is not None else _progress(len(prompts), use_tqdm) as bar:
            for index in sorted(set(range(len(prompts))) - set(run)):  # no forward pass for these
                results[index] = self.pooler.without_model(prompts[index], options[index]).numpy()
            bar.update(len(prompts) - len(run))
            for batch in batches:
                members = [prompts[i] for i in batch]
                states, lengths = self.runner.execute(members)
                pooled = self.pooler(states, lengths, members, [options[i] for i in batch])
                for index, value in zip(batch, pooled):
                    results[index] = value.numpy()
                bar.update(len(batch))
        return results  # type: ignore[return-value]


    @torch.inference_mode()
    def apply_head(self, vectors: np.ndarray, options: Sequence[HeadOptions]) -> list[np.ndarray]:
        """The pooler's head (Dense, Matryoshka, normalize) on already pooled ``(n, D)`` vectors: the merged
        vectors of chunked long inputs."""
        pooled = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.runner.device)
        return [row.numpy() for row in self.pooler.head(pooled, options)]


def cpu_threads() -> int:
    """torch's CPU threads for the calling thread's forward passes."""
    return torch.get_num_threads()


def use_cpu_threads(threads: int) -> None:
    """Run the calling thread's forward passes on ``threads`` CPU threads.

    The OpenMP team size is per thread, but a thread reads the process default the first time it asks (lazily):
    ask first, then set. ``torch.set_num_threads`` also sets that default, so a thread that first asks later
    starts with the last value set here.
    """
    torch.get_num_threads()
    torch.set_num_threads(threads)


def _progress(total: int, use_tqdm: bool) -> tqdm:
    """A prompt progress bar; tqdm hides it by itself when stderr is not a terminal."""
    return tqdm(total=total, desc="Processed prompts", unit="prompt", disable=None if use_tqdm else True)


def build_engine(model_config: ModelConfig, tokenizer: Any, args: EngineArgs) -> PoolingEngine:
    """Load the weights and build the runner, pooler and scheduler for ``model_config``."""
    device = select_device(args.device)
    dtype = select_dtype(args.dtype, device, args.cpu_dtype)
    hf_model = load_hf_model(model_config, dtype)
    score_head = None
    if model_config.classifier_from_token is not None:
        score_head = score_head_from_tokens(hf_model, tokenizer, model_config.classifier_from_token)
        hf_model = getattr(hf_model, hf_model.base_model_prefix)
        model_config.head = "decoder_score"
    elif model_config.head == "sequence" and isinstance(getattr(hf_model, "score", None), torch.nn.Linear):
        # Decoder classifiers: run the backbone and pool ourselves (LAST by default),
        # so the pooler config applies and padding never leaks into the result.
        score_head = hf_model.score
        hf_model = getattr(hf_model, hf_model.base_model_prefix)
        model_config.head = "decoder_score"
    files = CheckpointFiles(model_config.model_path)
    mlm_head = None
    if model_config.head == "masked_lm":
        # SPLADE: run the backbone (packed like any encoder); the sparse head applies the MLM head per token slice.
        mlm_head = masked_lm_head(hf_model)
        check_masked_lm_split(hf_model, mlm_head)
        hf_model = hf_model.base_model
        model_config.head = "none"
    dense = None
    if model_config.dense:
        dense = torch.nn.Sequential(*(load_dense(files, spec) for spec in model_config.dense))
    sparse_head, multi_vector_head = build_token_heads(model_config, files, tokenizer, mlm_head)
    pooler = Pooler(model_config, dense=dense, score_head=score_head, sparse_head=sparse_head,
                    multi_vector_head=multi_vector_head).to(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    runner: ModelRunner | TowerRunner
    if model_config.tower is not None:
        runner = TowerRunner(hf_model, device, dtype, tokenizer, model_config, cpu_prepack=args.cpu_prepack)
    else:
        runner = ModelRunner(
            hf_model,
            device,
            dtype,
            max_model_len=model_config.max_model_len,
            pad_token_id=pad_id,
            compile_model=resolve_compile(args.compile, device, dtype),
            packing=args.packing,
            cpu_prepack=args.cpu_prepack,
        )
        fit_position_offset(model_config, runner.position_offset, explicit=args.max_model_len is not None)
    budget = args.max_num_batched_tokens
    if budget is None:
        budget = max(DEFAULT_BATCHED_TOKENS, model_config.max_model_len)
    elif budget < model_config.max_model_len:
        raise ValueError(
            f"max_num_batched_tokens={budget} is smaller than max_model_len={model_config.max_model_len}: "
            "the longest input would not fit in a batch. Raise max_num_batched_tokens or lower max_model_len."
        )
    engine = PoolingEngine(model_config, runner, pooler, SchedulerConfig(budget, args.max_num_seqs))
    check_runs_on_text(engine, tokenizer)
    return engine


def build_token_heads(model_config: ModelConfig, files: CheckpointFiles, tokenizer: Any,
                      mlm_head: torch.nn.Module | None) -> tuple[SparseHead | None, MultiVectorHead | None]:
    """The sparse and multi-vector heads the model's outputs need (SPLADE's MLM head, BGE-M3's head files,
    a MultiVectorEncoder's Dense modules)."""
    sparse_head = multi_vector_head = None
    if model_config.sparse is not None:
        if model_config.sparse.source == "splade":
            if mlm_head is None:
                raise ValueError("SPLADE pooling needs the model's masked-LM head")
            prefix, suffix = InputProcessor(tokenizer, model_config).special_template
            sparse_head = SparseHead(model_config.sparse, mlm_head, static_weights=load_static_weights(
                model_config.sparse, model_config.sparse.vocab_size), special_template=(len(prefix), len(suffix)))
        else:
            sparse_file = files.get("sparse_linear.pt")
            if sparse_file is None:
                raise FileNotFoundError(f"{model_config.model_path} has no sparse_linear.pt")
            sparse_head = SparseHead(model_config.sparse, linear_from_state(sparse_file), special_token_ids(tokenizer))
    spec = model_config.multi_vector
    if spec is not None:
        projection: torch.nn.Module | None = None
        if spec.colbert_linear:
            colbert_file = files.get("colbert_linear.pt")
            if colbert_file is None:
                raise FileNotFoundError(f"{model_config.model_path} has no colbert_linear.pt")
            projection = linear_from_state(colbert_file)
        elif spec.dense:
            projection = torch.nn.Sequential(*(load_dense(files, d) for d in spec.dense))
        multi_vector_head = MultiVectorHead(spec, projection, skiplist_ids(tokenizer, spec.skiplist_words))
    return sparse_head, multi_vector_head


def load_static_weights(spec: SparseSpec, vocab_size: int) -> torch.Tensor | None:
    """An inference-free sparse encoder's per-token weights (its ``SparseStaticEmbedding`` folder)."""
    if spec.static_dir is None:
        return None
    from safetensors.torch import load_file

    weights_file = Path(spec.static_dir) / "model.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"No weights for the SparseStaticEmbedding module in {spec.static_dir}")
    weight = load_file(str(weights_file))["weight"].float()
    if weight.shape != (vocab_size,):
        raise ValueError(f"SparseStaticEmbedding in {spec.static_dir} has {tuple(weight.shape)} weights for a "
                         f"{vocab_size}-token vocabulary: it does not belong to this model's tokenizer")
    return weight


def fit_position_offset(model_config: ModelConfig, offset: int, explicit: bool) -> None:
    """RoBERTa-style position ids start at ``offset``: the last ``offset`` positions are unusable. The loader
    knows the usual model types; this catches the rest (remote-code XLM-R variants) from the loaded model."""
    positions = getattr(model_config.hf_config, "max_position_embeddings", None)
    if not positions or not offset or model_config.max_model_len <= positions - offset:
        return
    if explicit:
        raise ValueError(f"max_model_len={model_config.max_model_len} exceeds the model's {positions - offset} usable "
                         f"positions ({positions} position embeddings, counted from {offset})")
    logger.info("max_model_len lowered to %d: position ids start at %d", positions - offset, offset)
    model_config.max_model_len = positions - offset


def score_head_from_tokens(causal_lm: torch.nn.Module, tokenizer: Any, spec: TokenClassifierSpec) -> torch.nn.Linear:
    """A bias-free ``Linear`` from the LM head's rows for ``spec.tokens`` (vLLM's ``classifier_from_token``)."""
    ids = []
    for token in spec.tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ValueError(f"classifier_from_token: {token!r} is not a token of this model's vocabulary")
        ids.append(token_id)
    rows = causal_lm.get_output_embeddings().weight.detach().float()[ids]
    weight = rows[1:2] - rows[0:1] if spec.method == "from_2_way_softmax" else rows
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head.eval()


def check_runs_on_text(engine: PoolingEngine, tokenizer: Any) -> None:
    """One short forward pass at load, so a model that loads but cannot run on text alone (an encoder-decoder
    without its encoder class, a vision-language model) fails here rather than on every request."""
    text_ids = tokenizer("poolkit load check", add_special_tokens=True)["input_ids"]
    try:
        engine.execute([TokenizedPrompt(list(text_ids))], [HeadOptions(normalize=False, activation=False, dimensions=None)])
    except Exception as exc:
        mc = engine.model_config
        raise ValueError(
            f"{mc.architecture} loaded but a forward pass on text failed ({type(exc).__name__}: {exc}); poolkit "
            f"serves text models through transformers' {type(engine.runner.model).__name__}, and this checkpoint "
            "does not run that way (it may need images, a decoder input, or an architecture poolkit does not "
            "support yet)"
        ) from exc


class LLM:
    """Offline pooling-model API, mirroring ``vllm.LLM`` for pooling tasks.

    ``LLM(model=None, **settings)``: ``model`` is a local checkpoint directory
    or a hub id (``None``: the bundled all-MiniLM-L6-v2); every other keyword is
    a setting of :class:`~poolkit.settings.EngineArgs` (unset ones come from
    ``POOLKIT_*`` variables, else their defaults; ``repr(llm)`` shows them).

    Every method takes one prompt or a list (texts or token-id lists), optional
    ``pooling_params`` (one, or one per prompt) and ``truncate_prompt_tokens``
    (``-1``: the model's limit), and returns one output per prompt in input
    order. Outputs carry ``prompt_token_ids`` and ``num_input_tokens`` (the
    length before truncation).
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        self._load(EngineArgs.resolve(model=os.fspath(model) if model is not None else None, **kwargs))

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLM:
        """An engine for already resolved settings (e.g. parsed command-line flags)."""
        llm = cls.__new__(cls)
        llm._load(args)
        return llm

    def _load(self, args: EngineArgs) -> None:
        self.args = args
        self.model_config, tokenizer = load_model_config_and_tokenizer(self.args)
        self.engine = build_engine(self.model_config, tokenizer, self.args)
        self.tasks = Tasks(self.model_config, InputProcessor(tokenizer, self.model_config))
        if "image" in self.model_config.modalities:
            _ = self.tasks.processor.image_processor  # a missing image processor is a load error, not a request's
        self._request_ids = counter_ids()
        logger.info("Loaded %r", self)

    @property
    def device(self) -> torch.device:
        return self.engine.runner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.runner.dtype

    def __repr__(self) -> str:
        mc = self.model_config
        runner = self.engine.runner
        padded = f" ({runner.padded_reason})" if not runner.packing and runner.padded_reason else ""
        head = ""
        if mc.classifier_from_token is not None:
            head = f"classifier_from_token={mc.classifier_from_token.tokens} ({mc.classifier_from_token.method}), "
        # the pooler config describes dense embeddings; sparse and multi-vector heads are described below
        pooler = f"pooler={mc.pooler_config!r}, " if mc.default_output == "dense" else ""
        if mc.tower is not None:
            head += f"modalities={list(mc.modalities)}, "
        if mc.outputs != ("dense",):
            head += f"outputs={list(mc.outputs)}, "
            if mc.sparse is not None:
                head += f"sparse={mc.sparse.source} ({mc.sparse.pooling_strategy}, {mc.sparse.activation}), "
            if mc.multi_vector is not None:
                head += f"multi_vector=dim {mc.multi_vector.dim} ({mc.multi_vector.similarity}), "
        return (
            f"LLM(model={mc.served_model_name!r}, task={mc.task!r}, architecture={mc.architecture}, "
            f"{head}{pooler}max_model_len={mc.max_model_len}, device={runner.device}, "
            f"dtype={runner.dtype}, packing={runner.packing}{padded}, compiled={runner.compiled}, "
            f"max_num_batched_tokens={self.engine.scheduler_config.max_num_batched_tokens}, "
            f"settings=EngineArgs({describe(self.args, only_changed=True)}))"
        )

    @property
    def tokenizer(self) -> Any:
        return self.tasks.processor.tokenizer

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    # -- public methods ---------------------------------------------------

    def encode(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParamsArg = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        enable_chunked_processing: bool | None = None,
    ) -> list[PoolingRequestOutput]:
        """The pooler's raw output per prompt (``outputs.data``, a tensor); long inputs as in :meth:`embed`."""
        return self._run("encode", prompts, pooling_params, use_tqdm=use_tqdm,
                         truncate_prompt_tokens=truncate_prompt_tokens,
                         enable_chunked_processing=enable_chunked_processing)

    def reward(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParamsArg = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[PoolingRequestOutput]:
        """Per-token (ALL) or per-step (STEP) rewards of a reward model."""
        return self._run("reward", prompts, pooling_params, use_tqdm=use_tqdm,
                         truncate_prompt_tokens=truncate_prompt_tokens)

    def embed(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParamsArg = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        prompt_name: str | None = None,
        prompt: str | None = None,
        enable_chunked_processing: bool | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding vector per prompt (``outputs.embedding``, a list of floats; ``outputs.numpy()``).

        ``prompt_name`` / ``prompt``: a Sentence-Transformers prompt put before every text (a name from
        the model's ``config_sentence_transformers.json``, or the text itself); without either, the
        model's ``default_prompt_name`` applies, as in ``SentenceTransformer.encode``.
        ``enable_chunked_processing``: embed inputs longer than the model in chunks whose vectors are
        merged (default: the pooler config's ``enable_chunked_processing``; see ``poolkit.tasks.chunking``).
        """
        return self._run("embed", prompts, pooling_params, use_tqdm=use_tqdm,
                         truncate_prompt_tokens=truncate_prompt_tokens, prompt_name=prompt_name, prompt=prompt,
                         enable_chunked_processing=enable_chunked_processing)

    def classify(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParamsArg = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt (``outputs.probs``) and the best ``outputs.label``."""
        return self._run("classify", prompts, pooling_params, use_tqdm=use_tqdm,
                         truncate_prompt_tokens=truncate_prompt_tokens)

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
        use the cosine of the two embeddings (``pooling_params`` apply to them,
        e.g. Matryoshka ``dimensions``).
        """
        request = self.tasks.prepare("score", data_1, data_2, pooling_params,
                                     truncate_prompt_tokens=truncate_prompt_tokens)
        return self.execute(request, use_tqdm=use_tqdm)  # type: ignore[return-value]

    def prepare(self, task: str, *args: Any, **kwargs: Any) -> PreparedRequest:
        """Check and tokenize inputs for ``task`` without running the model (see :meth:`execute`)."""
        return self.tasks.prepare(task, *args, **kwargs)

    def execute(self, request: PreparedRequest, *, use_tqdm: bool = False,
                progress: tqdm | None = None) -> list[RequestOutput[Any]]:
        """Run a prepared request (from :meth:`prepare` or :meth:`Tasks.prepare`) and build its outputs."""
        pooled = self.engine.execute(request.prompts, request.options, use_tqdm, progress)
        return self.tasks.finish(request, pooled, self._request_ids, head=self.engine.apply_head)

    # -- internals --------------------------------------------------------

    def _run(self, task: str, prompts: Prompt | Sequence[Prompt], pooling_params: PoolingParamsArg, *,
             use_tqdm: bool, **kwargs: Any) -> list[Any]:
        items = normalize_prompts(prompts)
        bounds = slices(items, TOKENIZE_SLICE_PROMPTS, TOKENIZE_SLICE_CHARS)
        if len(bounds) <= 1:
            return self.execute(self.tasks.prepare(task, items, pooling_params, **kwargs), use_tqdm=use_tqdm)
        return self._run_pipelined(task, items, bounds, pooling_params, use_tqdm, kwargs)

    def _run_pipelined(self, task: str, items: list[Prompt], bounds: list[tuple[int, int]],
                       pooling_params: PoolingParamsArg, use_tqdm: bool, kwargs: dict[str, Any]) -> list[Any]:
        """Prepare slice k+1 on a helper thread while the model runs slice k."""
        params = params_list(pooling_params, len(items))

        def prepare(start: int, end: int) -> PreparedRequest:
            return self.tasks.prepare(task, items[start:end], params[start:end], first_index=start, **kwargs)

        outputs: list[Any] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="poolkit-tokenize") as pool, \
                _progress(len(items), use_tqdm) as bar:
            pending = pool.submit(prepare, *bounds[0])
            for k in range(len(bounds)):
                request = pending.result()
                if k + 1 < len(bounds):
                    pending = pool.submit(prepare, *bounds[k + 1])
                outputs += self.execute(request, progress=bar)
        return outputs


LLM.__init__.__doc__ = "Load ``model`` with the engine settings below.\n\n" + docstring(EngineArgs)
LLM.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
       for f in setting_fields(EngineArgs) if f.name != "model"]
)
