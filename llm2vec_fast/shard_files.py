"""The embedding shards the batch job writes: quantisation to the stored precision, atomic
writes, and the three file formats.

Outputs (one shard = one group of consecutive rows), see :func:`write_shard`:

- ``npy``: ``shard-000003.npy`` (the array) + ``shard-000003.ids.json`` (+ for int8
  ``shard-000003.scales.npy``).
- ``parquet``: ``shard-000003.parquet`` with columns ``id``, ``embedding`` (a fixed-size list)
  and, for int8, ``scale``.
- ``safetensors``: ``shard-000003.safetensors`` with tensors ``embeddings`` (and ``scales`` for
  int8) and the ids as JSON in the metadata key ``ids``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from llm2vec_fast.io_formats import file_sha256, pyarrow_parquet

OUTPUT_FORMATS = ("npy", "parquet", "safetensors")
PRECISIONS = ("float32", "float16", "int8", "binary")


# ---------------------------------------------------------------------------------- quantisation


def quantize(emb: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``float32 [n, d]`` -> (array, scales or None) at ``precision``.

    - ``float16``: a cast (relative error <= 2**-11 for values in float16's normal range).
    - ``int8``: symmetric per-row scalar quantisation, ``scale = max|x_row| / 127``,
      ``q = round(x / scale)`` in ``[-127, 127]``; ``q * scale`` is within ``scale / 2`` =
      ``max|x_row| / 254`` of ``x`` in every element. Scales are float32 ``[n]``.
    - ``binary``: one sign bit per dimension (1 where ``x > 0``), packed big-endian into uint8
      ``[n, ceil(d / 8)]`` as ``numpy.packbits`` does; :func:`dequantize` maps bits to +-1.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if precision == "float32":
        return emb, None
    if precision == "float16":
        return emb.astype(np.float16), None
    if precision == "int8":
        amax = np.abs(emb).max(axis=1) if emb.shape[1] else np.zeros(len(emb), np.float32)
        scales = (amax / 127.0).astype(np.float32)
        safe = np.where(scales > 0, scales, np.float32(1.0))
        q = np.clip(np.rint(emb / safe[:, None]), -127, 127).astype(np.int8)
        return q, scales
    if precision == "binary":
        return np.packbits(emb > 0, axis=1), None
    raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def dequantize(
    array: np.ndarray, precision: str, scales: np.ndarray | None = None, dim: int | None = None
) -> np.ndarray:
    """The float32 approximation of what :func:`quantize` stored (binary: +-1 per bit; ``dim``
    cuts the padding bits of the last byte)."""
    if precision in ("float32", "float16"):
        return array.astype(np.float32)
    if precision == "int8":
        if scales is None:
            raise ValueError("int8 embeddings need their scales")
        return array.astype(np.float32) * scales.astype(np.float32)[:, None]
    if precision == "binary":
        bits = np.unpackbits(array, axis=1)
        if dim is not None:
            bits = bits[:, :dim]
        return bits.astype(np.float32) * 2.0 - 1.0
    raise ValueError(f"unknown precision {precision!r}")


# ---------------------------------------------------------------------------------- shards


def shard_stem(index: int) -> str:
    """The file name stem of shard ``index`` (``shard-000003``)."""
    return f"shard-{index:06d}"


def atomic_write(path: Path, write) -> None:
    """``write(file)`` (a binary file) into a temporary name beside ``path``, fsync, rename onto
    ``path``: readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as indented JSON, written with :func:`atomic_write`."""
    data = (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def _ids_column(ids: list):
    """ids as an Arrow-friendly list: int64 when all are ints, else strings."""
    if all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        return ids
    return [i if isinstance(i, str) else json.dumps(i) for i in ids]


def write_shard(
    outdir: Path, index: int, ids: list, array: np.ndarray, scales: np.ndarray | None, fmt: str
) -> dict[str, dict]:
    """Write one shard atomically (each file to a temporary name, then renamed; the data file
    last). Returns ``{role: {"file", "bytes", "sha256"}}`` for the manifest."""
    stem = shard_stem(index)
    written: dict[str, Path] = {}
    if fmt == "npy":
        ids_path = outdir / f"{stem}.ids.json"
        data = (json.dumps(ids) + "\n").encode("utf-8")
        atomic_write(ids_path, lambda f: f.write(data))
        written["ids"] = ids_path
        if scales is not None:
            sp = outdir / f"{stem}.scales.npy"
            atomic_write(sp, lambda f: np.save(f, scales, allow_pickle=False))
            written["scales"] = sp
        path = outdir / f"{stem}.npy"
        atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))
        written["embeddings"] = path
    elif fmt == "parquet":
        pq = pyarrow_parquet("writing Parquet shards (--format parquet)")
        import pyarrow as pa

        flat = pa.array(array.reshape(-1))
        width = array.shape[1] if array.ndim == 2 else 0
        cols = {
            "id": pa.array(_ids_column(ids)),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, width),
        }
        if scales is not None:
            cols["scale"] = pa.array(scales)
        table = pa.table(cols)
        path = outdir / f"{stem}.parquet"
        atomic_write(path, lambda f: pq.write_table(table, f))
        written["embeddings"] = path
    elif fmt == "safetensors":
        from safetensors.numpy import save

        tensors = {"embeddings": np.ascontiguousarray(array)}
        if scales is not None:
            tensors["scales"] = scales
        data = save(tensors, metadata={"ids": json.dumps(ids)})
        path = outdir / f"{stem}.safetensors"
        atomic_write(path, lambda f: f.write(data))
        written["embeddings"] = path
    else:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {OUTPUT_FORMATS}")
    return {
        role: {"file": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for role, p in written.items()
    }


def read_shard(outdir: Path, files: dict, fmt: str) -> tuple[list, np.ndarray, np.ndarray | None]:
    """(ids, stored array, scales or None) of one shard written by :func:`write_shard`."""
    path = outdir / files["embeddings"]["file"]
    if fmt == "npy":
        array = np.load(path, allow_pickle=False)
        ids = json.loads((outdir / files["ids"]["file"]).read_text(encoding="utf-8"))
        scales = (
            np.load(outdir / files["scales"]["file"], allow_pickle=False)
            if "scales" in files
            else None
        )
        return ids, array, scales
    if fmt == "parquet":
        table = pyarrow_parquet("reading Parquet shards").read_table(path)
        emb = table.column("embedding").combine_chunks()
        width = emb.type.list_size
        flat = emb.flatten().to_numpy(zero_copy_only=False)
        array = flat.reshape(-1, width) if width else flat.reshape(len(table), 0)
        scales = table.column("scale").to_numpy() if "scale" in table.column_names else None
        return table.column("id").to_pylist(), array, scales
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            ids = json.loads(f.metadata()["ids"])
            array = f.get_tensor("embeddings")
            scales = f.get_tensor("scales") if "scales" in f.keys() else None
        return ids, array, scales
    raise ValueError(f"unknown output format {fmt!r}")
