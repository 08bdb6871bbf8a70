"""Token-budget batching: sort by length, cut batches whose padded size fits the budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    """Batch limits.

    Args:
        max_num_batched_tokens: padded tokens per forward pass (rows × padded length).
        max_num_seqs: rows per forward pass.
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256


def schedule(
    lengths: Sequence[int],
    config: SchedulerConfig,
    padded_length: Callable[[int], int] = lambda n: n,
) -> list[list[int]]:
    """Group indices into batches, longest first, so that rows × padded length ≤ budget.

    Sorting keeps padding small; a single sequence longer than the budget
    still gets a batch of its own. Callers restore input order by index.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for index in order:
        if not current:
            width = padded_length(lengths[index])
            current = [index]
            continue
        if (len(current) + 1) * width > config.max_num_batched_tokens or len(current) >= config.max_num_seqs:
            batches.append(current)
            width = padded_length(lengths[index])
            current = [index]
        else:
            current.append(index)
    if current:
        batches.append(current)
    return batches
