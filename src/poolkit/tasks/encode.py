"""``encode`` (the pooler's raw output) and ``reward`` (per-token or per-step rewards of a reward model)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..inputs import Prompt, normalize_prompts
from ..outputs import PoolingOutput, PoolingRequestOutput
from .base import PoolingParamsArg, PreparedRequest, RequestIds, Task


class EncodeTask(Task):
    name = "encode"

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
        options = self.options(pooling_params, len(items), method="encode")
        return PreparedRequest(self.name, self.processor.encode(items, truncate_prompt_tokens, first_index), options,
                               first_index=first_index)

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray],
               request_ids: RequestIds) -> list[PoolingRequestOutput]:
        return [PoolingRequestOutput(request_ids(), p.input_ids, PoolingOutput(v), p.num_input_tokens)
                for p, v in zip(request.prompts, pooled)]


class RewardTask(EncodeTask):
    name = "reward"
