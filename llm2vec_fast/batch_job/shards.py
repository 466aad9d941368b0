"""A shard's work: which rows can be embedded (:func:`validate_record`), and
:class:`ShardEmbedder`, which loads the model on one device and turns shards of records into
shard files and their manifest entries."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from llm2vec_fast.batch_job.config import JobConfig, JobError
from llm2vec_fast.io_formats import Record
from llm2vec_fast.pipeline import Chunk, ChunkResult, EncodePipeline, default_token_budget
from llm2vec_fast.shard_files import quantize, write_shard

EMPTY_POOLED = (
    "embedded, but its pooled span is empty: no token of the text is pooled (it tokenizes to "
    "nothing, or nothing of it fits in doc_max_length tokens), so the vector does not depend "
    "on the text"
)


def validate_record(
    rec: Record, allow_empty: bool = False
) -> tuple[tuple[str, str] | None, str | None]:
    """``((instruction, text), None)`` for an embeddable row, else ``(None, reason)``.
    The job refuses empty and blank texts; ``allow_empty`` embeds them (the official
    library's behaviour, kept by the single-file ``embed -o FILE.npy``)."""
    if rec.error:
        return None, rec.error
    text, instruction = rec.text, rec.instruction
    if text is None:
        return None, "text is missing (null)"
    if not isinstance(text, str):
        return None, f"text is not a string (got {type(text).__name__})"
    if instruction is not None and not isinstance(instruction, str):
        return None, f"instruction is not a string (got {type(instruction).__name__})"
    if not text.strip() and not allow_empty:
        return None, "empty text"
    try:
        text.encode("utf-8")
        (instruction or "").encode("utf-8")
    except UnicodeEncodeError as e:
        return None, f"text is not valid unicode ({e.reason} at {e.start})"
    return (instruction or "", text), None


class ShardEmbedder:
    """Loads the model on one device and turns a shard's records into shard files."""

    def __init__(self, config: JobConfig, device: str | None, threads: int | None = None):
        import torch

        from llm2vec_fast.encoder import LLM2Vec

        if threads:
            torch.set_num_threads(threads)
        self.config = config
        self.model = LLM2Vec.from_pretrained(**config.load_kwargs(device))
        self.model.eval()
        self.device = str(self.model.runner.device)
        self.hidden_size = int(self.model.model.config.hidden_size)
        if config.truncate_dim is not None and config.truncate_dim > self.hidden_size:
            raise JobError(
                f"truncate_dim {config.truncate_dim} exceeds the model's {self.hidden_size} dims"
            )

    @property
    def dim(self) -> int:
        return self.config.truncate_dim or self.hidden_size

    def describe(self) -> dict:
        m = self.model
        return {
            "pooling": m.pooling_mode,
            "max_length": m.max_length,
            "doc_max_length": m.doc_max_length,
            "skip_instruction": m.skip_instruction,
            "hidden_size": self.hidden_size,
            "dim": self.dim,
            "name_or_path": m.name_or_path,
            "kernels": m.runner.attn_implementation,
        }

    def run_batch(self, on_device, batch):
        """The model on one packed batch (``on_device``: the batch on the device): the
        pipeline's ``run_batch``, whose out-of-memory errors split the batch."""
        return self.model.runner.run_model(on_device)

    def _chunks(self, shards: Iterable[tuple[int, list[Record]]]) -> Iterator[Chunk]:
        """Shards as pipeline chunks of their valid rows; the rest become error entries."""
        for index, records in shards:
            pairs, keep, errors = [], [], []
            for rec in records:
                pair, reason = validate_record(rec)
                if reason is None:
                    pairs.append(pair)
                    keep.append(rec)
                else:
                    errors.append(error_entry(rec, reason))
            yield Chunk(index, 0, pairs, meta=(records, keep, errors))

    def embed_shards(
        self,
        outdir: Path,
        shards: Iterable[tuple[int, list[Record]]],
        *,
        overlap: bool | None = None,
    ) -> Iterator[dict]:
        """Embed shards and write their files; yield each one's manifest entry, in order.

        The shards go through :class:`~llm2vec_fast.pipeline.EncodePipeline`, a shard per chunk
        (so its batches are the same whatever comes before or after it): the next shard is
        read, tokenized and packed while this one runs. ``shards`` is read lazily, a shard or
        two ahead; leaving the loop early drops the shards read ahead, unrecorded.
        """
        m, cfg = self.model, self.config
        pipe = EncodePipeline(
            m.text,
            m.runner,
            self._chunks(shards),
            max_tokens_per_batch=cfg.batch_tokens
            or default_token_budget(
                next(m.model.parameters()).device, cfg.batch_size, m.max_length
            ),
            batch_size=cfg.batch_size,
            overlap=overlap,
            split_on_oom=True,
            run_batch=self.run_batch,
        )
        t0 = time.perf_counter()
        try:
            for res in pipe:
                yield self._write_shard(outdir, res, t0)
                t0 = time.perf_counter()
        finally:
            pipe.close()

    def embed_shard(self, outdir: Path, index: int, records: list[Record]) -> dict:
        """Embed one shard and write its files; returns its manifest entry (its batches are
        still copied ahead of the model, its results copied back one batch late)."""
        (entry,) = self.embed_shards(outdir, [(index, records)])
        return entry

    def _write_shard(self, outdir: Path, res: ChunkResult, t0: float) -> dict:
        index = res.chunk.index
        records, keep, errors = res.chunk.meta
        failed = set(res.failed)
        for i in sorted(failed):
            errors.append(error_entry(keep[i], "out of memory even as a batch of one"))
        errors.sort(key=lambda e: e["row"])
        warned = [
            error_entry(keep[i], EMPTY_POOLED) for i in res.chunk.empty_pooled if i not in failed
        ]
        good = [i for i in range(len(keep)) if i not in failed]
        emb = np.ascontiguousarray(res.embeddings[good], dtype=np.float32)
        if self.config.truncate_dim is not None:
            emb = np.ascontiguousarray(emb[:, : self.config.truncate_dim])
        if self.config.normalize and len(emb):
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb / np.maximum(norms, np.float32(1e-12))
        array, scales = quantize(emb, self.config.precision)
        ids = [keep[i].id for i in good]
        files = write_shard(outdir, index, ids, array, scales, self.config.format)
        return {
            "index": index,
            "rows": [records[0].row, records[-1].row + 1],
            "n_embedded": len(ids),
            "n_errors": len(errors),
            "errors": errors,
            "n_warnings": len(warned),
            "warnings": warned,
            "files": files,
            "device": self.device,
            "tokens": res.tokens,
            "batches": res.batches,
            "oom_splits": res.oom_splits,
            "seconds": round(time.perf_counter() - t0, 3),
        }


def error_entry(rec: Record, reason: str) -> dict:
    """A row's line in ``errors.jsonl`` / ``warnings.jsonl``."""
    return {"row": rec.row, "id": rec.id, "source": rec.source, "reason": reason}


def iter_shards(records: Iterator[Record], shard_size: int) -> Iterator[tuple[int, list[Record]]]:
    """``(index, records)`` of consecutive ``shard_size`` rows (the last shard may be shorter)."""
    buf: list[Record] = []
    index = 0
    for rec in records:
        buf.append(rec)
        if len(buf) == shard_size:
            yield index, buf
            index, buf = index + 1, []
    if buf:
        yield index, buf
