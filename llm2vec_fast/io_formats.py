"""Corpus readers for the batch job (``llm2vec-fast embed``) and training.

Inputs, all streamed (memory stays bounded whatever the corpus size):

- ``.txt`` (also ``.text``, ``.cor`` and no suffix): one text a line; every line is a row, blank lines included (an empty text is then
  recorded as an error by the job, not silently dropped), so line ``i`` of a single file is row
  ``i``.
- ``.jsonl``: one object a line with the text under ``text_column`` (default ``"text"``), and
  optionally ``id`` and ``instruction`` fields; blank lines are skipped.
- ``.csv`` / ``.tsv``: a header row naming the columns; the text column must exist.
- ``.parquet``: read batch by batch with pyarrow (the ``parquet`` extra); the text column must
  exist, the id and instruction columns are used when present.
- a directory (its supported files, sorted by name, not recursive) or a glob pattern.

Rows are numbered across all files in order, from 0. A row's id is its id column's value when
the file has one, else its row number.

Text is UTF-8. A line (.txt, .jsonl), a row's field (.csv/.tsv) or a Parquet string value that
is not valid UTF-8 is not patched up with U+FFFD: its record carries ``error`` ("invalid
UTF-8 ..."), so the job writes it to ``errors.jsonl`` and goes on (and ``embed -o FILE.npy``
stops on it).

The embedding shards the batch job writes are :mod:`llm2vec_fast.shard_files`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# plain text, one text a line: .txt, no suffix, .text, and .cor (gensim's corpora)
TEXT_SUFFIXES = ("", ".txt", ".text", ".cor")
INPUT_SUFFIXES = (".txt", ".text", ".cor", ".jsonl", ".csv", ".tsv", ".parquet")


class InputError(ValueError):
    """An input that cannot be read at all (missing file, unknown type, missing column)."""


@dataclass(frozen=True)
class Record:
    """One row of the corpus. ``text``/``instruction`` are raw values (validated by the job);
    ``error`` is set when the row could not even be parsed (a broken JSON line)."""

    row: int
    id: object
    text: object
    instruction: object = None
    error: str | None = None
    source: str = ""
    """Where the row came from, ``file:line`` (a 1-based line for .txt/.jsonl/.csv/.tsv, a
    1-based row for Parquet), for error messages."""


# ---------------------------------------------------------------------------------- inputs


def resolve_inputs(spec) -> list[Path]:
    """The input files named by ``spec``: a file, a directory, a glob pattern, or a list of
    these. Raises :class:`InputError` when nothing readable is found."""
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise InputError("no input given")
    files: list[Path] = []
    for s in specs:
        if s is None:
            raise InputError("input path is None")
        p = Path(s)
        if p.is_dir():
            found = sorted(
                q for q in p.iterdir() if q.is_file() and q.suffix.lower() in INPUT_SUFFIXES
            )
            if not found:
                raise InputError(
                    f"directory {p} holds no input files ({', '.join(INPUT_SUFFIXES)})"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif glob.has_magic(str(s)):
            found = sorted(Path(q) for q in glob.glob(str(s)) if Path(q).is_file())
            if not found:
                raise InputError(f"no file matches {s}")
            files.extend(found)
        else:
            raise InputError(f"input file {p} does not exist")
    for f in files:
        if f.suffix.lower() not in INPUT_SUFFIXES and f.suffix != "":
            raise InputError(
                f"{f}: unknown input type {f.suffix!r}; use {', '.join(INPUT_SUFFIXES)}"
            )
    return files


def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    return ".txt" if s in TEXT_SUFFIXES else s


def iter_records(
    files: list[Path],
    text_column: str = "text",
    id_column: str = "id",
    instruction_column: str = "instruction",
    start: dict | None = None,
) -> Iterator[Record]:
    """Stream the rows of ``files`` in order (see the module docstring); from the beginning,
    or from a shard's ``start`` as :func:`plan_shards` gives it."""
    row, first, skip, line = 0, 0, 0, 0
    if start is not None:
        row, first, skip, line = start["row"], start["file"], start["skip"], start["line"]
    for fi in range(first, len(files)):
        path = files[fi]
        kind = _suffix(path)
        offset = skip if fi == first else 0
        line0 = line if fi == first else 0
        if kind == ".txt":
            gen = _txt(path, offset, line0)
        elif kind == ".jsonl":
            gen = _jsonl(path, text_column, id_column, instruction_column, offset, line0)
        elif kind in (".csv", ".tsv"):
            gen = _csv(path, kind, text_column, id_column, instruction_column)
            gen = itertools.islice(gen, offset, None)
        elif kind == ".parquet":
            gen = _parquet(path, text_column, id_column, instruction_column, offset)
        else:
            raise InputError(f"{path}: unknown input type {path.suffix!r}")
        for n, id_, text, instruction, error in gen:
            source = f"{path.name}:{n}"
            yield Record(row, row if id_ is None else id_, text, instruction, error, source)
            row += 1


