"""The overlapped input pipeline behind ``LLM2Vec.encode``: the device never waits for the CPU.

Texts flow in *chunks* (a few thousand texts; the first ones small, so the device starts at
once) through three stages::

    thread "tokenize":  chunk -> prompt joining, doc_max_length cut, C++ tokenizer (GIL
                        released, all cores), C++ packer -> token-budget batches
        -> queue (at most ``prefetch_chunks`` packed chunks)
    thread "transfer":  batch -> one pinned host buffer -> device copy on a side stream,
                        an event recorded behind it
        -> queue (at most ``prefetch_batches`` batches ready on the device)
    caller's thread:    waits on the batch's event (on the device, not the host), runs the
                        model and pooling, starts the result's copy back into pinned memory,
                        and only then finishes the *previous* batch (waits for its copy,
                        writes the rows in input order): the device always has the next
                        batch queued behind the current one.

So while batch ``k`` runs on the device, batch ``k+1`` is on its way there and the next chunk
is being tokenized and packed. Memory stays bounded (a few chunks of token ids on the host, a
few batches of ids on the device), so the input may be an iterator far larger than memory:
:meth:`EncodePipeline.__iter__` hands back each chunk's embeddings, in input order, as soon
as its last batch finishes.

On the CPU the same threads run (tokenization overlaps the model, which matters little there);
the copies are plain. ``overlap=False`` (or ``LLM2VEC_FAST_PIPELINE=0``) runs every stage in
the caller's thread, one after another: the sequential baseline, and a debugging aid.

An error in a stage (a bad input item in a stream, a tokenizer error) is raised in the
caller's thread after the chunks before it have been handed back; leaving the loop early
(``break``, an exception, Ctrl-C) stops the threads and frees what they hold.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llm2vec_fast.packing import PackedBatch, pack_token_ids

__all__ = [
    "Chunk",
    "ChunkResult",
    "EncodePipeline",
    "PackedChunk",
    "chunked",
    "default_token_budget",
    "in_background",
    "overlap_default",
    "pack_chunks",
]

_POLL_S = 0.1  # how often a blocked stage checks whether it should stop


# The CPU's default token budget per forward pass (measured: bench/README.md, "llm2vec-fast vs
# the official llm2vec, CPU"): small batches keep the MLP's [tokens, intermediate] activations in
# the caches, which on a CPU outweighs the larger matrix products of bigger batches.
CPU_TOKEN_BUDGET = 1024


def default_token_budget(device: torch.device | str, batch_size: int, max_length: int) -> int:
    """The token budget of a batch when the caller names none: ``batch_size * max_length`` on
    an accelerator (large batches fill it); on a CPU at most :data:`CPU_TOKEN_BUDGET` (and never
    under ``max_length``, so the longest text still fits)."""
    budget = batch_size * max_length
    if torch.device(device).type == "cpu":
        budget = min(budget, max(CPU_TOKEN_BUDGET, max_length))
    return budget


def overlap_default() -> bool:
    """Threads on unless ``LLM2VEC_FAST_PIPELINE=0``."""
    return os.environ.get("LLM2VEC_FAST_PIPELINE", "1").strip().lower() not in ("0", "false", "off")


@dataclass
class Chunk:
    """Consecutive input items: ``pairs[i]`` is input number ``offset + i``."""

    index: int
    offset: int
    pairs: list[tuple[str, str]]
    meta: Any = None  # carried through untouched (the batch job's shard records)
    # the number of texts when ``pairs`` is not kept (a worker gets packed batches only)
    count: int | None = None
    # set by pack_chunks: the items whose pooled span is empty (no token of the text is pooled:
    # it tokenizes to nothing, or nothing of it is left after the doc_max_length cut)
    empty_pooled: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        """The number of texts in the chunk."""
        return len(self.pairs) if self.count is None else self.count


@dataclass
class ChunkResult:
    """A finished chunk: its embeddings in chunk order and what it took.

    ``embeddings`` is float32 ``[n, hidden]`` (rows of texts in ``failed`` are NaN), or for
    token-level output a list of float32 ``[n_pooled_i, hidden]`` arrays (None where failed).
    """

    chunk: Chunk
    embeddings: Any
    tokens: int = 0
    batches: int = 0
    oom_splits: int = 0
    failed: list[int] = field(default_factory=list)


def chunked(
    pairs: Iterable[tuple[str, str]], chunk_size: int, first: int | None = None
) -> Iterator[Chunk]:
    """Cut a stream of pairs into chunks; sizes start at ``first`` and double up to
    ``chunk_size`` (a small first chunk starts the device sooner)."""
    size = max(1, min(first or chunk_size, chunk_size))
    buf: list[tuple[str, str]] = []
    index = offset = 0
    for pair in pairs:
        buf.append(pair)
        if len(buf) >= size:
            yield Chunk(index, offset, buf)
            index, offset, buf = index + 1, offset + len(buf), []
            size = min(size * 2, chunk_size)
    if buf:
        yield Chunk(index, offset, buf)


# ------------------------------------------------------------------------------ threads


class _Stop(Exception):
    """Raised inside a stage when the pipeline is closed."""


class _Failed:
    """An exception carried from a stage to the caller's thread."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()
