"""Encode on several devices at once: one worker process per device.

``LLM2Vec.encode(..., device=["cuda:0", "cuda:1"])`` runs here: several devices only when the
caller names them (``device=None`` runs in the calling process, whatever the number of GPUs).
The official llm2vec pickles the model into a process pool and crashes (its issues #121 and
#52); here each worker is a fresh process (``spawn``) that loads the model itself, from the
encoder's :class:`~llm2vec_fast.loading.LoadSpec` (the paths ``LLM2Vec.from_pretrained`` was
given), and runs packed batches through an :class:`~llm2vec_fast.runner.EncoderRunner`.

Division of labour:

- The parent reads the input lazily, in the same chunks as on one device, tokenizes and packs
  them on a thread (:mod:`llm2vec_fast.pipeline`), puts the batches on one shared queue (at
  most a few per worker out at once, so memory stays bounded), and shows the one progress bar.
- Each worker takes the next batch from the queue as soon as it is free (a faster device takes
  more batches) and runs its batches through the same pipeline as a single device (the next
  batch copied to the device while one runs, results copied back one batch late); it sends
  each result back with the batch's number, and the parent writes it into place, so the
  output is in input order.
- The calling process's own model stays where it is, idle: the device it lives on holds that
  copy as well as its worker's (where memory is tight, move it to the CPU and name the
  devices).
- The workers stay alive between ``encode`` calls (a pool per device list, kept on the
  encoder), so the model is loaded once per device, not once per call.
  ``LLM2Vec.close_device_pool()`` ends them; they also end with the parent process.

A worker rebuilds the model from its paths, so the parent's weights must still be the loaded
ones: a model whose weights were changed in place after loading (training, a dtype change) is
refused with a clear error. The workers do not re-run the parent's main script (as ``spawn`` otherwise does), so a
script needs no ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
import traceback
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llm2vec_fast.loading import LoadSpec, load
from llm2vec_fast.pipeline import (
    Chunk,
    ChunkResult,
    EncodePipeline,
    PackedChunk,
    chunked,
    default_token_budget,
    in_background,
    pack_chunks,
)
from llm2vec_fast.runner import EncoderRunner
from llm2vec_fast.workers import WorkerPool

if TYPE_CHECKING:
    from llm2vec_fast.packing import PackedBatch

__all__ = [
    "DevicePool",
    "check_rebuild",
    "close_pools",
    "device_pools",
    "encode_on_devices",
    "load_fingerprint",
    "load_runner",
    "rebuild_problem",
    "run_on_devices",
]

# Batches handed out and not yet answered, per worker: one running, one on its way back, the
# rest queued on the worker's copy stage.
_IN_FLIGHT_PER_WORKER = 6
# How long a worker may take to load the model before the parent gives up.
_START_TIMEOUT_S = 900.0


def load_fingerprint(model: torch.nn.Module) -> tuple:
    """What identifies the model's weights as the loaded ones: each parameter's name, object,
    dtype and in-place version counter (bumped by every in-place write: optimiser steps,
    ``load_state_dict``, ``copy_``). Moving the model to another device keeps it."""
    return tuple((name, id(p), p.dtype, p._version) for name, p in model.named_parameters())


def rebuild_problem(
    spec: LoadSpec | None, fingerprint: tuple | None, model: torch.nn.Module
) -> str | None:
    """Why worker processes cannot rebuild ``model`` from ``spec`` (None when they can):
    there is no spec, or the weights changed since ``fingerprint`` was taken at load time."""
    if spec is None:
        return (
            "the model was not loaded with LLM2Vec.from_pretrained, so a worker process cannot "
            "load it again; save() it and load it with LLM2Vec.from_pretrained"
        )
    if load_fingerprint(model) != fingerprint:
        return (
            "the model's weights (or their dtype) changed after LLM2Vec.from_pretrained, and "
            "each worker process loads the model from its paths, so it would compute different "
            "embeddings; save() the model and load it again, or encode on one device"
        )
    return None


def check_rebuild(
    spec: LoadSpec | None, fingerprint: tuple | None, model: torch.nn.Module, devices
) -> None:
    """Raise ``ValueError`` when worker processes cannot rebuild ``model`` (:func:`rebuild_problem`)."""
    problem = rebuild_problem(spec, fingerprint, model)
    if problem is not None:
        raise ValueError(f"cannot encode on several devices {list(devices)}: {problem}")


def load_runner(spec: LoadSpec, device: str) -> EncoderRunner:
    """``spec``'s model on ``device`` in an :class:`EncoderRunner`, its kernels chosen as
    ``LLM2Vec.from_pretrained`` chooses them (``attn_implementation="auto"``)."""
    loaded = load(spec)
    model = loaded.model.to(device).eval()
    runner = EncoderRunner(model, loaded.spec.pooling_mode or "mean", loaded.tokenizer)
    if spec.attn_implementation == "auto":
        runner.select_kernels()
    return runner


def _worker(
    rank: int,
    device: str,
    spec: LoadSpec,
    n_threads: int,
    in_q,
    out_q,
) -> None:
    """One worker: load the model on ``device``, then run batches from ``in_q`` until None."""
    try:
        if n_threads > 0:
            torch.set_num_threads(n_threads)
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        runner = load_runner(spec, device)
    except BaseException:
        out_q.put(("error", rank, None, traceback.format_exc()))
        return
    out_q.put(("ready", rank, None, os.getpid()))
    stash = [in_q.get()]
    while True:
        first = stash.pop()
        if first is None:
            return
        job, _, _, settings = first
        try:
            runner.pooling_mode = settings["pooling_mode"]
            stop = threading.Event()
            pipe = EncodePipeline(
                None,
                runner,
                None,
                packed=_job_batches(first, in_q, stash, stop),
                token_level=settings["token_level"],
                stop=stop,
            )
            for res in pipe:
                out_q.put(("done", rank, job, (res.chunk.meta, res.embeddings)))
        except BaseException:
            out_q.put(("error", rank, job, traceback.format_exc()))
            return


def _job_batches(first, in_q, stash: list, stop: threading.Event) -> Iterator[PackedChunk]:
    """One job's batches from the queue, each as a chunk of its own (its texts in batch
    order); ends at another job's first item or None, which it leaves in ``stash``. Runs on
    the pipeline's tokenize thread, so the next batch is copied to the device while one runs."""
    item = first
    while True:
        job, batch_no, batch, _ = item
        batch = dataclasses.replace(batch, indices=np.arange(batch.n_texts, dtype=np.int64))
        # the batch is packed already: its chunk keeps no texts, only their number
        yield PackedChunk(Chunk(batch_no, 0, [], meta=batch_no, count=batch.n_texts), [batch])
        while True:
            try:
                item = in_q.get(timeout=0.1)
                break
            except queue.Empty:
                if stop.is_set():
                    return
        if item is None or item[0] != job:
            stash.append(item)
            return


