"""Decode and preprocess the next batches in worker threads while the model runs this one.

Decoding (PIL's PNG/JPEG decoders, tifffile's codecs, zlib) and the resize to model resolution
release the GIL, so threads decode in parallel without copying the file bytes into worker
processes (a DataLoader's workers would pickle every input across). The batch tensor is
stacked, and pinned on CUDA, in a worker too, so the main thread only launches the copy
(`non_blocking`) and the model: the accelerator never waits on PIL.

What a worker returns for an image is exactly what the sequential path made: the decoded image
or the failed row naming it, so bad inputs keep their place and lose nothing else.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

Item = TypeVar("Item")  # what decoding one input gives: an image, or its failed row
Source = TypeVar("Source")

DEFAULT_MAX_WORKERS = 8  # decoding beyond this rarely pays: the model is the consumer
PREFETCH_BATCHES = 2  # batches decoded ahead of the one the model runs


@dataclass(frozen=True)
class Decoded(Generic[Item]):
    """One input after decoding: the item, and its model input (or why preprocessing failed)."""

    item: Item
    tensor: torch.Tensor | None  # (3, S, S); None when the item is a failed row
    error: BaseException | None = None  # preprocessing raised: re-raised where the model runs


@dataclass(frozen=True)
class DecodedBatch(Generic[Item]):
    """A batch ready for the model: every input's result, in order, and the stacked inputs."""

    items: list[Decoded[Item]]
    stacked: torch.Tensor | None  # (n_ok, 3, S, S) of the items with a tensor, in order
    error: BaseException | None  # the first preprocessing error, if any


def decode_workers(requested: int) -> int:
    """Threads to decode with: `requested` when > 0, else by CPU count (0 would mean inline)."""
    if requested > 0:
        return requested
    return max(1, min(DEFAULT_MAX_WORKERS, os.cpu_count() or 1))


def prefetch_batches(
    sources: Sequence[Source],
    slices: Sequence[slice],
    decode: Callable[[int], Decoded[Item]],
    *,
    workers: int,
    pin_memory: bool = False,
) -> Iterator[tuple[slice, DecodedBatch[Item]]]:
    """Yield each slice of `sources` with its decoded batch, decoding ahead in `workers` threads.

    `decode(i)` decodes input i. `workers` = 0 decodes inline (the same results, no threads).
    At most PREFETCH_BATCHES batches wait decoded, so memory stays bounded.
    """
    if workers <= 0:
        for sl in slices:
            yield sl, collate([decode(i) for i in range(sl.start, sl.stop)], pin_memory)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="semclip-decode") as pool:
        pending: deque[tuple[slice, Future[DecodedBatch[Item]]]] = deque()
        todo = iter(slices)

        def submit() -> None:
            sl = next(todo, None)
            if sl is None:
                return
            parts = [pool.submit(decode, i) for i in range(sl.start, sl.stop)]
            # Queued after its images, so a thread that takes it finds them all started.
            pending.append((sl, pool.submit(_collate_futures, parts, pin_memory)))

        for _ in range(PREFETCH_BATCHES + 1):
            submit()
        while pending:
            sl, batch = pending.popleft()
            result = batch.result()
            submit()
            yield sl, result


def _collate_futures(parts: list[Future[Decoded[Item]]], pin_memory: bool) -> DecodedBatch[Item]:
    return collate([p.result() for p in parts], pin_memory)


def collate(items: list[Decoded[Item]], pin_memory: bool = False) -> DecodedBatch[Item]:
    """Stack the inputs that have a tensor (pinned for an asynchronous copy to CUDA)."""
    error = next((d.error for d in items if d.error is not None), None)
    tensors = [d.tensor for d in items if d.tensor is not None]
    stacked = None
    if tensors and error is None:
        stacked = torch.stack(tensors)
        if pin_memory:
            stacked = stacked.pin_memory()
    return DecodedBatch(items, stacked, error)
