"""Token ids -> padding-free packed batches under a token budget.

The C++ extension ``llm2vec_fast._C`` does the work; a numpy fallback with
identical output runs when the extension is not built (and warns once).

Semantics (the same in both):

- Text ``i`` is truncated on the right to ``max_length`` ids (``<= 0``: no
  truncation); ``len_i`` is its truncated length.
- Texts are sorted by ``len_i``, longest first; the sort is stable, so equal
  lengths keep their input order.
- In that order they are cut greedily into batches: a text joins the current
  batch while the batch's tokens stay ``<= max_tokens_per_batch`` and its text
  count stays ``<= max_batch_size`` (``<= 0``: no count limit). A text longer
  than the budget goes alone in its own batch. Empty texts are allowed.
- ``pool_mask`` marks the last ``min(pool_lengths[i], len_i)`` tokens of text
  ``i``: the pooled span sits at the end of the (truncated) sequence.

``PackedBatch.indices`` holds each text's input position, so results computed
per batch go back to input order with ``out[batch.indices] = batch_result``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

try:
    import llm2vec_fast._C as _C
except ImportError as exc:  # not built (or built for another Python)
    _C = None
    _EXTENSION_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _EXTENSION_ERROR = None

HAVE_EXTENSION: bool = _C is not None
"""True when the C++ packer ``llm2vec_fast._C`` is importable."""

_INT32_MAX = np.iinfo(np.int32).max
_warned_fallback = False

__all__ = ["HAVE_EXTENSION", "PackedBatch", "pack_token_ids"]


@dataclass(frozen=True, eq=False)
class PackedBatch:
    """One padding-free batch of ``b`` texts holding ``total`` tokens.

    The packer makes it of numpy arrays (below); :meth:`to` and :meth:`from_padded` make the
    same type of torch tensors on a device, the form the model and pooling take.

    Attributes:
        indices: int64 ``[b]``, the input position of each text, in batch order.
        input_ids: int32 ``[total]``, the texts' ids back to back.
        cu_seqlens: int32 ``[b + 1]``, prefix sums of the text lengths, from 0.
        position_ids: int32 ``[total]``, ``0 .. len-1`` inside each text.
        pool_mask: uint8 ``[total]``, 1 on the pooled tokens (the last
            ``min(pool_length, len)`` of each text), 0 elsewhere.
        max_seqlen: the longest text in the batch (0 when all are empty).
        labels: training only (:meth:`in_order` batches): long ``[total]``, the MNTP targets,
            ``-100`` where nothing is predicted; None elsewhere.

    Training builds the same type with :meth:`in_order` (texts in their given order, torch
    tensors on the CPU): the objectives rely on the order, and MNTP adds ``labels``.
    """

    indices: np.ndarray
    input_ids: np.ndarray
    cu_seqlens: np.ndarray
    position_ids: np.ndarray
    pool_mask: np.ndarray
    max_seqlen: int
    labels: Any = None

    @property
    def n_texts(self) -> int:
        """Number of texts ``b`` in the batch."""
        return int(self.indices.shape[0])

    @property
    def n_tokens(self) -> int:
        """Number of tokens ``total`` in the batch."""
        return int(self.input_ids.shape[0])

    def to_torch(
        self, device: torch.device | str = "cpu", *, non_blocking: bool = False
    ) -> dict[str, torch.Tensor | int]:
        """The batch as torch tensors on ``device``.

        Returns a dict with ``input_ids`` int64 ``[total]``, ``cu_seqlens`` int32
        ``[b + 1]``, ``position_ids`` int32 ``[total]``, ``pool_mask`` bool
        ``[total]``, ``indices`` int64 ``[b]`` and ``max_seqlen`` (a Python int).
        Ids travel as int32 and widen on the device. With ``non_blocking`` and
        a CUDA device the host tensors are pinned first, so the copies overlap.
        On the CPU every tensor but ``input_ids`` shares memory with the arrays.
        """
        import torch

        device = torch.device(device)
        pin = non_blocking and device.type == "cuda"

        def move(array: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(array)
            if pin:
                tensor = tensor.pin_memory()
            return tensor.to(device, non_blocking=non_blocking)

        return {
            "input_ids": move(self.input_ids).long(),
            "cu_seqlens": move(self.cu_seqlens),
            "position_ids": move(self.position_ids),
            "pool_mask": move(self.pool_mask).view(torch.bool),
            "indices": move(self.indices),
            "max_seqlen": int(self.max_seqlen),
        }

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> PackedBatch:
        """The same batch with torch tensors on ``device`` (the form the model and pooling
        take): ``input_ids`` int64, ``cu_seqlens`` and ``position_ids`` int32, ``pool_mask``
        bool; ``indices`` stay the host array (they place results on the host). A batch already
        of tensors (:meth:`in_order`, or one moved before) moves each tensor."""
        if not isinstance(self.input_ids, np.ndarray):

            def move(t):
                return None if t is None else t.to(device, non_blocking=non_blocking)

            return dataclasses.replace(
                self,
                input_ids=move(self.input_ids),
                cu_seqlens=move(self.cu_seqlens),
                position_ids=move(self.position_ids),
                pool_mask=move(self.pool_mask),
                labels=move(self.labels),
            )
        t = self.to_torch(device, non_blocking=non_blocking)
        return PackedBatch(
            self.indices,
            t["input_ids"],
            t["cu_seqlens"],
            t["position_ids"],
            t["pool_mask"],
            int(self.max_seqlen),
        )

    @classmethod
    def in_order(cls, ids: list[list[int]], pool_lengths: list[int] | None = None) -> PackedBatch:
        """Texts back to back in the given order, as CPU torch tensors (the training form:
        ``input_ids`` and ``position_ids`` int64, ``cu_seqlens`` int32); ``pool_lengths[i]``:
        the last tokens of text ``i`` that are pooled (its text, not its instruction), or None
        for no ``pool_mask`` (MNTP pools nothing)."""
        import torch

        lengths = [len(x) for x in ids]
        cu, pos = _offsets(lengths)
        flat = torch.tensor([t for x in ids for t in x], dtype=torch.long)
        pool = None
        if pool_lengths is not None:
            pool = torch.zeros(len(flat), dtype=torch.bool)
            for i, (n, p) in enumerate(zip(lengths, pool_lengths)):
                p = min(p, n)
                if p > 0:
                    pool[int(cu[i + 1]) - p : int(cu[i + 1])] = True
        indices = np.arange(len(ids), dtype=np.int64)
        return cls(indices, flat, cu, pos, pool, max(lengths, default=0))

    @classmethod
    def from_padded(
        cls, features: dict, device: torch.device | str, skip_instruction: bool = True
    ) -> PackedBatch:
        """A left- or right-padded batch (``input_ids``, ``attention_mask`` and optionally
        ``embed_mask``, as the official ``tokenize`` makes it) as a packed one on ``device``
        (the :meth:`to` form); padding is dropped. ``pool_mask`` is ``embed_mask`` when
        ``skip_instruction``, else every token."""

        input_ids = features["input_ids"]
        attention = features["attention_mask"].bool()
        if skip_instruction and "embed_mask" in features:
            pool = features["embed_mask"].bool() & attention
        else:
            pool = attention
        lengths = attention.sum(1).tolist()
        cu, pos = _offsets(lengths)
        return cls(
            np.arange(len(lengths), dtype=np.int64),
            input_ids[attention].to(device),
            cu.to(device),
            pos.to(device),
            pool[attention].to(device),
            max(lengths),
        )


def _offsets(lengths: list[int]):
    """``cu_seqlens`` (int32 ``[b + 1]``) and ``position_ids`` (int64 ``[total]``) of texts of
    these lengths packed back to back, as CPU tensors."""
    import torch

    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0).to(torch.int32)
    if not lengths:
        return cu, torch.zeros(0, dtype=torch.long)
    return cu, torch.cat([torch.arange(n, dtype=torch.long) for n in lengths])


def pack_token_ids(
    token_ids: Sequence[Sequence[int]] | np.ndarray,
    pool_lengths: Sequence[int] | np.ndarray,
    *,
    max_length: int,
    max_tokens_per_batch: int,
    max_batch_size: int = 0,
    offsets: Sequence[int] | np.ndarray | None = None,
    backend: Literal["auto", "cpp", "python"] = "auto",
) -> list[PackedBatch]:
    """Pack texts' token ids into padding-free batches (semantics in the module docstring).

    Args:
        token_ids: one id sequence per text (lists, tuples or 1-D integer
            arrays); or, with ``offsets``, a flat 1-D integer array of all ids
            (int32 is the zero-copy fast path).
        pool_lengths: integer ``[n]``, how many tokens at the end of each
            truncated text are pooled (``>= 0``).
        max_length: right truncation length; ``<= 0`` keeps every id.
        max_tokens_per_batch: token budget of a batch, ``1 .. 2**31 - 1``.
        max_batch_size: most texts in a batch; ``<= 0`` means no limit.
        offsets: integer ``[n + 1]`` for the flat form: text ``i`` is
            ``token_ids[offsets[i]:offsets[i + 1]]``; ``offsets[0] == 0`` and
            ``offsets[-1] == len(token_ids)``.
        backend: ``"auto"`` (C++ when built, else numpy with a warning),
            ``"cpp"`` or ``"python"``.

    Returns:
        The batches, longest texts first; every input position appears in
        exactly one batch's ``indices``. No texts: an empty list.

    Raises:
        ValueError: negative or out-of-int32 ids, a pool_lengths length
            mismatch, negative pool lengths, ``max_tokens_per_batch <= 0``,
            malformed offsets.
        TypeError: ids or lengths that are not integers.
    """
    if backend not in ("auto", "cpp", "python"):
        raise ValueError(f"backend must be 'auto', 'cpp' or 'python', got {backend!r}")
    if backend == "cpp" and _C is None:
        raise ImportError(f"llm2vec_fast._C is not built ({_EXTENSION_ERROR})")
    if backend == "auto" and _C is None:
        _warn_fallback()
    max_length, max_tokens_per_batch, max_batch_size = (
        int(max_length),
        int(max_tokens_per_batch),
        int(max_batch_size),
    )
    if _C is not None and backend != "python":
        raw = _C.pack(
            token_ids,
            pool_lengths,
            max_length=max_length,
            max_tokens_per_batch=max_tokens_per_batch,
            max_batch_size=max_batch_size,
            offsets=offsets,
        )
        return [PackedBatch(**batch) for batch in raw]
    return _pack_python(
        token_ids, pool_lengths, max_length, max_tokens_per_batch, max_batch_size, offsets
    )


def _warn_fallback() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"llm2vec_fast._C not built; using the slow Python packer ({_EXTENSION_ERROR})",
            RuntimeWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------
# numpy fallback: the same checks, order and output as csrc/packer.cpp


def _int_array(obj: object, name: str) -> np.ndarray:
    """Any 1-D integer array-like -> int64 array; TypeError/ValueError otherwise."""
    try:
        array = np.asarray(obj)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be a 1-D array of integers") from exc
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {array.ndim} dims")
    if array.size and array.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_ids(ids: np.ndarray, row: int | None = None) -> np.ndarray:
    """int64 ids -> int32 ids, ValueError on the first id outside 0 .. 2**31 - 1.

    ``row``: the ids are ``token_ids[row]`` (for the message); None: flat ids.
    """
    bad = np.flatnonzero((ids < 0) | (ids > _INT32_MAX))
    if bad.size:
        k = int(bad[0])
        where = f"token_ids[{k}]" if row is None else f"token_ids[{row}][{k}]"
        if ids[k] < 0:
            raise ValueError(f"token ids must be >= 0, but {where} = {ids[k]} is negative")
        raise ValueError(f"token ids must fit in int32, but {where} = {ids[k]} is too large")
    return ids.astype(np.int32)


def _flatten_rows(token_ids: object) -> tuple[np.ndarray, np.ndarray]:
    """Sequence of id sequences -> (int32 ids, int64 offsets [n + 1])."""
    if isinstance(token_ids, str | bytes):
        raise TypeError("token_ids must be a sequence of token-id sequences, got a string")
    try:
        rows = list(token_ids)  # type: ignore[call-overload]
    except TypeError as exc:
        raise TypeError(
            "token_ids must be a sequence of token-id sequences "
            "(or a flat integer array with offsets)"
        ) from exc
    lengths = np.zeros(len(rows) + 1, dtype=np.int64)
    parts: list[np.ndarray] = []
    for i, row in enumerate(rows):
        if isinstance(row, str | bytes):
            raise TypeError(
                f"token_ids[{i}] is a string; expected a sequence of token ids (tokenize first)"
            )
        if isinstance(row, np.ndarray):
            part = _int_array(row, f"token_ids[{i}]")
        else:
            try:
                items = list(row)
            except TypeError as exc:
                raise TypeError(f"token_ids[{i}] must be a sequence of ints") from exc
            part = _row_to_int64(items, i)
        lengths[i + 1] = part.shape[0]
        parts.append(_check_ids(part, i))
    offsets = np.cumsum(lengths)
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return ids, offsets


def _row_to_int64(items: list, i: int) -> np.ndarray:
    """One row of Python ints -> int64; TypeError for non-integers like the C++ path."""
    if not items:
        return np.zeros(0, dtype=np.int64)
    try:
        array = np.array(items)
    except (ValueError, TypeError, OverflowError):
        array = np.array(items, dtype=object)
    if array.ndim == 1 and array.dtype.kind in "iub":
        return array.astype(np.int64, copy=False)
    for j, item in enumerate(items):  # find the culprit
        if not isinstance(item, int | np.integer):
            raise TypeError(f"token_ids[{i}][{j}] must be an int, got {type(item).__name__}")
        if not -(2**63) <= int(item) < 2**63:
            raise ValueError(
                f"token ids must fit in int32, but token_ids[{i}][{j}] = {item!r} is out of range"
            )
    raise TypeError(f"token_ids[{i}] must be a flat sequence of ints")


def _pack_python(
    token_ids: object,
    pool_lengths: object,
    max_length: int,
    max_tokens_per_batch: int,
    max_batch_size: int,
    offsets: object,
) -> list[PackedBatch]:
    if max_tokens_per_batch <= 0:
        raise ValueError(f"max_tokens_per_batch must be > 0, got {max_tokens_per_batch}")
    if max_tokens_per_batch > _INT32_MAX:
        raise ValueError(
            f"max_tokens_per_batch must fit in int32 (<= 2147483647), got {max_tokens_per_batch}"
        )

    if offsets is None:
        ids, offs = _flatten_rows(token_ids)
    else:
        try:
            flat = np.asarray(token_ids)
        except (ValueError, TypeError) as exc:
            raise ValueError("with offsets, token_ids must be a flat 1-D integer array") from exc
        if flat.ndim != 1:
            raise ValueError("with offsets, token_ids must be a flat 1-D integer array")
        if flat.size and flat.dtype.kind not in "iub":
            raise TypeError(f"token_ids must hold integers, got dtype {flat.dtype}")
        ids = _check_ids(flat.astype(np.int64, copy=False))
        offs = _int_array(offsets, "offsets")
        if offs.shape[0] < 1:
            raise ValueError("offsets must have n_texts + 1 >= 1 entries")
    n_texts = offs.shape[0] - 1

    pool = _int_array(pool_lengths, "pool_lengths")
    if pool.shape[0] != n_texts:
        raise ValueError(f"pool_lengths has {pool.shape[0]} entries but there are {n_texts} texts")
    negative = np.flatnonzero(pool < 0)
    if negative.size:
        i = int(negative[0])
        raise ValueError(
            f"pool_lengths must be >= 0, but pool_lengths[{i}] = {pool[i]} is negative"
        )
    if offs[0] != 0:
        raise ValueError(f"offsets[0] must be 0, got {offs[0]}")
    decreasing = np.flatnonzero(np.diff(offs) < 0)
    if decreasing.size:
        i = int(decreasing[0])
        raise ValueError(
            f"offsets must be non-decreasing, but offsets[{i + 1}] = {offs[i + 1]} "
            f"< offsets[{i}] = {offs[i]}"
        )
    if offs[-1] != ids.shape[0]:
        raise ValueError(f"offsets[-1] must equal len(token_ids) = {ids.shape[0]}, got {offs[-1]}")

    lengths = np.diff(offs)
    if max_length > 0:
        lengths = np.minimum(lengths, max_length)
    too_long = np.flatnonzero(lengths > _INT32_MAX)
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(
            f"text {i} has {lengths[i]} tokens after truncation; "
            "at most 2147483647 fit in int32 cu_seqlens"
        )
    order = np.argsort(-lengths, kind="stable")

    bounds = [0]
    tokens = count = 0
    for k, length in enumerate(lengths[order].tolist()):
        if count and (
            tokens + length > max_tokens_per_batch
            or (max_batch_size > 0 and count >= max_batch_size)
        ):
            bounds.append(k)
            tokens = count = 0
        tokens += length
        count += 1
    if count:
        bounds.append(n_texts)

    batches = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        idx = order[start:stop]
        lens = lengths[idx]
        cu_seqlens = np.zeros(idx.shape[0] + 1, dtype=np.int32)
        np.cumsum(lens, out=cu_seqlens[1:])
        total = int(cu_seqlens[-1])
        position_ids = np.arange(total, dtype=np.int64) - np.repeat(cu_seqlens[:-1], lens)
        input_ids = ids[np.repeat(offs[idx], lens) + position_ids]
        n_pool = np.minimum(pool[idx], lens)
        pool_mask = (position_ids >= np.repeat(lens - n_pool, lens)).astype(np.uint8)
        batches.append(
            PackedBatch(
                indices=idx.astype(np.int64),
                input_ids=input_ids,
                cu_seqlens=cu_seqlens,
                position_ids=position_ids.astype(np.int32),
                pool_mask=pool_mask,
                max_seqlen=int(lens.max()),
            )
        )
    return batches