def plan_shards(files: list[Path], shard_size: int, **columns) -> list[dict]:
    """Where each shard of ``shard_size`` rows starts, from one pass over the input: for
    .txt/.jsonl a byte offset (a reader seeks there), for .csv/.tsv/.parquet a row count to skip
    in the file (Parquet skips whole row groups from its metadata). Entries:
    ``{"index", "rows": [first, stop], "start": {"row", "file", "skip", "line"}}``."""
    starts: list[dict] = []
    row = 0
    for fi, path in enumerate(files):
        kind = _suffix(path)
        if kind in (".txt", ".jsonl"):
            offset, line = 0, 0
            with open(path, "rb") as f:
                for raw in f:
                    if kind == ".txt" or raw.strip():
                        if row % shard_size == 0:
                            starts.append({"row": row, "file": fi, "skip": offset, "line": line})
                        row += 1
                    offset += len(raw)
                    line += 1
        else:
            if kind == ".parquet":
                pq = pyarrow_parquet(f"the Parquet input {path.name}")
                n = pq.ParquetFile(path).metadata.num_rows
            else:
                n = sum(1 for _ in iter_records([path], **columns))
            for k in range(n):
                if (row + k) % shard_size == 0:
                    starts.append({"row": row + k, "file": fi, "skip": k, "line": 0})
            row += n
    return [
        {
            "index": i,
            "rows": [st["row"], starts[i + 1]["row"] if i + 1 < len(starts) else row],
            "start": st,
        }
        for i, st in enumerate(starts)
    ]


def _invalid_utf8(e: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 (byte 0x{e.object[e.start]:02x} at byte {e.start} of the line)"


def _lines(path: Path, offset: int, line0: int):
    """(1-based line number, decoded line without its end, None) from byte ``offset`` on; a
    line that is not valid UTF-8 gives (number, line surrogate-escaped, reason) instead of
    being patched up."""
    with open(path, "rb") as f:
        f.seek(offset)
        for n, raw in enumerate(f, line0 + 1):
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as e:
                yield n, raw.decode("utf-8", "surrogateescape").rstrip("\r\n"), _invalid_utf8(e)


def _txt(path: Path, offset: int = 0, line0: int = 0):
    for n, line, error in _lines(path, offset, line0):
        yield n, None, None if error else line, None, error


def _jsonl(
    path: Path,
    text_column: str,
    id_column: str,
    instruction_column: str,
    offset: int = 0,
    line0: int = 0,
):
    for n, line, error in _lines(path, offset, line0):
        if error is not None:  # reported with its id when the rest of the line parses
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            id_ = rec.get(id_column) if isinstance(rec, dict) else None
            id_ = _replace_invalid(id_) if isinstance(id_, (str, int, float)) else None
            yield n, id_, None, None, error
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, None, None, None, f"not valid JSON ({e})"
            continue
        if not isinstance(rec, dict):
            yield n, None, None, None, "expected a JSON object"
            continue
        if text_column not in rec:
            yield n, rec.get(id_column), None, None, f'no "{text_column}" field'
            continue
        yield n, rec.get(id_column), rec[text_column], rec.get(instruction_column), None


def _csv(path: Path, kind: str, text_column: str, id_column: str, instruction_column: str):
    # undecodable bytes become lone surrogates (which valid UTF-8 never decodes to), so a row
    # holding them is reported as invalid instead of being embedded with U+FFFD in its place
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if kind == ".tsv" else ",")
        fields = reader.fieldnames or []
        if text_column not in fields:
            raise InputError(
                f"{path}: no column {text_column!r} (columns: {', '.join(fields) or 'none'}); "
                "name the text column with --text-column"
            )
        has_id, has_instr = id_column in fields, instruction_column in fields
        for rec in reader:
            text = rec.get(text_column)
            id_ = rec.get(id_column) if has_id else None
            instruction = rec.get(instruction_column) if has_instr else None
            error = None if text is not None else "the row has too few fields"
            bad = [
                name
                for name, value in (
                    (text_column, text),
                    (id_column, id_),
                    (instruction_column, instruction),
                )
                if isinstance(value, str) and _SURROGATE.search(value)
            ]
            if bad:
                error = f"invalid UTF-8 in column {bad[0]!r}"
                text = instruction = None
                id_ = _replace_invalid(id_)
            yield reader.line_num, id_, text, instruction, error


