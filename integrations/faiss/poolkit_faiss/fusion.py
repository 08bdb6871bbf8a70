"""Fusing ranked result lists (e.g. dense and sparse retrieval) into one ranking.

Both functions take several ranked lists, best first, each a sequence of ids,
of ``(id, score)`` pairs, or a one-query :class:`~poolkit_faiss.store.SearchResult`,
and return one list of ``(id, fused_score)`` pairs, best first.

Ties
    Documents with equal fused scores keep their *first-seen* order: the order
    in which they first appear when the input lists are read one after the
    other, in the order given, each from its best entry down. So with the dense
    list first, a dense-only hit ranks before an equally scored sparse-only hit.
    This works for any id type (ints, strings) and never depends on hashing.
    Fused scores are Python floats (float64), summed over the lists in the
    order given.

Repeated ids
    An id listed twice in one list counts once, at its first (best) place.

Pure Python / numpy: no faiss, no engine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal

logger = logging.getLogger(__name__)

Normalize = Literal["minmax", "none"] | None


def _entries(ranking: Any) -> list[tuple[Hashable, float | None]]:
    """A ranked list → ``(id, score or None)`` pairs, best first, each id once (its first place)."""
    if hasattr(ranking, "rows") and hasattr(ranking, "ids"):  # a SearchResult
        rows = ranking.rows()
        if len(rows) != 1:
            raise ValueError(f"a SearchResult to fuse must hold one query, got {len(rows)}")
        ranking = rows[0]
    out: list[tuple[Hashable, float | None]] = []
    seen: set[Hashable] = set()
    for item in ranking:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            key, score = item[0], float(item[1])
        else:
            key, score = item, None
        if key in seen:
            logger.debug("id %r repeated in one ranking; only its best place counts", key)
            continue
        seen.add(key)
        out.append((key, score))
    return out


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"got {len(w)} weights for {n} rankings")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {w}")
    return w


def _ranked(scores: dict[Hashable, float], limit: int | None) -> list[tuple[Hashable, float]]:
    # sorted() is stable and dicts keep insertion (first-seen) order: equal scores stay first-seen.
    ranked = sorted(scores.items(), key=lambda pair: -pair[1])
    return ranked if limit is None else ranked[:limit]


def reciprocal_rank_fusion(
    rankings: Sequence[Any],
    k: float = 60,
    weights: Sequence[float] | None = None,
    *,
    limit: int | None = None,
) -> list[tuple[Hashable, float]]:
    """Reciprocal rank fusion (Cormack, Clarke & Büttcher, 2009).

    For each document ``d``::

        RRF(d) = sum over rankings i that contain d of  w_i / (k + rank_i(d))

    where ``rank_i(d)`` is ``d``'s place in ranking ``i`` counted **from 1**
    (the best entry has rank 1), ``w_i`` the ranking's weight (default 1) and
    ``k`` the smoothing constant (60 in the paper: it keeps the first few
    places from dominating). Rankings that miss ``d`` add nothing. Only ranks
    matter; any scores in the input are ignored.

    Example: ``d`` at rank 1 in the first list and rank 3 in the second, with
    ``k=60``: ``1/61 + 1/63``.

    Args:
        rankings: ranked lists, best first (ids, ``(id, score)`` pairs, or one-query ``SearchResult``).
        k: the rank constant (``>= 0``).
        weights: one non-negative weight per ranking (default: all 1).
        limit: return only this many (default: all fused ids).

    Returns:
        ``(id, fused_score)`` pairs, best first; ties in first-seen order (module docstring).
    """
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"k must be a finite number >= 0, got {k}")
    lists = [_entries(r) for r in rankings]
    w = _weights(weights, len(lists))
    scores: dict[Hashable, float] = {}
    for weight, entries in zip(w, lists):
        for rank, (key, _) in enumerate(entries, start=1):
            scores[key] = scores.get(key, 0.0) + weight / (k + rank)
    return _ranked(scores, limit)


def weighted_score_fusion(
    results: Sequence[Any],
    weights: Sequence[float] | None = None,
    normalize: Normalize = "minmax",
    *,
    limit: int | None = None,
) -> list[tuple[Hashable, float]]:
    """Weighted sum of (normalized) scores, also called convex combination / CombSUM.

    For each document ``d``::

        fused(d) = sum over result lists i that contain d of  w_i * norm_i(score_i(d))

    With ``normalize="minmax"`` (default) each list's scores are rescaled to
    [0, 1] before weighting, so scores on different scales (cosine similarity
    in [-1, 1], unbounded sparse dot products) can be added::

        norm_i(s) = (s - min_i) / (max_i - min_i)

    where ``min_i`` / ``max_i`` are the lowest and highest scores *in list i*
    (not in the whole corpus). A list whose scores are all equal maps every
    score to 1 (each is that list's best). ``normalize=None`` or ``"none"``
    adds the raw scores. Lists that miss ``d`` add nothing (as a normalized 0).

    Args:
        results: ranked lists of ``(id, score)`` pairs (or one-query ``SearchResult``); scores must be finite.
        weights: one non-negative weight per list (default: all 1).
        normalize: ``"minmax"`` or ``None`` / ``"none"``.
        limit: return only this many (default: all fused ids).

    Returns:
        ``(id, fused_score)`` pairs, best first; ties in first-seen order (module docstring).
    """
    if normalize not in ("minmax", "none", None):
        raise ValueError(f"normalize must be 'minmax' or None, got {normalize!r}")
    lists = [_entries(r) for r in results]
    w = _weights(weights, len(lists))
    scores: dict[Hashable, float] = {}
    for n, (weight, entries) in enumerate(zip(w, lists)):
        if any(score is None for _, score in entries):
            raise ValueError(f"result list {n} has ids without scores: weighted_score_fusion needs (id, score) pairs")
        values = [float(score) for _, score in entries]  # type: ignore[arg-type]
        if any(not math.isfinite(v) for v in values):
            raise ValueError(f"result list {n} has a non-finite score")
        if normalize == "minmax" and values:
            low, high = min(values), max(values)
            span = high - low
            values = [(v - low) / span if span > 0 else 1.0 for v in values]
        for (key, _), value in zip(entries, values):
            scores[key] = scores.get(key, 0.0) + weight * value
    return _ranked(scores, limit)