class DevicePool:
    """Worker processes, one per device, each holding its own copy of the model.

    Args:
        load_args: the :class:`~llm2vec_fast.loading.LoadSpec` each worker loads.
        devices: one worker per entry (``"cuda:0"``, ``"cpu"``; an entry may repeat).
    """

    def __init__(self, load_args: LoadSpec, devices: Sequence[str]):
        self.devices = list(devices)
        self._job = 0
        n_cpu = sum(d == "cpu" for d in self.devices)
        threads = max(1, (os.cpu_count() or 1) // n_cpu) if n_cpu else 0
        self._pool = WorkerPool(
            _worker,
            [(d, load_args, threads if d == "cpu" else 0) for d in self.devices],
            self.devices,
            failed=lambda device, tb: RuntimeError(f"encode worker on {device} failed:\n{tb}"),
            died=lambda dead: RuntimeError(
                "encode worker process(es) died without a reply: "
                + ", ".join(f"{d} (exit code {c})" for d, c in dead)
            ),
        )
        try:
            self.pids: list[int] = self._pool.wait_ready(_START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self._pool.alive

    def run(
        self,
        batches: Iterable[tuple[Any, PackedBatch]],
        settings: dict,
        show_progress_bar: bool,
        total: int | None = None,
    ) -> Iterator[tuple[Any, PackedBatch, Any]]:
        """Run ``(key, batch)`` items on the workers, read lazily with at most a few batches
        per worker out at once; yield ``(key, batch, result)`` as results arrive (any order):
        float32 CPU ``[b, hidden]`` tensors in batch order, or with
        ``settings["token_level"]`` lists of float32 CPU ``[n_pooled_i, hidden]`` tensors.
        ``total``: the number of texts, for the progress bar. Any failure closes the pool."""
        from tqdm.auto import tqdm

        self._job += 1
        job = self._job
        bar = tqdm(
            total=total,
            unit="text",
            desc=f"Encoding ({len(self.devices)} devices)",
            disable=not show_progress_bar,
        )
        tokens, start = 0, time.perf_counter()
        limit = _IN_FLIGHT_PER_WORKER * len(self.devices)
        out: dict[int, tuple[Any, PackedBatch]] = {}
        items = iter(batches)
        sent = 0
        exhausted = False
        try:
            while True:
                while not exhausted and len(out) < limit:
                    try:
                        key, batch = next(items)
                    except StopIteration:
                        exhausted = True
                        break
                    self._pool.put((job, sent, batch, settings))
                    out[sent] = (key, batch)
                    sent += 1
                if not out:
                    break
                _, _, msg_job, (batch_no, payload) = self._pool.get()
                if msg_job != job:  # cannot happen: a failed job closes the pool
                    raise RuntimeError("encode workers answered for another call")
                key, batch = out.pop(batch_no)
                if settings["token_level"]:
                    result: Any = [torch.from_numpy(e) for e in payload]
                else:
                    result = torch.from_numpy(payload)
                yield key, batch, result
                tokens += batch.n_tokens
                bar.update(batch.n_texts)
                bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f}")
        except BaseException:
            self.close()
            raise
        finally:
            bar.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers (politely, then by force) and free their devices."""
        self._pool.close(timeout)


def close_pools(pools: dict) -> None:
    """Close every pool in ``pools`` (an encoder's pools, by device list) and forget them."""
    while pools:
        _, pool = pools.popitem()
        pool.close()


def run_on_devices(
    pools: dict,
    spec: LoadSpec,
    devices: Sequence[str],
    batches: Iterable[tuple[Any, PackedBatch]],
    show_progress_bar: bool,
    settings: dict,
    total: int | None = None,
) -> Iterator[tuple[Any, PackedBatch, Any]]:
    """Run ``(key, batch)`` items on worker processes, one per device (see module doc), each
    loading ``spec``; yield ``(key, batch, result)`` in completion order. ``pools``: the
    caller's pools by device list, reused across calls. ``settings``: ``pooling_mode`` and
    ``token_level``."""
    key = tuple(devices)
    pool = pools.get(key)
    if pool is None or not pool.alive:
        if pool is not None:
            pool.close()
        pool = pools[key] = DevicePool(spec, devices)
    try:
        yield from pool.run(batches, settings, show_progress_bar, total)
    except BaseException:
        pools.pop(key, None)
        raise


def device_pools(owner) -> dict:
    """A dict of pools closed when ``owner`` is garbage-collected (or on :func:`close_pools`)."""
    pools: dict = {}
    weakref.finalize(owner, close_pools, pools)
    return pools


def encode_on_devices(
    pools: dict,
    spec: LoadSpec,
    devices: Sequence[str],
    text,
    pairs: Iterable[tuple[str, str]],
    *,
    batch_size: int,
    max_tokens_per_batch: int | None,
    chunk_size: int,
    show_progress_bar: bool,
    total: int | None,
    pooling_mode: str,
    hidden_size: int,
    token_level: bool = False,
) -> Iterator[ChunkResult]:
    """``pairs`` encoded by worker processes, one per device: chunks tokenized (``text``, a
    :class:`~llm2vec_fast.text.TextProcessor`) and packed here on a thread, as on one device,
    their batches run by the workers as each frees up (:func:`run_on_devices`); each chunk's
    :class:`~llm2vec_fast.pipeline.ChunkResult` handed out, in input order, once all its
    batches are back."""
    if max_tokens_per_batch is None:  # the parent packs for every worker
        max_tokens_per_batch = default_token_budget(devices[0], batch_size, text.max_length)
    chunks = chunked(pairs, chunk_size, first=2 * batch_size)
    packed = in_background(pack_chunks(text, chunks, max_tokens_per_batch, batch_size))
    # every chunk passes through here before its batches, so chunks without texts (none
    # come from chunked()) and the order of completion can be tracked
    open_chunks: dict[int, ChunkResult] = {}
    missing: dict[int, int] = {}

    def items():
        for pc in packed:
            n = pc.chunk.size
            emb = [None] * n if token_level else np.empty((n, hidden_size), np.float32)
            open_chunks[pc.chunk.index] = ChunkResult(pc.chunk, emb)
            missing[pc.chunk.index] = n
            for b in pc.batches:
                yield pc.chunk, b

    settings = {"pooling_mode": pooling_mode, "token_level": token_level}
    next_index = 0
    try:
        for chunk, batch, result in run_on_devices(
            pools, spec, devices, items(), show_progress_bar, settings, total
        ):
            res = open_chunks[chunk.index]
            if token_level:
                for i, e in zip(batch.indices.tolist(), result):
                    res.embeddings[i] = e.numpy()
            else:
                res.embeddings[batch.indices] = result.numpy()
            res.tokens += batch.n_tokens
            res.batches += 1
            missing[chunk.index] -= batch.n_texts
            while missing.get(next_index) == 0:  # hand out finished chunks in order
                del missing[next_index]
                yield open_chunks.pop(next_index)
                next_index += 1
    finally:
        packed.close()