_IDLE = object()  # nothing arrived in time: the consumer hands out what it holds
_IDLE_S = 0.002


class _Background:
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
                self._q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue
        raise _Stop

    def _run(self, source: Iterator) -> None:
        try:
            for item in source:
                self._put(item)
            self._put(_END)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            try:
                self._put(_Failed(exc))
            except _Stop:
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
        """The next item; with ``idle_after`` seconds, :data:`_IDLE` when none came by then."""
        if self._done:
            raise StopIteration
        t0 = time.perf_counter()
        while True:
            timeout = _POLL_S
            if idle_after is not None:
                timeout = min(timeout, max(0.0, t0 + idle_after - time.perf_counter()))
            try:
                item = self._q.get(timeout=timeout)
                break
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stop from None
                if not self._thread.is_alive() and self._q.empty():
                    raise RuntimeError("an llm2vec-fast pipeline thread died") from None
                if idle_after is not None and time.perf_counter() - t0 >= idle_after:
                    self.wait_s += time.perf_counter() - t0
                    return _IDLE
        self.wait_s += time.perf_counter() - t0
        if item is _END:
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


class _Inline:
    """The same interface as :class:`_Background`, run in the caller's thread."""

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


# ------------------------------------------------------------------------------ stages


@dataclass
class PackedChunk:
    """A chunk and its packed batches (the tokenize stage's output)."""

    chunk: Chunk
    batches: list[PackedBatch]


@dataclass
class _Ready:
    """A batch whose tensors are on (or on their way to) the device."""

    chunk: Chunk
    batch: PackedBatch
    on_device: PackedBatch  # the same batch as torch tensors on the device
    event: Any  # torch.cuda.Event after the copy, or None


@dataclass
class _ChunkEnd:
    chunk: Chunk


@dataclass
class _Pending:
    """A launched batch whose result is on its way back to the host."""

    chunk: Chunk
    batch: PackedBatch
    result: Any  # pinned float32 tensor, or (pinned float32 [kept, hidden], counts list)
    event: Any