_SURROGATE = re.compile("[\udc80-\udcff]")


def _replace_invalid(value):
    """A surrogate-escaped string with its undecodable bytes as U+FFFD (for error reports);
    anything else as it is."""
    if not isinstance(value, str):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _parquet(path: Path, text_column: str, id_column: str, instruction_column: str, skip: int = 0):
    pq = pyarrow_parquet(f"the Parquet input {path.name}")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a non-Parquet file
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if text_column not in names:
        raise InputError(
            f"{path}: no column {text_column!r} (columns: {', '.join(names)}); "
            "name the text column with --text-column"
        )
    columns = [c for c in (text_column, id_column, instruction_column) if c in names]
    groups, n = [], 0
    for g in range(pf.num_row_groups):  # whole row groups before ``skip`` are not read
        rows = pf.metadata.row_group(g).num_rows
        if not groups and n + rows <= skip:
            n += rows
        else:
            groups.append(g)
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=8192, columns=columns, row_groups=groups):
        if n < skip:
            drop = min(skip - n, batch.num_rows)
            batch, n = batch.slice(drop), n + drop
        cols, invalid = {}, {}
        for name in columns:
            cols[name] = _arrow_values(batch.column(name), name, invalid)
        texts = cols[text_column]
        ids = cols.get(id_column, [None] * len(texts))
        instrs = cols.get(instruction_column, [None] * len(texts))
        for k, (t, i, ins) in enumerate(zip(texts, ids, instrs)):
            n += 1
            if k in invalid:  # the text and instruction are dropped, the id kept readable
                yield n, _replace_invalid(i), None, None, invalid[k]
            else:
                yield n, i, t, ins, None


def _arrow_values(column, name: str, invalid: dict[int, str]) -> list:
    """A column's Python values. A string column holding invalid UTF-8 (Arrow does not check it
    when reading) gives those values as surrogate-escaped strings and records ``invalid[row]``."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        import pyarrow as pa

        t = column.type
        if pa.types.is_string(t):
            raw = column.view(pa.binary())
        elif pa.types.is_large_string(t):
            raw = column.view(pa.large_binary())
        else:
            raise
        values = []
        for k, b in enumerate(raw.to_pylist()):
            try:
                values.append(None if b is None else b.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(b.decode("utf-8", "surrogateescape"))
                invalid.setdefault(k, f"invalid UTF-8 in column {name!r}")
        return values


def pyarrow_parquet(feature: str):
    from llm2vec_fast.optional import require

    require("pyarrow", feature=feature)
    import pyarrow.parquet as pq

    return pq


def check_inputs(files: list[Path], text_column: str = "text", **_) -> None:
    """Fail early (before any model loads) on a table input without its text column."""
    for path in files:
        kind = _suffix(path)
        if kind in (".csv", ".tsv"):
            next(_csv(path, kind, text_column, "", ""), None)
        elif kind == ".parquet":
            next(_parquet(path, text_column, "", ""), None)


def count_rows(files: list[Path], **columns) -> int:
    """Number of rows :func:`iter_records` yields (a streaming pass; Parquet from metadata)."""
    n = 0
    for path in files:
        if _suffix(path) == ".parquet":
            pq = pyarrow_parquet(f"the Parquet input {path.name}")
            n += pq.ParquetFile(path).metadata.num_rows
        else:
            n += sum(1 for _ in iter_records([path], **columns))
    return n


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_inputs(files: list[Path]) -> dict:
    """Name, size and SHA-256 of every input file, and one hash over all of them in order."""
    entries = [
        {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in files
    ]
    total = hashlib.sha256(json.dumps([e["sha256"] for e in entries]).encode()).hexdigest()
    return {"files": entries, "sha256": total}
