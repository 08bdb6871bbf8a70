"""``classify``: class probabilities (softmax / sigmoid by the head's problem type) and the best label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..inputs import Prompt, normalize_prompts
from ..outputs import ClassificationOutput, ClassificationRequestOutput
from .base import PoolingParamsArg, PreparedRequest, RequestIds, Task
from .chunking import Head


class ClassifyTask(Task):
    name = "classify"

    def prepare(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParamsArg = None,
        *,
        truncate_prompt_tokens: int | None = None,
        first_index: int = 0,
    ) -> PreparedRequest:
        self.require()
        items = normalize_prompts(prompts)
        options = self.options(pooling_params, len(items))
        return PreparedRequest(self.name, self.processor.encode(items, truncate_prompt_tokens, first_index), options,
                               first_index=first_index)

    def label(self, values: np.ndarray) -> str | None:
        if not values.size:
            return None
        best = int(np.argmax(values))
        return self.model_config.id2label.get(best, f"LABEL_{best}")

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray], request_ids: RequestIds,
               head: Head | None = None) -> list[ClassificationRequestOutput]:
        return [ClassificationRequestOutput(request_ids(), p.input_ids, ClassificationOutput(v, self.label(v)),
                                            p.num_input_tokens)
                for p, v in zip(request.prompts, pooled)]
