"""``encode`` (the pooler's raw output) and ``reward`` (per-token or per-step rewards of a reward model)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..inputs import Prompt, normalize_prompts
from ..outputs import PoolingOutput, PoolingRequestOutput
from .base import PoolingParamsArg, PreparedRequest, RequestIds, Task
from .chunking import Head


class EncodeTask(Task):
    name = "encode"

    def prepare(
        self,
        prompts: Prompt | Sequence[Prompt],
        pooling_params: PoolingParamsArg = None,
        *,
        truncate_prompt_tokens: int | None = None,
        first_index: int = 0,
        enable_chunked_processing: bool | None = None,
    ) -> PreparedRequest:
        """``enable_chunked_processing``: as for ``embed`` (embedding models pooling one vector per input)."""
        self.require()
        items = normalize_prompts(prompts)
        options = self.options(pooling_params, len(items), method="encode")
        tokens, run_options, plan = self.tokenize_inputs(items, options, truncate_prompt_tokens, first_index,
                                                         enable_chunked_processing)
        return PreparedRequest(self.name, tokens, run_options, state=plan, first_index=first_index,
                               num_inputs=len(items))

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray], request_ids: RequestIds,
               head: Head | None = None) -> list[PoolingRequestOutput]:
        return [PoolingRequestOutput(request_ids(), p.input_ids, PoolingOutput(v), p.num_input_tokens,
                                     num_processed_tokens=processed)
                for p, v, processed in self.per_input(request, pooled, head)]


class RewardTask(EncodeTask):
    name = "reward"
