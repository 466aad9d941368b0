"""Worker processes: the one pool primitive that encoding on several devices
(:mod:`llm2vec_fast.multi_device`) and the batch job (:mod:`llm2vec_fast.batch_job`) start.

A :class:`WorkerPool` starts one ``spawn`` process per device, each calling
``target(rank, *args, tasks, results)`` with a shared task queue and a shared result queue.
A worker speaks by putting tuples on ``results`` whose first item is its kind and second its
rank, its last item the payload:

- ``("ready", rank, ..., payload)`` once, when it has loaded what it needs (the handshake,
  :meth:`WorkerPool.wait_ready`);
- ``("error", rank, ..., detail)`` when it fails (it then exits);
- anything else: the caller's results, returned by :meth:`WorkerPool.get`.

``None`` on the task queue ends a worker. The parent waits on the result queue a second at a
time and checks in between that every worker is still alive, so a worker that dies without a
word (killed, out of memory) is reported instead of waited for.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["WorkerPool", "start_without_main"]

# How long the parent waits on the result queue before checking that every worker is alive.
POLL_S = 1.0


def start_without_main(process) -> None:
    """Start a ``spawn`` process that does not re-run the parent's ``__main__`` script.

    ``spawn`` normally re-imports the main script in every child, so a script without an
    ``if __name__ == "__main__":`` guard runs again there, encodes again and tries to start
    processes while bootstrapping, and the child dies (the official llm2vec's issue #121). Our
    workers need nothing from ``__main__`` (their targets and arguments are llm2vec-fast's own),
    so the main module's ``__file__`` and ``__spec__`` are hidden while the child's start-up
    data is taken, as for an interactive session."""
    main = sys.modules.get("__main__")
    if main is None:
        process.start()
        return
    missing = object()
    saved = {k: main.__dict__.get(k, missing) for k in ("__file__", "__spec__")}
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        process.start()
    finally:
        for k, v in saved.items():
            if v is missing:
                main.__dict__.pop(k, None)
            else:
                main.__dict__[k] = v


class WorkerPool:
    """One ``spawn`` worker process per entry of ``names`` (see the module doc).

    Args:
        target: the worker function, ``target(rank, *args[rank], tasks, results)``.
        args: one argument tuple per worker.
        names: what to call each worker in errors (its device).
        failed: the exception for a worker's ``("error", rank, ..., detail)`` message, built
            from the worker's name and the detail.
        died: the exception for workers found dead without a reply, built from their
            ``(name, exit code)`` pairs.
        max_tasks: bound of the task queue (0: unbounded).
        label: the process names' prefix.
    """

    def __init__(
        self,
        target: Callable,
        args: Sequence[tuple],
        names: Sequence[str],
        *,
        failed: Callable[[str, Any], BaseException],
        died: Callable[[list[tuple[str, int | None]]], BaseException],
        max_tasks: int = 0,
        label: str = "llm2vec-fast",
    ):
        import torch.multiprocessing as mp

        self.names = list(names)
        self._failed, self._died = failed, died
        ctx = mp.get_context("spawn")
        self.tasks = ctx.Queue(maxsize=max_tasks)
        self.results = ctx.Queue()
        self.procs: list = []
        for rank, (name, a) in enumerate(zip(self.names, args, strict=True)):
            p = ctx.Process(
                target=target,
                args=(rank, *a, self.tasks, self.results),
                daemon=True,
                name=f"{label}-{name}-{rank}",
            )
            start_without_main(p)
            self.procs.append(p)

    @property
    def alive(self) -> bool:
        """Whether the pool has workers and every one of them is running."""
        return bool(self.procs) and all(p.is_alive() for p in self.procs)

    def get(self, timeout: float = float("inf")):
        """The next message from a worker. Raises ``failed(...)`` for an error message,
        ``died(...)`` when a worker died without a reply, TimeoutError after ``timeout``
        seconds without a message."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.results.get(timeout=POLL_S)
            except queue.Empty:
                dead = [
                    (self.names[i], p.exitcode)
                    for i, p in enumerate(self.procs)
                    if not p.is_alive()
                ]
                if dead:
                    raise self._died(dead) from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no reply from the workers in {timeout:.0f} s") from None
                continue
            if msg[0] == "error":
                raise self._failed(self.names[msg[1]], msg[-1])
            return msg

    def wait_ready(self, timeout: float = float("inf")) -> list:
        """Wait for every worker's ``ready`` message; returns their payloads by rank."""
        payloads: list = [None] * len(self.procs)
        for _ in self.procs:
            msg = self.get(timeout)
            if msg[0] != "ready":
                raise RuntimeError(f"worker {self.names[msg[1]]} spoke before it was ready")
            payloads[msg[1]] = msg[-1]
        return payloads

    def put(self, task) -> None:
        """Queue a task for whichever worker is free first."""
        self.tasks.put(task)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers: ``None`` for each, then wait up to ``timeout`` seconds, then
        terminate (and kill) those still running; close the queues."""
        procs, self.procs = self.procs, []
        for p in procs:
            if p.is_alive():
                with contextlib.suppress(queue.Full, OSError, ValueError):
                    self.tasks.put_nowait(None)
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join(5.0)
        for q in (self.tasks, self.results):
            q.cancel_join_thread()
            q.close()