class EncodePipeline:
    """Chunks of ``(instruction, text)`` pairs in, each chunk's embeddings out, in order.

    Args:
        text: the :class:`~llm2vec_fast.text.TextProcessor` that turns chunks into token ids
            (None when ``packed`` is given).
        runner: the :class:`~llm2vec_fast.runner.EncoderRunner` that runs the batches.
        chunks: an iterable of :class:`Chunk` (see :func:`chunked`); consumed lazily, on the
            tokenize thread. Or None, and ``packed``: an iterable of :class:`PackedChunk`,
            batches packed already (consumed lazily on the tokenize thread all the same).
        max_tokens_per_batch, batch_size: the packer's token budget and text limit.
        token_level: hand back each text's token embeddings instead of pooled vectors.
        overlap: run the stages on threads (default: :func:`overlap_default`).
        prefetch_chunks, prefetch_batches: queue bounds (packed chunks; batches on device).
        split_on_oom: on out-of-memory, split the batch in two (by tokens and count) and run
            the halves; a text that does not fit alone is reported in ``failed`` (NaN row).
            Off: the error propagates.
        run_batch: replaces the model call ``(on_device, batch) -> hidden``: the batch on the
            device and as packed (tests, the batch job).
        on_batch: called with each finished :class:`PackedBatch` (progress bars).
        stop: the event set when the pipeline closes (a source that blocks can poll it).
    """

    def __init__(
        self,
        text,
        runner,
        chunks: Iterable[Chunk] | None,
        *,
        max_tokens_per_batch: int = 0,
        batch_size: int = 0,
        packed: Iterable[PackedChunk] | None = None,
        token_level: bool = False,
        overlap: bool | None = None,
        prefetch_chunks: int = 1,
        prefetch_batches: int = 3,
        split_on_oom: bool = False,
        run_batch: Callable | None = None,
        on_batch: Callable[[PackedBatch], None] | None = None,
        stop: threading.Event | None = None,
    ):
        self.runner = runner
        self.budget = int(max_tokens_per_batch)
        self.batch_size = int(batch_size)
        self.token_level = token_level
        self.overlap = overlap_default() if overlap is None else bool(overlap)
        self.split_on_oom = split_on_oom
        self.run_batch = run_batch
        self.on_batch = on_batch
        self.device = runner.device
        self.cuda = self.device.type == "cuda"
        self.hidden = runner.hidden_size
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.stats = {"texts": 0, "tokens": 0, "batches": 0, "chunks": 0, "oom_splits": 0}
        self._busy = {"tokenize_s": 0.0, "transfer_s": 0.0}
        self._stop = stop or threading.Event()
        if (chunks is None) == (packed is None):
            raise ValueError("give chunks or packed, not both")
        if chunks is not None:
            if self.budget <= 0 or self.batch_size <= 0:
                raise ValueError("max_tokens_per_batch and batch_size must be positive")
            packed = pack_chunks(text, chunks, self.budget, self.batch_size, self._busy)
        else:
            packed = iter(packed)
        if self.overlap:
            self._packed = _Background(packed, prefetch_chunks, self._stop, "tokenize")
            self._ready = _Background(
                self._transfer_stage(self._packed), prefetch_batches, self._stop, "transfer"
            )
        else:
            self._packed = _Inline(packed)
            self._ready = _Inline(self._transfer_stage(self._packed))
        self._t0 = time.perf_counter()
        self._closed = False

    # -- stage 2: host -> device (transfer thread)

    def _transfer_stage(self, packed: Iterable[PackedChunk]) -> Iterator:
        for item in packed:
            for batch in item.batches:
                t0 = time.perf_counter()
                on_device, event = self._to_device(batch)
                self._busy["transfer_s"] += time.perf_counter() - t0
                yield _Ready(item.chunk, batch, on_device, event)
            yield _ChunkEnd(item.chunk)

    def _to_device(self, batch: PackedBatch) -> tuple[PackedBatch, Any]:
        if not self.cuda:
            return batch.to(self.device), None
        # one pinned buffer, one copy: ids | position ids | pool mask | cu_seqlens (int32)
        n, b = batch.n_tokens, batch.n_texts
        host = torch.empty(3 * n + b + 1, dtype=torch.int32, pin_memory=True)
        h = host.numpy()
        h[:n] = batch.input_ids
        h[n : 2 * n] = batch.position_ids
        h[2 * n : 3 * n] = batch.pool_mask
        h[3 * n :] = batch.cu_seqlens
        with torch.cuda.stream(self._copy_stream):
            dev = host.to(self.device, non_blocking=True)
            on_device = PackedBatch(
                batch.indices,
                input_ids=dev[:n].long(),
                cu_seqlens=dev[3 * n :],
                position_ids=dev[n : 2 * n],
                pool_mask=dev[2 * n : 3 * n].bool(),
                max_seqlen=int(batch.max_seqlen),
            )
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        return on_device, event

    # -- stage 3: the model (caller's thread)

    def __iter__(self) -> Iterator[ChunkResult]:
        pending: _Pending | None = None  # launched, its result on the way back
        ended: Chunk | None = None  # ended while its last batch was pending
        results: dict[int, ChunkResult] = {}

        def done(chunk: Chunk) -> ChunkResult:
            res = results.pop(chunk.index, None) or self._new_result(chunk)
            self.stats["chunks"] += 1
            self.stats["texts"] += chunk.size
            return res

        def flush() -> Iterator[ChunkResult]:
            """Finish the pending batch; hand out the chunk that waited for it."""
            nonlocal pending, ended
            if pending is not None:
                self._finish(pending, results)
                pending = None
            if ended is not None:
                chunk, ended = ended, None
                yield done(chunk)

        try:
            while True:
                try:
                    # while a result is on its way back, wait only briefly for the next batch:
                    # a stream that pauses must not hold finished results back
                    holding = pending is not None or ended is not None
                    item = self._ready.next(_IDLE_S if holding else None)
                except StopIteration:
                    break
                except _Stop:
                    raise
                except Exception:  # a stage failed: hand out what is complete, then raise
                    yield from flush()
                    raise
                if item is _IDLE:
                    yield from flush()
                    continue
                if isinstance(item, _ChunkEnd):
                    if ended is not None:
                        yield from flush()
                    if pending is not None and pending.chunk is item.chunk:
                        ended = item.chunk  # handed out after the next batch is launched
                    else:
                        yield done(item.chunk)
                    continue
                if item.chunk.index not in results:
                    results[item.chunk.index] = self._new_result(item.chunk)
                try:
                    launched = self._launch(item.chunk, item.batch, item.on_device, item.event)
                except Exception as exc:
                    if not (self.split_on_oom and _is_oom(exc)):
                        raise
                    chunk, batch = item.chunk, item.batch
                    del item, exc  # free the batch's device tensors before retrying
                    yield from flush()
                    self._split_and_run(results[chunk.index], batch)
                    continue
                # the device has the new batch queued: now wait for the previous one's result
                yield from flush()
                pending = launched
                if not self.overlap:  # the sequential baseline: nothing in flight
                    yield from flush()
            yield from flush()
        except _Stop:
            pass
        finally:
            self.close()

    def _new_result(self, chunk: Chunk) -> ChunkResult:
        n = chunk.size
        emb: Any = [None] * n if self.token_level else np.full((n, self.hidden), np.nan, np.float32)
        return ChunkResult(chunk, emb)

    def _launch(self, chunk: Chunk, batch: PackedBatch, on_device: PackedBatch, event) -> _Pending:
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)  # the device waits for the copy; the host does not
            batch_tensors = (on_device.input_ids, on_device.position_ids, on_device.pool_mask)
            for t in (*batch_tensors, on_device.cu_seqlens):
                t.record_stream(stream)
        with torch.inference_mode():
            if self.run_batch is not None:
                hidden = self.run_batch(on_device, batch)
            else:
                hidden = self.runner.run_model(on_device)
            if self.token_level:
                # the kept tokens, and where each text's rows end
                out, extra = self.runner.token_rows(hidden, on_device)
            else:
                out, extra = self.runner.pool(hidden, on_device).float(), None
        if not self.cuda:
            return _Pending(chunk, batch, (out, extra), None)
        host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(out, non_blocking=True)
        host_extra = None
        if extra is not None:
            host_extra = torch.empty(extra.shape, dtype=extra.dtype, pin_memory=True)
            host_extra.copy_(extra, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return _Pending(chunk, batch, (host, host_extra), done)

    def _finish(self, p: _Pending, results: dict[int, ChunkResult]) -> None:
        if p.event is not None:
            p.event.synchronize()
        out, extra = p.result
        res = results[p.chunk.index]
        self._store(res, p.batch, out, extra)

    def _store(self, res: ChunkResult, batch: PackedBatch, out, extra) -> None:
        if self.token_level:
            ends = extra.tolist()
            for i, a, e in zip(batch.indices.tolist(), [0, *ends[:-1]], ends):
                res.embeddings[i] = out[a:e].numpy()
        else:
            res.embeddings[batch.indices] = out.numpy()
        res.tokens += batch.n_tokens
        res.batches += 1
        self.stats["tokens"] += batch.n_tokens
        self.stats["batches"] += 1
        if self.on_batch is not None:
            self.on_batch(batch)

    def _split_and_run(self, res: ChunkResult, batch: PackedBatch) -> None:
        """Out of memory: run the batch again as halves, synchronously (and their halves)."""
        todo = [batch]
        while todo:
            batch = todo.pop(0)
            _free_device_cache()
            if batch.n_texts == 1:
                res.failed.append(int(batch.indices[0]))
                if self.token_level:
                    res.embeddings[int(batch.indices[0])] = None
                else:
                    res.embeddings[batch.indices] = np.nan
                continue
            res.oom_splits += 1
            self.stats["oom_splits"] += 1
            halves = split_batch(batch)
            for half in halves:
                try:
                    on_device, event = self._to_device(half)
                    p = self._launch(res.chunk, half, on_device, event)
                    if p.event is not None:
                        p.event.synchronize()
                    self._store(res, half, *p.result)
                except Exception as inner:
                    if not _is_oom(inner):
                        raise
                    todo.append(half)

    def close(self) -> None:
        """Stop the threads and drop what they hold (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._ready.close()
        self._packed.close()
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()

    def summary(self) -> dict:
        """Counts and times: texts, tokens, batches, chunks, oom_splits, ``wall_s``,
        ``input_wait_s`` (the caller's thread blocked waiting for a ready batch),
        ``input_wait_fraction``, and the stages' busy times."""
        wall = time.perf_counter() - self._t0
        wait = self._ready.wait_s
        return {
            **self.stats,
            "overlap": self.overlap,
            "wall_s": wall,
            "input_wait_s": wait,
            "input_wait_fraction": wait / wall if wall > 0 else 0.0,
            **self._busy,
        }


def pack_chunks(
    text, chunks: Iterable[Chunk], max_tokens_per_batch: int, batch_size: int, busy=None
) -> Iterator[PackedChunk]:
    """Each chunk joined by the :class:`~llm2vec_fast.text.TextProcessor` ``text``
    (instructions, the doc_max_length cut, prompt wrapping), tokenized and packed into
    batches; ``busy["tokenize_s"]`` adds up the time spent."""
    for chunk in chunks:
        t0 = time.perf_counter()
        batches: list[PackedBatch] = []
        if chunk.pairs:
            ids, offsets, pool_lengths = text.token_arrays(text.joined(chunk.pairs))
            chunk.empty_pooled = _empty_pooled(ids, offsets, pool_lengths, text.max_length)
            batches = pack_token_ids(
                ids,
                pool_lengths,
                offsets=offsets,
                max_length=text.max_length,
                max_tokens_per_batch=max_tokens_per_batch,
                max_batch_size=batch_size,
            )
        if busy is not None:
            busy["tokenize_s"] += time.perf_counter() - t0
        yield PackedChunk(chunk, batches)


def _empty_pooled(ids, offsets, pool_lengths, max_length: int) -> list[int]:
    """The texts whose pooled span is empty, as the packer will mark it: the last
    ``min(pool_length, length)`` tokens of each (truncated) sequence."""
    if offsets is None:
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
    else:
        lengths = np.diff(np.asarray(offsets, dtype=np.int64))
    if max_length > 0:
        lengths = np.minimum(lengths, max_length)
    pooled = np.minimum(np.asarray(pool_lengths, dtype=np.int64), lengths)
    return np.flatnonzero(pooled <= 0).tolist()


def in_background(source: Iterator, maxsize: int = 1, name: str = "tokenize"):
    """``source`` run on a daemon thread, at most ``maxsize`` items ahead; iterate the
    returned object, and ``close()`` it when done (stops the thread). Errors are raised to the
    reader."""
    return _Background(source, maxsize, threading.Event(), name)


def split_batch(batch: PackedBatch) -> list[PackedBatch]:
    """A batch as two (or more) smaller ones with the same texts: half the tokens and half
    the texts at most; ``indices`` keep pointing into the same chunk."""
    cu = batch.cu_seqlens.astype(np.int64)
    kept = np.concatenate([[0], np.cumsum(batch.pool_mask, dtype=np.int64)])
    pool = kept[cu[1:]] - kept[cu[:-1]]  # the pool mask is the last `pool` tokens of each text
    parts = pack_token_ids(
        batch.input_ids,
        pool,
        offsets=cu,
        max_length=0,
        max_tokens_per_batch=max(1, batch.n_tokens // 2),
        max_batch_size=max(1, math.ceil(batch.n_texts / 2)),
    )
    return [dataclasses.replace(p, indices=batch.indices[p.indices]) for p in parts]


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
