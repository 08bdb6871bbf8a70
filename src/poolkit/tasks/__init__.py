"""The task layer: every behaviour a front-end must share, in one place per task.

``Tasks`` holds a model's tasks (``embed``, ``classify``, ``score``,
``encode``, ``reward``). Each owns its parameter checks, prompts, truncation
(and its report in the outputs) and the turning of pooled arrays into output
objects. It needs the tokenizer and the resolved config, not the weights, so
it can also run where no model is loaded (e.g. a data-loader worker)::

    tasks = Tasks.from_model("path/or/id")                 # no weights
    request = tasks.prepare("embed", texts, truncate_prompt_tokens=-1)
    outputs = llm.execute(request)                          # on the process that holds the model
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..inputs import InputProcessor
from ..outputs import RequestOutput
from .base import PreparedRequest, RequestIds, Task, counter_ids, params_list
from .chunking import Head
from .classify import ClassifyTask
from .embed import EmbedTask
from .encode import EncodeTask, RewardTask
from .prompts import resolve_prompt, role_prompt_name
from .score import ScoreTask, pair_up, prompt_key

TASK_CLASSES: dict[str, type[Task]] = {
    cls.name: cls for cls in (EmbedTask, ClassifyTask, ScoreTask, EncodeTask, RewardTask)
}


class Tasks:
    """A model's tasks over one tokenizer and config; ``prepare`` and ``finish`` dispatch by task name."""

    def __init__(self, model_config: ModelConfig, processor: InputProcessor) -> None:
        self.model_config = model_config
        self.processor = processor
        self._tasks = {name: cls(model_config, processor) for name, cls in TASK_CLASSES.items()}

    @classmethod
    def from_model(cls, model: str | os.PathLike[str] | None = None, **engine_kwargs: Any) -> Tasks:
        """The tasks of ``model`` as ``LLM(model, **engine_kwargs)`` would build them, without loading weights."""
        from ..loader import load_model_config_and_tokenizer
        from ..settings import EngineArgs

        args = EngineArgs.resolve(model=os.fspath(model) if model is not None else None, **engine_kwargs)
        model_config, tokenizer = load_model_config_and_tokenizer(args)
        return cls(model_config, InputProcessor(tokenizer, model_config))

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise ValueError(f"Unknown task {name!r}; expected one of {', '.join(self._tasks)}") from None

    @property
    def supported(self) -> list[str]:
        """The tasks this model serves."""
        return sorted(self.model_config.supported_methods)

    def prepare(self, task: str, *args: Any, **kwargs: Any) -> PreparedRequest:
        """Check, prompt, tokenize and truncate inputs for ``task`` (``ValueError``/``TypeError`` on bad input)."""
        return self[task].prepare(*args, **kwargs)

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray],
               request_ids: RequestIds | None = None, head: Head | None = None) -> list[RequestOutput[Any]]:
        """Output objects for ``request`` from the engine's pooled arrays (in the request's order);
        ``head``: the engine's ``apply_head``, needed to finish chunked long inputs."""
        return list(self[request.task].finish(request, pooled, request_ids or counter_ids(), head))

    def __repr__(self) -> str:
        return f"Tasks(model={self.model_config.served_model_name!r}, supported={self.supported})"


__all__ = [
    "ClassifyTask", "EmbedTask", "EncodeTask", "PreparedRequest", "RewardTask", "ScoreTask", "Task", "Tasks",
    "counter_ids", "pair_up", "params_list", "prompt_key", "resolve_prompt", "role_prompt_name",
]
