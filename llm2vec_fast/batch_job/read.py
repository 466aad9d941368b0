"""Reading a job's output back: ids and embeddings, shards concatenated in row order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm2vec_fast.batch_job.config import JobError
from llm2vec_fast.batch_job.manifest import MANIFEST, read_manifest
from llm2vec_fast.io_formats import file_sha256
from llm2vec_fast.shard_files import dequantize, read_shard


def read_embeddings(
    outdir, *, dequantized: bool = False, verify: bool = True, allow_incomplete: bool = False
) -> tuple[list, np.ndarray]:
    """(ids, embeddings) of a job's output, shards concatenated in row order.

    Args:
        dequantized: return float32 (int8 times its scales, binary as +-1) instead of the
            stored array.
        verify: check every shard file's SHA-256 against the manifest.
        allow_incomplete: read an unfinished job's finished shards instead of refusing.
    """
    outdir = Path(outdir)
    manifest = read_manifest(outdir / MANIFEST)
    if not manifest["complete"] and not allow_incomplete:
        raise JobError(
            f"{outdir}: the job is not complete ({len(manifest['shards'])} of "
            f"{manifest['n_shards']} shards); rerun it, or pass allow_incomplete=True"
        )
    settings = manifest["settings"]
    ids: list = []
    arrays = []
    for s in manifest["shards"]:
        if verify:
            for f in s["files"].values():
                if file_sha256(outdir / f["file"]) != f["sha256"]:
                    raise JobError(f"{outdir / f['file']}: checksum differs from the manifest")
        sid, array, scales = read_shard(outdir, s["files"], settings["format"])
        if dequantized:
            array = dequantize(
                array, settings["precision"], scales, manifest["model_config"]["dim"]
            )
        ids.extend(sid)
        arrays.append(array)
    if not arrays:
        return ids, np.zeros((0, manifest["model_config"]["dim"]), np.float32)
    return ids, np.concatenate(arrays)
