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

    Sorting keeps padding small, and a batch is also cut where the padded
    length drops to three quarters of the batch's width (at the latest at a
    length-bucket boundary), so a large budget never pads many short rows to a
    few long ones. A single sequence longer than the budget
    still gets a batch of its own. Callers restore input order by index.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for index in order:
        next_width = padded_length(lengths[index])
        if current:
            full = (len(current) + 1) * width > config.max_num_batched_tokens or len(current) >= config.max_num_seqs
            if full or 4 * next_width <= 3 * width:
                batches.append(current)
                current = []
        if not current:
            width = next_width
        current.append(index)
    if current:
        batches.append(current)
    return batches
