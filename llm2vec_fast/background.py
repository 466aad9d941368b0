"""Iterators run on a daemon thread behind a bounded queue: the pipeline's stages.

:class:`Background` runs a source iterator on its own thread, at most ``maxsize`` items ahead;
an error in the source is raised to the reader, and ``close()`` stops the thread and drops
what it holds. :class:`Inline` is the same interface in the caller's thread (the sequential
baseline). ``next(idle_after)`` returns :data:`IDLE` when nothing came in time, so a reader
holding finished results can hand them out while a source pauses.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

__all__ = ["IDLE", "IDLE_S", "Background", "Inline", "Stop", "in_background"]

POLL_S = 0.1  # how often a blocked stage checks whether it should stop


class Stop(Exception):
    """Raised inside a stage when the pipeline is closed."""


class _Failed:
    """An exception carried from a stage to the caller's thread."""

    def __init__(self, exc: BaseException):
        self.exc = exc


END = object()
IDLE = object()  # nothing arrived in time: the consumer hands out what it holds
IDLE_S = 0.002


class Background:
    """Runs an iterator on a daemon thread; items come out through a bounded queue."""

    def __init__(self, source: Iterator, maxsize: int, stop: threading.Event, name: str):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._stop = stop
        self.wait_s = 0.0  # time the consumer spent blocked on this queue
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(source,), name=f"llm2vec-fast-{name}", daemon=True
        )
        self._thread.start()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
        raise Stop

    def _run(self, source: Iterator) -> None:
        try:
            for item in source:
                self._put(item)
            self._put(END)
        except Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            try:
                self._put(_Failed(exc))
            except Stop:
                pass
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass

    def __iter__(self):
        return self

    def __next__(self):
        return self.next(None)

    def next(self, idle_after: float | None):
        """The next item; with ``idle_after`` seconds, :data:`IDLE` when none came by then."""
        if self._done:
            raise StopIteration
        t0 = time.perf_counter()
        while True:
            timeout = POLL_S
            if idle_after is not None:
                timeout = min(timeout, max(0.0, t0 + idle_after - time.perf_counter()))
            try:
                item = self._q.get(timeout=timeout)
                break
            except queue.Empty:
                if self._stop.is_set():
                    raise Stop from None
                if not self._thread.is_alive() and self._q.empty():
                    raise RuntimeError("an llm2vec-fast pipeline thread died") from None
                if idle_after is not None and time.perf_counter() - t0 >= idle_after:
                    self.wait_s += time.perf_counter() - t0
                    return IDLE
        self.wait_s += time.perf_counter() - t0
        if item is END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._done = True
            raise item.exc
        return item

    def close(self) -> None:
        self._stop.set()
        while True:  # free a producer blocked on a full queue, drop what it holds
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)


class Inline:
    """The same interface as :class:`Background`, run in the caller's thread."""

    def __init__(self, source: Iterator):
        self._source = source
        self.wait_s = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        return self.next(None)

    def next(self, idle_after: float | None):
        t0 = time.perf_counter()
        try:
            return next(self._source)
        finally:
            self.wait_s += time.perf_counter() - t0

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


def in_background(source: Iterator, maxsize: int = 1, name: str = "tokenize"):
    """``source`` run on a daemon thread, at most ``maxsize`` items ahead; iterate the
    returned object, and ``close()`` it when done (stops the thread). Errors are raised to the
    reader."""
    return Background(source, maxsize, threading.Event(), name)
