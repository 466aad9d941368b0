"""Training data: streamed texts and triples, a seeded shuffle buffer, and MNTP masking (the
batches are :class:`llm2vec_fast.packing.PackedBatch`, packed in order by
:meth:`~llm2vec_fast.packing.PackedBatch.in_order`).

Texts (MNTP, SimCSE): a .txt file (one text a line) or .jsonl (a ``text`` field), or a directory
or glob of them (:mod:`llm2vec_fast.io_formats` reads them, streamed); blank texts are skipped.
Triples (supervised): .jsonl with ``query``, ``positive`` and ``negative`` (a string or a list of
hard negatives; optional) and an optional ``instruction`` for the query.

Order: items pass through a shuffle buffer (``shuffle_buffer`` items, seeded by the seed and the
epoch), then are cut into batches in that order; with several data-parallel ranks, batch ``k``
goes to rank ``k % world_size``. The order is a pure function of (data, seed, epoch), so a
resumed run replays it and skips the batches already trained on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llm2vec_fast.io_formats import InputError, iter_records, resolve_inputs

IGNORE_INDEX = -100


class DataError(ValueError):
    """Training data that cannot be used (missing file, wrong fields, nothing to train on)."""


# ---------------------------------------------------------------------------------- reading


def iter_texts(path, text_column: str = "text") -> Iterator[str]:
    """Non-blank texts of a .txt/.jsonl file, directory or glob, streamed."""
    try:
        files = resolve_inputs(path)
    except InputError as e:
        raise DataError(str(e)) from None
    for rec in iter_records(files, text_column=text_column):
        if isinstance(rec.text, str) and rec.text.strip():
            yield rec.text.strip()


@dataclass(frozen=True)
class Triple:
    """One supervised example: a query (with its instruction), its positive, hard negatives."""

    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    instruction: str = ""


def iter_triples(path) -> Iterator[Triple]:
    """Triples from .jsonl lines ``{"query", "positive", "negative"?, "instruction"?}``;
    a malformed line is a :class:`DataError` naming the file and line."""
    try:
        files = resolve_inputs(path)
    except InputError as e:
        raise DataError(str(e)) from None
    for f in files:
        if f.suffix.lower() != ".jsonl":
            raise DataError(f"{f}: supervised data must be .jsonl triples")
        with open(f, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{f.name}:{n}: not valid JSON ({e})") from None
                if not isinstance(rec, dict):
                    raise DataError(f"{f.name}:{n}: expected a JSON object")
                q, p = rec.get("query"), rec.get("positive")
                neg = rec.get("negative", rec.get("negatives", []))
                neg = [neg] if isinstance(neg, str) else neg
                ins = rec.get("instruction") or ""
                if not (isinstance(q, str) and isinstance(p, str)):
                    raise DataError(f'{f.name}:{n}: "query" and "positive" must be strings')
                if not isinstance(neg, list) or not all(isinstance(x, str) for x in neg):
                    raise DataError(f'{f.name}:{n}: "negative" must be a string or strings')
                if not isinstance(ins, str):
                    raise DataError(f'{f.name}:{n}: "instruction" must be a string')
                yield Triple(q, p, tuple(neg), ins)


def shuffled(items: Iterator, buffer: int, seed: int) -> Iterator:
    """A seeded shuffle buffer: memory stays at ``buffer`` items; ``buffer <= 1`` keeps the
    order."""
    if buffer <= 1:
        yield from items
        return
    rng = random.Random(seed)
    buf: list = []
    for item in items:
        if len(buf) < buffer:
            buf.append(item)
            continue
        i = rng.randrange(buffer)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


def batches(
    make_items,
    batch_size: int,
    *,
    seed: int,
    shuffle_buffer: int,
    rank: int = 0,
    world_size: int = 1,
    skip: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[int, list]]:
    """Endless ``(epoch, batch)`` for this rank: epoch after epoch of ``make_items()``, shuffled
    with ``seed + epoch``, cut into ``batch_size`` items; global batch ``k`` belongs to rank
    ``k % world_size``. ``skip`` drops this rank's first batches (resume). An empty source is a
    :class:`DataError`."""
    epoch, k, mine = 0, 0, 0
    while True:
        n_items = 0
        buf: list = []
        for item in shuffled(make_items(), shuffle_buffer, seed + epoch):
            n_items += 1
            buf.append(item)
            if len(buf) == batch_size:
                if k % world_size == rank:
                    if mine >= skip:
                        yield epoch, buf
                    mine += 1
                k += 1
                buf = []
        if buf and not drop_last:
            if k % world_size == rank:
                if mine >= skip:
                    yield epoch, buf
                mine += 1
            k += 1
        if n_items == 0:
            raise DataError("the training data holds no usable examples")
        epoch += 1


# ---------------------------------------------------------------------------------- packing


def chunk_ids(ids: list[int], max_len: int) -> list[list[int]]:
    """A token list cut into pieces of at most ``max_len`` (MNTP keeps long texts whole, in
    pieces, instead of truncating them)."""
    return [ids[i : i + max_len] for i in range(0, len(ids), max_len)] or [[]]


# ---------------------------------------------------------------------------------- masking


def mntp_mask(
    input_ids: torch.Tensor,
    special_ids: torch.Tensor,
    *,
    probability: float,
    mask_token_id: int,
    vocab_size: int,
    all_mask: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNTP masking as the official collators do it, on packed ids ``[T]``.

    Each token that is not special is selected with ``probability``; the labels hold the
    selected tokens' ids (``-100`` elsewhere). Selected inputs become the mask token (80%), a
    random token of the vocabulary (10%) or stay (10%), as HF's
    ``DataCollatorForLanguageModeling``; with ``all_mask`` every selected token becomes the mask
    token (the official ``DataCollatorForLanguageModelingWithFullMasking``).
    """
    special = torch.isin(input_ids, special_ids)
    prob = torch.full(input_ids.shape, float(probability))
    prob.masked_fill_(special, 0.0)
    selected = torch.bernoulli(prob, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    inputs = input_ids.clone()
    if all_mask:
        inputs[selected] = mask_token_id
        return inputs, labels
    replace = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool()
    replace &= selected
    inputs[replace] = mask_token_id
    rand = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool()
    rand &= selected & ~replace
    words = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=torch.long)
    inputs[rand] = words[rand]
    return inputs, labels


def resolve_mask_token(tokenizer, mask_token: str) -> int:
    """The id of the mask token: the tokenizer's own mask token when it has one (as the official
    script keeps it), else ``mask_token`` (official default ``"_"``, its "blank" type) as one
    token."""
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    tid = tokenizer.convert_tokens_to_ids(mask_token)
    if tid is None or tid == tokenizer.unk_token_id:
        ids = tokenizer(mask_token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise DataError(
                f"mask token {mask_token!r} is not one token of this tokenizer; pick another "
                "with --mask-token"
            )
        tid = ids[0]
    return int(tid)


def special_token_ids(tokenizer) -> torch.Tensor:
    return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)


def read_lines_count(path) -> int:
    """How many items a text source yields (one streaming pass), to size the schedule."""
    return sum(1 for _ in iter_texts(path))


def data_fingerprint(path) -> list[dict]:
    files = resolve_inputs(path)
    return [{"path": str(Path(f).resolve()), "bytes": Path(f).stat().st_size} for f in files]
