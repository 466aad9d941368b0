"""Chunks of input pairs, packed into token-budget batches: what the pipeline's tokenize stage
makes.

:func:`chunked` cuts a stream of ``(instruction, text)`` pairs into :class:`Chunk` s (small
first, so the device starts at once); :func:`pack_chunks` joins, tokenizes (a
:class:`~llm2vec_fast.text.TextProcessor`) and packs each into
:class:`~llm2vec_fast.packing.PackedBatch` es; :func:`split_batch` halves a batch that ran out
of memory; :func:`default_token_budget` is a batch's token budget when the caller names none.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llm2vec_fast.packing import PackedBatch, pack_token_ids

__all__ = [
    "CPU_TOKEN_BUDGET",
    "Chunk",
    "ChunkResult",
    "PackedChunk",
    "check_batch_args",
    "chunked",
    "collect_embeddings",
    "default_token_budget",
    "empty_pooled_texts",
    "pack_chunks",
    "split_batch",
    "warn_empty_pooled",
]


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


@dataclass
class PackedChunk:
    """A chunk and its packed batches (the tokenize stage's output)."""

    chunk: Chunk
    batches: list[PackedBatch]


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


def check_batch_args(batch_size, max_tokens_per_batch) -> int | None:
    """``encode``'s ``batch_size`` and ``max_tokens_per_batch`` checked; ``None`` (the
    device's default budget, chosen when the device is known: :func:`default_token_budget`)
    stays ``None``."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if max_tokens_per_batch is None:
        return None
    if not isinstance(max_tokens_per_batch, int) or max_tokens_per_batch <= 0:
        raise ValueError(
            f"max_tokens_per_batch must be a positive integer; got {max_tokens_per_batch!r}"
        )
    return max_tokens_per_batch


def collect_embeddings(results, n: int | None, hidden: int, token_level: bool, as_numpy: bool):
    """The chunks' embeddings as one ``[n, hidden]`` float32 tensor (``n`` None: a stream, in
    the order the chunks come), or for token embeddings one list of per-text arrays (tensors
    unless ``as_numpy``); warns about texts with an empty pooled span."""
    empty: list[int] = []  # non-blank texts with an empty pooled span (warned about)
    parts: list = []
    out = None if token_level or n is None else torch.empty(n, hidden, dtype=torch.float32)
    for res in results:
        empty += empty_pooled_texts(res.chunk)
        if token_level:
            parts.extend(e if as_numpy else torch.from_numpy(e) for e in res.embeddings)
        elif out is None:
            parts.append(torch.from_numpy(res.embeddings))
        else:
            out[res.chunk.offset : res.chunk.offset + res.chunk.size] = torch.from_numpy(
                res.embeddings
            )
    warn_empty_pooled(empty, stacklevel=4)
    if out is not None:
        return out
    if not parts:
        raise ValueError("encode() got an empty iterator of sentences")
    return parts if token_level else torch.cat(parts)


def empty_pooled_texts(chunk) -> list[int]:
    """Input positions of the chunk's non-blank texts whose pooled span came out empty."""
    return [chunk.offset + i for i in chunk.empty_pooled if chunk.pairs[i][1].strip()]


def warn_empty_pooled(indices: list[int], stacklevel: int = 3) -> None:
    """A warning naming (at most five of) the inputs whose pooled span is empty (a blank text
    is the caller's choice, embedded as the official library does, silently)."""
    if not indices:
        return
    n = len(indices)
    shown = ", ".join(map(str, indices[:5])) + (", ..." if n > 5 else "")
    warnings.warn(
        f"llm2vec_fast: {n} non-blank text{'s have' if n > 1 else ' has'} an empty pooled "
        f"span (input {shown}): no token of the text is pooled (it tokenizes to nothing, or "
        "nothing of it fits in doc_max_length tokens), so its embedding does not depend on it",
        UserWarning,
        stacklevel=stacklevel,
    )
