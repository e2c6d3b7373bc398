"""Feeding the training thread without making it wait: host work ahead in a producer thread,
device work on a side CUDA stream, one batch ahead.

- :class:`Producer` makes an epoch's batches in order in a thread (plan specs, file reads,
  packing the augmentation's arguments), up to ``ahead`` batches before the consumer asks;
  an error in the thread is raised to the consumer when it reaches that batch.
- :class:`SideStream` runs a batch's device work (colour conversion, augmentation) on its own
  CUDA stream and hands the result to the consumer's stream with an event, so the training
  step of batch ``k`` and the augmentation of batch ``k + 1`` overlap on the GPU; on a CPU
  device it is a no-op.
- :func:`one_ahead` asks for batch ``k + 1`` (which enqueues its device work) before it yields
  batch ``k``.

Documented in docs/design.md, "Decoding backends".
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")


class Producer(Generic[T]):
    """``make(k)`` for ``k`` in ``indices``, in order, in a daemon thread, at most ``ahead``
    finished items waiting; :meth:`get` returns them in order."""

    def __init__(
        self,
        make: Callable[[int], T],
        indices: Iterable[int],
        *,
        ahead: int = 2,
        name: str = "maedfer-producer",
    ) -> None:
        self._make, self._indices = make, list(indices)
        self._remaining = len(self._indices)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for k in tuple(self._indices):
            if self._stop.is_set():
                return
            try:
                item: Any = (k, self._make(k), None)
            except BaseException as exc:  # handed to the consumer, which raises it
                item = (k, None, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def get(self) -> tuple[int, T]:
        """The next ``(k, make(k))``; raises what ``make`` raised, ``StopIteration`` at the
        end."""
        if not self._remaining:
            raise StopIteration
        if self._queue.empty() and not self._thread.is_alive():
            raise StopIteration  # closed
        k, item, error = self._queue.get()
        self._remaining -= 1
        if error is not None:
            raise error
        return k, item

    def close(self) -> None:
        """Stop making items and wait for the thread (an item being made is finished)."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join()


class SideStream:
    """Device work on a side CUDA stream of ``device`` (nothing special on a CPU device)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None

    def __call__(self) -> contextlib.AbstractContextManager:
        """The context the work is enqueued in."""
        if self.stream is None:
            return contextlib.nullcontext()
        return torch.cuda.stream(self.stream)

    def done(self) -> torch.cuda.Event | None:
        """An event after the work enqueued so far (``None`` on a CPU device)."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def hand_over(self, batch: dict[str, Any], event: torch.cuda.Event | None) -> dict[str, Any]:
        """Make the consumer's (current) stream wait for ``event`` before it reads ``batch``,
        and tell the caching allocator the batch's tensors are used there."""
        if event is None:
            return batch
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.is_cuda:
                value.record_stream(current)
        return batch


def one_ahead(batches: Iterator[T]) -> Iterator[T]:
    """``batches``, each taken from ``batches`` one step before it is yielded."""
    pending = next(batches, None)
    while pending is not None:
        following = next(batches, None)
        yield pending
        pending = following
