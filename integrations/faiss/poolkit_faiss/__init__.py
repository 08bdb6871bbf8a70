"""poolkit_faiss: FAISS indexes sized to a memory budget, for poolkit embeddings.

>>> from poolkit import LLM
>>> from poolkit_faiss import plan_index, VectorIndex
>>> llm = LLM()
>>> plan = plan_index(5_000_000, 4 * 2**30, llm=llm)      # doctest: +SKIP
>>> index = VectorIndex.from_texts(texts, llm, plan=plan)  # doctest: +SKIP
>>> index.search_texts("how do I pool embeddings?", k=10)  # doctest: +SKIP

Image-text models (CLIP, SigLIP) index images the same way and find them by text:

>>> index = VectorIndex.from_images(paths, clip_llm, plan=plan)  # doctest: +SKIP
>>> index.search_texts("a red circle", k=5)                      # doctest: +SKIP

Sparse (SPLADE) vectors go in a ``SparseIndex``; ``reciprocal_rank_fusion`` /
``weighted_score_fusion`` merge dense and sparse rankings.
"""

from .datasets import clustered_vectors
from .embedding import embed_images, embed_texts, prepare_vectors
from .fusion import reciprocal_rank_fusion, weighted_score_fusion
from .gpu import gpu_count
from .planning import (
    CODECS,
    BudgetError,
    Codec,
    IndexPlan,
    ModelInfo,
    candidate_plans,
    default_nlist,
    format_bytes,
    model_info,
    plan_for,
    plan_index,
)
from .quantize import dequantize_int8, quantize_binary, quantize_int8
from .sparse import SparseIndex
from .store import SearchResult, VectorIndex, recall_at_k

__version__ = "0.1.0"

__all__ = [
    "CODECS",
    "BudgetError",
    "Codec",
    "IndexPlan",
    "ModelInfo",
    "SearchResult",
    "SparseIndex",
    "VectorIndex",
    "candidate_plans",
    "clustered_vectors",
    "default_nlist",
    "dequantize_int8",
    "embed_images",
    "embed_texts",
    "format_bytes",
    "gpu_count",
    "model_info",
    "plan_for",
    "plan_index",
    "prepare_vectors",
    "quantize_binary",
    "quantize_int8",
    "recall_at_k",
    "reciprocal_rank_fusion",
    "weighted_score_fusion",
]
