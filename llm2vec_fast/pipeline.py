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

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm2vec_fast.background import IDLE, IDLE_S, Background, Inline, Stop, in_background
from llm2vec_fast.chunks import (
    Chunk,
    ChunkResult,
    PackedChunk,
    chunked,
    default_token_budget,
    pack_chunks,
    split_batch,
)
from llm2vec_fast.packing import PackedBatch

# Chunk ... pack_chunks: the stages' inputs and outputs, defined in llm2vec_fast.chunks and
# importable from here too.
__all__ = [
    "Chunk",
    "ChunkResult",
    "EncodePipeline",
    "PackedChunk",
    "chunked",
    "default_token_budget",
    "encode_chunks",
    "in_background",
    "overlap_default",
    "pack_chunks",
]


def overlap_default() -> bool:
    """Threads on unless ``LLM2VEC_FAST_PIPELINE=0``."""
    return os.environ.get("LLM2VEC_FAST_PIPELINE", "1").strip().lower() not in ("0", "false", "off")


# ------------------------------------------------------------------------------ stages


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
            self._packed = Background(packed, prefetch_chunks, self._stop, "tokenize")
            self._ready = Background(
                self._transfer_stage(self._packed), prefetch_batches, self._stop, "transfer"
            )
        else:
            self._packed = Inline(packed)
            self._ready = Inline(self._transfer_stage(self._packed))
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
                    item = self._ready.next(IDLE_S if holding else None)
                except StopIteration:
                    break
                except Stop:
                    raise
                except Exception:  # a stage failed: hand out what is complete, then raise
                    yield from flush()
                    raise
                if item is IDLE:
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
        except Stop:
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


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encode_chunks(
    text,
    runner,
    pairs: Iterable[tuple[str, str]],
    *,
    batch_size: int,
    max_tokens_per_batch: int | None,
    chunk_size: int,
    show_progress_bar: bool = False,
    total: int | None = None,
    token_level: bool = False,
    on_close: Callable[[dict], None] | None = None,
) -> Iterator[ChunkResult]:
    """Run ``pairs`` through an :class:`EncodePipeline` on ``runner``'s device; yield each
    chunk's :class:`ChunkResult` in input order, with a progress bar (``total`` texts, None for
    a stream). ``max_tokens_per_batch`` None: :func:`default_token_budget` for the device.
    ``on_close`` gets :meth:`EncodePipeline.summary` when the run ends (or stops early)."""
    from tqdm.auto import tqdm

    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    bar = tqdm(total=total, unit="text", desc="Encoding", disable=not show_progress_bar)
    start = time.perf_counter()
    seen = {"tokens": 0}

    def progress(batch: PackedBatch) -> None:
        seen["tokens"] += batch.n_tokens
        bar.update(batch.n_texts)
        rate = seen["tokens"] / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(tok_s=f"{rate:,.0f}", refresh=False)

    if max_tokens_per_batch is None:
        max_tokens_per_batch = default_token_budget(runner.device, batch_size, text.max_length)
    pipe = EncodePipeline(
        text,
        runner,
        chunked(pairs, chunk_size, first=2 * batch_size),
        max_tokens_per_batch=max_tokens_per_batch,
        batch_size=batch_size,
        token_level=token_level,
        on_batch=progress if show_progress_bar else None,
        # a list that fits in one batch has nothing to overlap: no threads (~1 ms a call)
        overlap=False if total is not None and total <= batch_size else None,
    )
    try:
        yield from pipe
    finally:
        pipe.close()
        bar.close()
        if on_close is not None:
            on_close(pipe.summary())
