"""Token-budget batching: sort by length, cut batches whose padded size fits the budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    """Batch limits.

    Args:
        max_num_batched_tokens: tokens per forward pass: rows × padded length
            for padded batches, the sum of lengths for packed ones.
        max_num_seqs: rows per forward pass.
    """

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256


def schedule(
    lengths: Sequence[int],
    config: SchedulerConfig,
    padded_length: Callable[[int], int] | None = None,
) -> list[list[int]]:
    """Group indices into batches, longest first, within the token budget.

    Padded batches (``padded_length`` given): rows × padded length ≤ budget.
    Sorting keeps padding small, and a batch is also cut where the padded
    length drops to three quarters of the batch's width (at the latest at a
    length-bucket boundary), so a large budget never pads many short rows to a
    few long ones.

    Packed batches (``padded_length=None``): the sum of lengths ≤ budget; no
    padding exists, and the sort still puts equal lengths side by side, which
    packed attention takes as one block.

    A single sequence longer than the budget still gets a batch of its own.
    Callers restore input order by index.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    width = used = 0
    for index in order:
        if padded_length is None:
            cost = lengths[index]
            cut = used + cost > config.max_num_batched_tokens
        else:
            cost = padded_length(lengths[index])
            cut = (len(current) + 1) * width > config.max_num_batched_tokens or 4 * cost <= 3 * width
        if current and (cut or len(current) >= config.max_num_seqs):
            batches.append(current)
            current = []
            used = 0
        if not current:
            width = cost
        current.append(index)
        used += cost
    if current:
        batches.append(current)
    return batches
