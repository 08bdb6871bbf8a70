"""``score``: relevance of text pairs, 1:1, 1:N (one query, many documents) or N:N (zipped).

The one scoring implementation behind ``LLM.score``, ``/score``, ``/rerank``
and the LangChain reranker: a cross-encoder scores each pair in one forward
pass (token types as the model expects; an LLM reranker's pair as one text in
its ``score_template``); an embedding model embeds every distinct text once
(with the request's ``PoolingParams``, e.g. Matryoshka ``dimensions``, and the
model's default prompt) and scores by cosine, sparse models by dot product,
multi-vector (ColBERT-style) models by MaxSim.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..inputs import ImagePrompt, Prompt, normalize_prompts
from ..outputs import ScoringOutput, ScoringRequestOutput
from ..params import PoolingParams
from .base import PreparedRequest, RequestIds, Task
from .chunking import Head
from .embed import EmbedTask


def prompt_key(prompt: Prompt) -> object:
    """A hashable identity for a prompt (deduplicates the texts of 1:N scoring)."""
    if isinstance(prompt, ImagePrompt):
        return ("image", id(prompt))
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
class EmbeddingPairs:
    """For scoring by embeddings: which embedded sequence is each pair's left and right side, and the
    similarity (``cosine`` for dense, ``dot`` for sparse, ``maxsim``/``meanmaxsim`` for multi-vector)."""

    left: list[int]
    right: list[int]
    similarity: str = "cosine"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays (float64 accumulation, as torch's ``eps`` guard)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a64, axis=1), 1e-8) * np.maximum(np.linalg.norm(b64, axis=1), 1e-8)
    return np.einsum("ij,ij->i", a64, b64) / norms


def maxsim(query: np.ndarray, document: np.ndarray, mean: bool = False) -> float:
    """Late interaction: for each query vector its best dot product over the document's vectors, summed
    (``mean``: averaged over the query's vectors, as BGE-M3 scores)."""
    if query.shape[0] == 0 or document.shape[0] == 0:
        return 0.0
    best = (query.astype(np.float64) @ document.astype(np.float64).T).max(axis=1)
    return float(best.mean() if mean else best.sum())


def similarities(vectors: Sequence[np.ndarray], left: list[int], right: list[int], similarity: str) -> list[float]:
    """Scores of the ``(left[k], right[k])`` pairs of embedded ``vectors``."""
    if similarity in ("maxsim", "meanmaxsim"):
        return [maxsim(vectors[i], vectors[j], mean=similarity == "meanmaxsim") for i, j in zip(left, right)]
    stacked = np.stack(vectors)
    if similarity == "dot":
        return np.einsum("ij,ij->i", stacked[left].astype(np.float64), stacked[right].astype(np.float64)).tolist()
    return cosine(stacked[left], stacked[right]).tolist()


class ScoreTask(Task):
    name = "score"
    splittable = False

    @property
    def by_embeddings(self) -> bool:
        """Embedding models score by the similarity of their embeddings; cross-encoders
        (``*ForSequenceClassification``) by their head."""
        return self.model_config.task == "embed"

    def similarity(self, output: str) -> str:
        """Dense embeddings compare by cosine, sparse ones by dot product (sentence-transformers' and BGE-M3's
        lexical score), multi-vector ones by the model's MaxSim."""
        if output == "sparse":
            return "dot"
        if output == "multi_vector" and self.model_config.multi_vector is not None:
            return self.model_config.multi_vector.similarity
        return "cosine"

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
        if self.by_embeddings:
            return self.prepare_embeddings(left, right, params, truncate_prompt_tokens)
        template = self.model_config.score_template
        if template is not None:
            tokens = self.processor.encode_templated_pairs(left, right, template, truncate_prompt_tokens)  # type: ignore[arg-type]
        else:
            tokens = self.processor.encode_pairs(left, right, truncate_prompt_tokens)  # type: ignore[arg-type]
        return PreparedRequest(self.name, tokens, self.options(params, len(tokens)))

    def prepare_embeddings(self, left: list[Prompt], right: list[Prompt], params: PoolingParams,
                           truncate_prompt_tokens: int | None) -> PreparedRequest:
        """Embed every distinct text once; models whose roles differ embed the left side as queries and the
        right side as documents, so a text on both sides is embedded in each role."""
        (option,) = self.options(params, 1, method="embed")
        sparse = self.model_config.sparse
        # Queries and documents are embedded differently by multi-vector models (skiplist, expansion) and by
        # inference-free sparse ones (static weights for one role).
        roles = option.output == "multi_vector" or (
            option.output == "sparse" and sparse is not None and sparse.static_role is not None)
        keys = [(("query",) if roles else ()) + (prompt_key(p),) for p in left]
        keys += [(("document",) if roles else ()) + (prompt_key(p),) for p in right]
        unique = dict(zip(keys, (*left, *right)))
        position = {key: i for i, key in enumerate(unique)}
        embed = EmbedTask(self.model_config, self.processor)
        tokens = embed.tokenize(list(unique.values()), truncate_prompt_tokens, None, None)
        options = [dataclasses.replace(option, role=str(key[0])) if roles else option for key in unique]
        embed.fit_roles(tokens, options, truncate_prompt_tokens)
        pairs = EmbeddingPairs([position[k] for k in keys[:len(left)]], [position[k] for k in keys[len(left):]],
                               self.similarity(option.output))
        return PreparedRequest(self.name, tokens, options, state=pairs, num_inputs=len(left))

    def finish(self, request: PreparedRequest, pooled: Sequence[np.ndarray], request_ids: RequestIds,
               head: Head | None = None) -> list[ScoringRequestOutput]:
        pairs = request.state
        if not isinstance(pairs, EmbeddingPairs):
            return [ScoringRequestOutput(request_ids(), p.input_ids, ScoringOutput(float(v.reshape(-1)[0])),
                                         p.num_input_tokens)
                    for p, v in zip(request.prompts, pooled)]
        if not pairs.left:
            return []
        scores = similarities(pooled, pairs.left, pairs.right, pairs.similarity)
        outputs = []
        for i, j, score in zip(pairs.left, pairs.right, scores):
            a, b = request.prompts[i], request.prompts[j]
            outputs.append(ScoringRequestOutput(request_ids(), a.input_ids + b.input_ids, ScoringOutput(score),
                                                a.num_input_tokens + b.num_input_tokens))
        return outputs
