"""Encode on several devices at once: one worker process per device.

``LLM2Vec.encode(..., device=["cuda:0", "cuda:1"])`` (and, by default, every visible GPU when
there are several) runs here. The official llm2vec pickles the model into a process pool and
crashes (its issues #121 and #52); here each worker is a fresh process (``spawn``) that loads
the model itself, from the paths ``LLM2Vec.from_pretrained`` was given.

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
refused with a clear error for an explicit device list, and the default falls back to one
device. The workers do not re-run the parent's main script (as ``spawn`` otherwise does), so a
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

from llm2vec_fast.pipeline import Chunk, EncodePipeline, PackedChunk
from llm2vec_fast.workers import WorkerPool

if TYPE_CHECKING:
    from llm2vec_fast.encoder import LLM2Vec
    from llm2vec_fast.packing import PackedBatch

__all__ = ["DevicePool", "default_devices", "load_fingerprint", "run_on_devices"]

# Batches handed out and not yet answered, per worker: one running, one on its way back, the
# rest queued on the worker's copy stage.
_IN_FLIGHT_PER_WORKER = 6
# How long a worker may take to load the model before the parent gives up.
_START_TIMEOUT_S = 900.0


def load_fingerprint(encoder: torch.nn.Module) -> tuple:
    """What identifies the encoder's weights as the loaded ones: each parameter's name, object,
    dtype and in-place version counter (bumped by every in-place write: optimiser steps,
    ``load_state_dict``, ``copy_``). Moving the model to another device keeps it."""
    return tuple((name, id(p), p.dtype, p._version) for name, p in encoder.model.named_parameters())


def _rebuild_problem(encoder: LLM2Vec) -> str | None:
    """Why worker processes cannot rebuild ``encoder`` from its paths (None when they can)."""
    if getattr(encoder, "_load_args", None) is None:
        return (
            "the model was not loaded with LLM2Vec.from_pretrained, so a worker process cannot "
            "load it again; save() it and load it with LLM2Vec.from_pretrained"
        )
    if load_fingerprint(encoder) != encoder._load_fingerprint:
        return (
            "the model's weights (or their dtype) changed after LLM2Vec.from_pretrained, and "
            "each worker process loads the model from its paths, so it would compute different "
            "embeddings; save() the model and load it again, or encode on one device"
        )
    return None


def default_devices(encoder: LLM2Vec) -> list[str] | None:
    """The devices ``encode(device=None)`` runs on when that is more than one: every visible GPU,
    when the model lives on a GPU, there are several, and workers can rebuild the model.
    None means: the model's own device, in this process."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    if encoder._device().type != "cuda" or _rebuild_problem(encoder) is not None:
        return None
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def check_devices(devices: Sequence) -> list[str]:
    """Validate a device list; return the devices as strings (``"cuda:1"``, ``"cpu"``)."""
    from llm2vec_fast.encoder import _check_device

    if len(devices) == 0:
        raise ValueError("device=[] names no device; give one or more, e.g. ['cuda:0', 'cuda:1']")
    out = []
    for d in devices:
        dev = _check_device(d)
        if dev.type == "cuda":
            index = torch.cuda.current_device() if dev.index is None else dev.index
            if index >= torch.cuda.device_count():
                raise ValueError(
                    f"device {d!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
                )
            dev = torch.device("cuda", index)
        out.append(str(dev))
    return out


def _worker(
    rank: int,
    device: str,
    load_args: dict,
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
        from llm2vec_fast.encoder import LLM2Vec

        model = LLM2Vec.from_pretrained(**load_args, device=device)
        model.eval()
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
            model.pooling_mode = settings["pooling_mode"]
            model.skip_instruction = settings["skip_instruction"]
            stop = threading.Event()
            pipe = EncodePipeline(
                model,
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
        # the chunk's pairs only count its texts here: the batch is packed already
        yield PackedChunk(Chunk(batch_no, 0, [("", "")] * batch.n_texts, meta=batch_no), [batch])
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
        load_args: the keyword arguments of ``LLM2Vec.from_pretrained`` (without ``device``).
        devices: one worker per entry (``"cuda:0"``, ``"cpu"``; an entry may repeat).
    """

    def __init__(self, load_args: dict, devices: Sequence[str]):
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


def _pools(encoder: LLM2Vec) -> dict[tuple[str, ...], DevicePool]:
    pools = encoder.__dict__.get("_device_pools")
    if pools is None:
        pools = {}
        encoder.__dict__["_device_pools"] = pools
        weakref.finalize(encoder, close_pools, pools)
    return pools


def close_pools(pools: dict) -> None:
    """Close every pool in ``pools`` (an encoder's ``_device_pools``) and forget them."""
    while pools:
        _, pool = pools.popitem()
        pool.close()


def run_on_devices(
    encoder: LLM2Vec,
    devices: Sequence[str],
    batches: Iterable[tuple[Any, PackedBatch]],
    show_progress_bar: bool,
    token_level: bool = False,
    total: int | None = None,
) -> Iterator[tuple[Any, PackedBatch, Any]]:
    """Run ``(key, batch)`` items on worker processes, one per device (see module doc); yield
    ``(key, batch, result)`` in completion order."""
    problem = _rebuild_problem(encoder)
    if problem is not None:
        raise ValueError(f"cannot encode on several devices {list(devices)}: {problem}")
    pools = _pools(encoder)
    key = tuple(devices)
    pool = pools.get(key)
    if pool is None or not pool.alive:
        if pool is not None:
            pool.close()
        pool = pools[key] = DevicePool(encoder._load_args, devices)
    settings = {
        "pooling_mode": encoder.pooling_mode,
        "skip_instruction": encoder.skip_instruction,
        "token_level": token_level,
    }
    try:
        yield from pool.run(batches, settings, show_progress_bar, total)
    except BaseException:
        pools.pop(key, None)
        raise
