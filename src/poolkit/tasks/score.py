"""``score``: relevance of text pairs, 1:1, 1:N (one query, many documents) or N:N (zipped).

The one scoring implementation behind ``LLM.score``, ``/score``, ``/rerank``
and the LangChain reranker: a cross-encoder scores each pair in one forward
pass (token types as the model expects; an LLM reranker's pair as one text in
its ``score_template``); an embedding model embeds every distinct text once (with the request's ``PoolingParams``, e.g. Matryoshka
``dimensions``, and the model's default prompt) and scores by cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..inputs import Prompt, normalize_prompts
from ..outputs import ScoringOutput, ScoringRequestOutput
from ..params import PoolingParams
from .base import PreparedRequest, RequestIds, Task
from .chunking import Head
from .embed import EmbedTask


def prompt_key(prompt: Prompt) -> object:
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


@dataclass
class CosinePairs:
    """For scoring by cosine: which embedded sequence is each pair's left and right side."""

    left: list[int]
    right: list[int]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays (float64 accumulation, as torch's ``eps`` guard)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a64, axis=1), 1e-8) * np.maximum(np.linalg.norm(b64, axis=1), 1e-8)
    return np.einsum("ij,ij->i", a64, b64) / norms


class ScoreTask(Task):
    name = "score"
    splittable = False

    @property
    def by_cosine(self) -> bool:
        """Embedding models score by cosine; cross-encoders (``*ForSequenceClassification``) by their head."""
        return self.model_config.task == "embed"

    def prepare(
        self,
        data_1: Prompt | Sequence[Prompt],
        data_2: Prompt | Sequence[Prompt],
        pooling_params: PoolingParams | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
    ) -> PreparedRequest:
        self.require()
        left, right = pair_up(normalize_prompts(data_1), normalize_prompts(data_2))
        params = pooling_params or PoolingParams()
        if self.by_cosine:
            unique = list({prompt_key(p): p for p in (*left, *right)}.values())
            position = {prompt_key(p): i for i, p in enumerate(unique)}
            tokens = EmbedTask(self.model_config, self.processor).tokenize(unique, truncate_prompt_tokens, None, None)
            options = self.options(params, len(unique), method="embed")
            pairs = CosinePairs([position[prompt_key(p)] for p in left], [position[prompt_key(p)] for p in right])
            return PreparedRequest(self.name, tokens, options, state=pairs, num_inputs=len(left))
        template = self.model_config.score_template
        if template is not None:
            tokens = self.processor.encode_templated_pairs(left, right, template, truncate_prompt_tokens)  # type: ignore[arg-type]
        else:
            tokens = self.processor.encode_pairs(left, right, truncate_prompt_tokens)  # type: ignore[arg-type]
        return PreparedRequest(self.name, tokens, self.options(params, len(tokens)))

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray], request_ids: RequestIds,
               head: Head | None = None) -> list[ScoringRequestOutput]:
        pairs = request.state
        if not isinstance(pairs, CosinePairs):
            return [ScoringRequestOutput(request_ids(), p.input_ids, ScoringOutput(float(v.reshape(-1)[0])),
                                         p.num_input_tokens)
                    for p, v in zip(request.prompts, pooled)]
        if not pairs.left:
            return []
        vectors = np.stack(pooled)
        scores = cosine(vectors[pairs.left], vectors[pairs.right])
        outputs = []
        for i, j, score in zip(pairs.left, pairs.right, scores.tolist()):
            a, b = request.prompts[i], request.prompts[j]
            outputs.append(ScoringRequestOutput(request_ids(), a.input_ids + b.input_ids, ScoringOutput(score),
                                                a.num_input_tokens + b.num_input_tokens))
        return outputs
