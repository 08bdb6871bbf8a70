"""What every task has in common: a prepared request and the prepare → (engine) → finish contract.

A task turns a front-end's inputs into a :class:`PreparedRequest` (parameters
checked, prompts applied, tokenized, truncated: no model needed), and the
engine's pooled arrays for it into output objects. The engine in between only
sees token sequences and head options, so the offline ``LLM``, the server's
async engine and the corpus job drive the same tasks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..config import ModelConfig
from ..inputs import InputProcessor, Prompt, TokenizedPrompt, TruncationSide
from ..outputs import RequestOutput
from ..params import HeadOptions, PoolingParams
from . import chunking
from .chunking import ChunkPlan, Head

PoolingParamsArg = PoolingParams | Sequence[PoolingParams] | None


@dataclass
class PreparedRequest:
    """Tokenized, validated work for the engine (picklable: it may cross to a data-loader worker).

    ``prompts``/``options``: what the engine runs, one head option per sequence.
    ``state``: what the task needs to finish (e.g. which sequences a score pairs up).
    ``first_index``: the position of the first input in the caller's whole input (for messages).
    """

    task: str
    prompts: list[TokenizedPrompt]
    options: list[HeadOptions]
    state: Any = None
    first_index: int = 0
    num_inputs: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.num_inputs < 0:
            self.num_inputs = len(self.prompts)

    @property
    def num_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def __len__(self) -> int:
        return self.num_inputs


RequestIds = Callable[[], str]


def counter_ids(start: int = 0) -> RequestIds:
    """Request ids ``"0"``, ``"1"``, ... as vLLM's offline API numbers them."""
    count = itertools.count(start)
    return lambda: str(next(count))


def params_list(pooling_params: PoolingParamsArg, n: int) -> list[PoolingParams]:
    """One ``PoolingParams`` per prompt: none (defaults), one for all, or exactly one each."""
    if pooling_params is None:
        return [PoolingParams()] * n
    if isinstance(pooling_params, PoolingParams):
        return [pooling_params] * n
    params = list(pooling_params)
    if len(params) != n:
        raise ValueError(f"Got {len(params)} pooling_params for {n} prompts; pass one, or one per prompt")
    for index, item in enumerate(params):
        if not isinstance(item, PoolingParams):
            raise TypeError(f"pooling_params[{index}] must be a PoolingParams, got {type(item).__name__}")
    return params


class Task:
    """One of the model's tasks. Subclasses set ``name`` and implement ``prepare`` and ``finish``.

    ``splittable``: every input is prepared and finished on its own, so a front-end
    may split a long input list into slices (and tokenize one while the model runs another).
    """

    name: ClassVar[str]
    splittable: ClassVar[bool] = True

    def __init__(self, model_config: ModelConfig, processor: InputProcessor) -> None:
        self.model_config = model_config
        self.processor = processor

    def require(self) -> None:
        """``ValueError`` when the model does not serve this task."""
        self.model_config.require(self.name)

    def prepare(self, *args: Any, **kwargs: Any) -> PreparedRequest:
        raise NotImplementedError

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray], request_ids: RequestIds,
               head: Head | None = None) -> Sequence[RequestOutput[Any]]:
        """Outputs for ``request``; ``head`` is the engine's (it finishes chunked long inputs)."""
        raise NotImplementedError

    def tokenize_inputs(self, items: list[Prompt], options: list[HeadOptions], truncate_prompt_tokens: int | None,
                        first_index: int, enable_chunked_processing: bool | None,
                        adjust: Callable[[list[TokenizedPrompt]], None] | None = None,
                        truncation_side: TruncationSide | None = None, keep_text_start: int = 0,
                        ) -> tuple[list[TokenizedPrompt], list[HeadOptions], ChunkPlan | None]:
        """Tokenize one sequence per input, or, with chunked processing (the request's choice, else the
        pooler config's), split inputs longer than the model into chunks (see :mod:`.chunking`).

        ``adjust`` sees the whole inputs' sequences before any is split (e.g. to mark a prompt's tokens).
        ``truncation_side``: the end ``truncate_prompt_tokens`` cuts (default: the tokenizer's);
        ``keep_text_start``: the first tokens of each text a ``"left"`` cut keeps (a prompt's).
        """
        enabled = enable_chunked_processing
        if enabled is None:
            enabled = bool(self.model_config.pooler_config.enable_chunked_processing)
        chunked = enabled and truncate_prompt_tokens is None  # truncation asked for: nothing is too long
        if chunked:
            chunking.check_chunking(self.model_config, self.processor)
        max_len = chunking.max_embed_len(self.model_config) if chunked else None
        tokens = self.processor.encode(items, truncate_prompt_tokens, first_index, max_len=max_len,
                                       truncation_side=truncation_side, keep_text_start=keep_text_start)
        if adjust is not None:
            adjust(tokens)
        if not chunked:
            return tokens, options, None
        return chunking.plan(self.processor, self.model_config, tokens, options)

    @staticmethod
    def per_input(request: PreparedRequest, pooled: Sequence[np.ndarray], head: Head | None
                  ) -> list[tuple[TokenizedPrompt, np.ndarray, int]]:
        """``(input, vector, tokens processed)`` per input, chunked inputs merged back."""
        plan = request.state
        if not isinstance(plan, chunking.ChunkPlan):
            return [(p, v, len(p)) for p, v in zip(request.prompts, pooled)]
        vectors = chunking.merge(request.prompts, pooled, plan, head)
        return [(token, vector, sum(len(p) for p in request.prompts[start:stop]))
                for token, vector, (start, stop) in zip(plan.inputs, vectors, plan.spans)]

    def options(self, pooling_params: PoolingParamsArg, n: int, method: str | None = None) -> list[HeadOptions]:
        """Checked head options, one per prompt (the same object when all prompts share the params)."""
        params = params_list(pooling_params, n)
        resolved: dict[PoolingParams, HeadOptions] = {}
        return [resolved.setdefault(p, p.resolve(method or self.name, self.model_config)) for p in params]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_config.served_model_name!r})"
