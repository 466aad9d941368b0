"""The batch embedding job: a corpus in, a directory of resumable embedding shards out.

``llm2vec-fast embed INPUT -o OUTDIR`` and :func:`run_job` stream the corpus (see
:mod:`llm2vec_fast.io_formats` for the input and shard formats), cut it into shards of
``shard_size`` consecutive rows, and embed shard after shard. The shard is the unit of sorting and
packing (a batch never spans two shards), so a shard's bytes depend only on its rows, the
settings and the device. Each shard's files are written under temporary names and renamed when
complete; then ``manifest.json`` (rewritten atomically) records the shard: its row range, file
checksums, device, errors and any out-of-memory splits. The manifest is the truth: a shard file
it does not list is recomputed.

Rerunning the same command after a crash (``kill -9`` at any moment) or a Ctrl-C continues after
the last recorded shard; the output is then byte-identical to an uninterrupted run on the same
device with the same thread count. A rerun with different settings, a different model or adapter,
or a changed input refuses with the list of differences instead of mixing shards.

Rows that cannot be embedded (not a string, empty or blank, invalid unicode, a broken JSON line,
a text that does not fit in memory even alone) go to ``errors.jsonl`` (row, id, reason) and the
job goes on; the shard files hold only the embedded rows, with their ids. Rows embedded although
no token of their text is pooled (it tokenizes to nothing, or nothing of it fits in
``doc_max_length`` tokens: the vector does not depend on the text) are kept and listed in
``warnings.jsonl`` (row, id, reason; the shards' ``warnings`` in the manifest).

Several devices (``devices=["cuda:0", "cuda:1"]`` or ``"all"``): one worker process per device
loads the model itself and embeds disjoint shards; the parent reads the input, hands out shards
(a bounded queue) and alone writes the manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llm2vec_fast.io_formats import (
    OUTPUT_FORMATS,
    PRECISIONS,
    InputError,
    Record,
    atomic_write,
    check_inputs,
    count_rows,
    dequantize,
    file_sha256,
    fingerprint_inputs,
    iter_records,
    quantize,
    read_shard,
    resolve_inputs,
    write_json_atomic,
    write_shard,
)
from llm2vec_fast.optional import require
from llm2vec_fast.pipeline import Chunk, ChunkResult, EncodePipeline, default_token_budget

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
WARNINGS = "warnings.jsonl"
EMPTY_POOLED = (
    "embedded, but its pooled span is empty: no token of the text is pooled (it tokenizes to "
    "nothing, or nothing of it fits in doc_max_length tokens), so the vector does not depend "
    "on the text"
)
MANIFEST_FORMAT = "llm2vec-fast-embeddings/1"

# Test hooks (environment variables), used by the test suite to simulate faults:
# LLM2VEC_FAST_TEST_OOM_ABOVE_TOKENS=N: a batch of more than N tokens raises OutOfMemoryError.
# LLM2VEC_FAST_TEST_KILL_AT=POINT:SHARD: SIGKILL this process at POINT ("embedded",
#   "files_written", "manifest_written") of shard SHARD.
# LLM2VEC_FAST_TEST_SLOW_SHARD=SECONDS: sleep that long after embedding each shard.
_OOM_ENV = "LLM2VEC_FAST_TEST_OOM_ABOVE_TOKENS"
_KILL_ENV = "LLM2VEC_FAST_TEST_KILL_AT"


class JobError(ValueError):
    """A job that cannot start or continue (bad settings, an output directory it must not
    touch, a manifest that disagrees with this run)."""


@dataclass
class JobConfig:
    """Everything that defines a job's output. Two runs with equal configs (and the same model
    files and input) write the same shards."""

    model: str | None = None
    peft: list[str] = field(default_factory=list)
    base_weights: str | None = None
    pooling: str | None = None
    max_length: int | None = None
    doc_max_length: int | None = None
    dtype: str | None = None
    causal: bool = False
    normalize: bool = False
    precision: str = "float32"
    truncate_dim: int | None = None
    format: str = "npy"
    shard_size: int = 10_000
    batch_size: int = 32
    batch_tokens: int | None = None
    text_column: str = "text"
    id_column: str = "id"
    instruction_column: str = "instruction"
    attn_implementation: str = "auto"

    def check(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise JobError(
                f"unknown output format {self.format!r}; use {', '.join(OUTPUT_FORMATS)}"
            )
        if self.precision not in PRECISIONS:
            raise JobError(f"unknown precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.format == "parquet":  # here, not after the first shard is embedded
            require("pyarrow", feature="writing Parquet shards (--format parquet)")
        for name in ("shard_size", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise JobError(f"{name} must be a positive integer; got {v!r}")
        for name in ("batch_tokens", "truncate_dim"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise JobError(f"{name} must be a positive integer; got {v!r}")
        if self.model is not None and not Path(self.model).exists():
            raise JobError(f"model path {self.model} does not exist")
        for p in self.peft:
            if not Path(p).is_dir():
                raise JobError(f"adapter directory {p} does not exist")

    def output_settings(self) -> dict:
        """The settings a resumed run must share (paths excluded: the model is compared by
        its fingerprint, so a moved checkpoint still resumes)."""
        d = asdict(self)
        for k in ("model", "peft", "base_weights"):
            d.pop(k)
        return d


# ---------------------------------------------------------------------------------- fingerprints


def cached_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered in the cache directory under (absolute path, size,
    modification time), so a large checkpoint is hashed once, not at every run."""
    from llm2vec_fast.loading import cache_dir

    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    store = cache_dir() / "sha256-cache.json"
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        known = {}
    if key not in known:
        known[key] = file_sha256(path)
        with contextlib.suppress(OSError):
            store.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(store, known)
    return known[key]


def model_fingerprint(config: JobConfig) -> dict:
    """SHA-256 of every weight, config and tokenizer file of the base checkpoint (``.gguf``,
    ``.safetensors``, ``.json``, ``tokenizer.model``), of each adapter and of the base weights
    for a published layout; file names map to hashes. Large files are hashed once (see
    :func:`cached_sha256`)."""

    def files_of(base: Path) -> dict:
        paths = sorted(base.iterdir()) if base.is_dir() else [base]
        return {
            p.name: cached_sha256(p)
            for p in paths
            if p.is_file()
            and (p.suffix in (".json", ".safetensors", ".gguf") or p.name == "tokenizer.model")
        }

    if config.model is None:
        from llm2vec_fast.default_model import DEFAULT_MODEL_NAME, default_gguf_path

        base = {"default": DEFAULT_MODEL_NAME, "files": files_of(default_gguf_path())}
    else:
        base = {"files": files_of(Path(config.model))}
    return {
        "base": base,
        "adapters": [files_of(Path(a)) for a in config.peft],
        "base_weights": files_of(Path(config.base_weights)) if config.base_weights else {},
    }


# ---------------------------------------------------------------------------------- shard work


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


def _test_kill(point: str, index: int) -> None:
    if os.environ.get(_KILL_ENV) == f"{point}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


class ShardEmbedder:
    """Loads the model on one device and turns a shard's records into shard files."""

    def __init__(self, config: JobConfig, device: str | None, threads: int | None = None):
        import torch

        from llm2vec_fast.encoder import LLM2Vec
        from llm2vec_fast.loading import LoadSpec

        if threads:
            torch.set_num_threads(threads)
        self.config = config
        spec = LoadSpec.from_options(config)
        self.model = LLM2Vec.from_pretrained(**spec.kwargs(), device=device)
        self.model.eval()
        self.device = str(self.model.runner.device)
        self.hidden_size = int(self.model.model.config.hidden_size)
        if config.truncate_dim is not None and config.truncate_dim > self.hidden_size:
            raise JobError(
                f"truncate_dim {config.truncate_dim} exceeds the model's {self.hidden_size} dims"
            )
        oom = os.environ.get(_OOM_ENV)
        self._oom_above = int(oom) if oom else None

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

    def _run_batch(self, on_device, batch):
        """The model call, behind the out-of-memory test hook."""
        if self._oom_above is not None and batch.n_tokens > self._oom_above:
            import torch

            raise torch.OutOfMemoryError(
                f"simulated out of memory ({batch.n_tokens} tokens > {self._oom_above})"
            )
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
                    errors.append(_error(rec, reason))
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
            run_batch=self._run_batch,
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
            errors.append(_error(keep[i], "out of memory even as a batch of one"))
        errors.sort(key=lambda e: e["row"])
        warned = [_error(keep[i], EMPTY_POOLED) for i in res.chunk.empty_pooled if i not in failed]
        good = [i for i in range(len(keep)) if i not in failed]
        emb = np.ascontiguousarray(res.embeddings[good], dtype=np.float32)
        if self.config.truncate_dim is not None:
            emb = np.ascontiguousarray(emb[:, : self.config.truncate_dim])
        if self.config.normalize and len(emb):
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb / np.maximum(norms, np.float32(1e-12))
        array, scales = quantize(emb, self.config.precision)
        if os.environ.get("LLM2VEC_FAST_TEST_SLOW_SHARD"):
            time.sleep(float(os.environ["LLM2VEC_FAST_TEST_SLOW_SHARD"]))
        _test_kill("embedded", index)
        ids = [keep[i].id for i in good]
        files = write_shard(outdir, index, ids, array, scales, self.config.format)
        _test_kill("files_written", index)
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


def _error(rec: Record, reason: str) -> dict:
    return {"row": rec.row, "id": rec.id, "source": rec.source, "reason": reason}


def _shards(records: Iterator[Record], shard_size: int) -> Iterator[tuple[int, list[Record]]]:
    buf: list[Record] = []
    index = 0
    for rec in records:
        buf.append(rec)
        if len(buf) == shard_size:
            yield index, buf
            index, buf = index + 1, []
    if buf:
        yield index, buf


# ---------------------------------------------------------------------------------- workers


def _worker_main(config: JobConfig, device: str, threads, outdir: str, tasks, results) -> None:
    """One device's worker process: load the model, embed the shards it is given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        embedder = ShardEmbedder(config, device, threads)
        results.put(("ready", device, embedder.describe()))
        # the next shard is taken and tokenized while this one runs (None ends the stream)
        for entry in embedder.embed_shards(Path(outdir), iter(tasks.get, None)):
            results.put(("done", device, entry))
    except BaseException as e:  # report, then let the parent stop the job
        results.put(("error", device, f"{type(e).__name__}: {e}"))


def resolve_devices(devices) -> list[str | None]:
    """``None`` -> [default device]; ``"all"`` -> every CUDA device (the CPU when there is
    none); a comma-separated string or a list -> those devices."""
    import torch

    if devices is None:
        return [None]
    if isinstance(devices, str):
        if devices == "all":
            n = torch.cuda.device_count()
            return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    devices = list(devices)
    if not devices:
        raise JobError("no devices given")
    for d in devices:
        try:
            torch.device(d)
        except (RuntimeError, TypeError) as e:
            raise JobError(f"bad device {d!r}: {e}") from None
    return devices


# ---------------------------------------------------------------------------------- the job


@contextlib.contextmanager
def _locked(outdir: Path):
    outdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(outdir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(f"another job is writing to {outdir}") from None
        yield
    finally:
        os.close(fd)


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the output, {b!r} now")
    return out


class _SigintGuard:
    """First Ctrl-C: finish the shard(s) under way, then stop. Second: abort at once."""

    def __init__(self):
        self.stop = False
        self._old = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        print(
            "\ninterrupted: finishing the shard under way (Ctrl-C again aborts it)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Job:
    """An opened job: its input files, its manifest, and the one place that records a finished
    shard (only the process holding the job writes the manifest)."""

    def __init__(self, files: list[Path], outdir: Path, config: JobConfig, manifest: dict):
        self.files, self.outdir, self.config, self.manifest = files, outdir, config, manifest
        self.columns = dict(
            text_column=config.text_column,
            id_column=config.id_column,
            instruction_column=config.instruction_column,
        )

    @property
    def done(self) -> set[int]:
        return {s["index"] for s in self.manifest["shards"]}

    @property
    def n_shards(self) -> int:
        return self.manifest["n_shards"]

    def write_manifest(self) -> None:
        write_json_atomic(self.outdir / MANIFEST, self.manifest)

    def check_model(self, desc: dict) -> None:
        """The loaded model's resolved settings (pooling, lengths, dims) must be those the
        output was started with; the first run records them."""
        if "model_config" in self.manifest:
            # keys an older version did not record are not compared
            desc = {k: v for k, v in desc.items() if k in self.manifest["model_config"]}
            if self.manifest["model_config"] != desc:
                raise JobError(
                    "the model now resolves to different settings than when this output "
                    "was started: " + "; ".join(_diff(self.manifest["model_config"], desc))
                )
        else:
            self.manifest["model_config"] = desc
            self.write_manifest()

    def record(self, entry: dict) -> dict:
        shards = self.manifest["shards"]
        shards.append(entry)
        shards.sort(key=lambda s: s["index"])
        if len(shards) == self.n_shards:
            self.manifest["complete"] = True
        self.write_manifest()
        _write_errors(self.outdir, self.manifest)
        _test_kill("manifest_written", entry["index"])
        return entry

    def summary(self, **extra) -> dict:
        return {
            "outdir": str(self.outdir),
            "rows": self.manifest["input"]["n_rows"],
            "shards": self.n_shards,
            **_totals(self.manifest),
            "complete": self.manifest["complete"],
            **extra,
        }


@contextlib.contextmanager
def open_job(inputs, outdir, config: JobConfig):
    """Check the settings and the input, lock ``outdir``, read or create its manifest, and
    refuse a manifest made with other settings, model, adapters or input."""
    config.check()
    outdir = Path(outdir)
    try:
        files = resolve_inputs(inputs)
        check_inputs(
            files, text_column=config.text_column, instruction_column=config.instruction_column
        )
    except InputError as e:
        raise JobError(str(e)) from None
    if outdir.exists() and not outdir.is_dir():
        raise JobError(f"output {outdir} exists and is not a directory")
    with _locked(outdir):
        for stale in outdir.glob(".*.tmp-*"):
            stale.unlink()
        manifest_path = outdir / MANIFEST
        input_fp = fingerprint_inputs(files)
        model_fp = model_fingerprint(config)
        job = Job(files, outdir, config, {})
        if manifest_path.exists():
            manifest = _read_manifest(manifest_path)
            diffs = _diff(manifest["settings"], config.output_settings())
            diffs += _diff({"model": manifest["model"]["fingerprint"]}, {"model": model_fp})
            if manifest["input"]["sha256"] != input_fp["sha256"]:
                diffs.append("input: the input files differ from the ones this output was made of")
            if diffs:
                raise JobError(
                    f"{outdir} holds the output of a different job; refusing to mix shards. "
                    "Differences: " + "; ".join(diffs) + ". Use a new output directory."
                )
        else:
            others = [p.name for p in outdir.iterdir() if p.name != ".lock"]
            if others:
                raise JobError(
                    f"{outdir} is not empty and holds no {MANIFEST} (found {others[0]!r}); "
                    "use an empty or new directory"
                )
            try:
                n_rows = count_rows(files, **job.columns)
            except InputError as e:
                raise JobError(str(e)) from None
            if n_rows == 0:
                raise JobError(f"the input ({', '.join(map(str, files))}) contains no texts")
            manifest = {
                "format": MANIFEST_FORMAT,
                "complete": False,
                "settings": config.output_settings(),
                "model": {
                    "path": config.model,
                    "peft": config.peft,
                    "base_weights": config.base_weights,
                    "fingerprint": model_fp,
                },
                "input": {**input_fp, "n_rows": n_rows, **job.columns},
                "n_shards": math.ceil(n_rows / config.shard_size),
                "shards": [],
            }
        job.manifest = manifest
        yield job


def run_job(
    inputs,
    outdir,
    config: JobConfig | None = None,
    *,
    devices=None,
    threads: int | None = None,
    show_progress_bar: bool = True,
) -> dict:
    """Embed a corpus into a directory of shards; resumes an interrupted run of the same job.

    Args:
        inputs: a file, directory or glob pattern, or a list of them (see
            :mod:`llm2vec_fast.io_formats`).
        outdir: the output directory (created; must be empty, or hold this job's output).
        config: the job's settings (:class:`JobConfig`).
        devices: None (the default device), ``"all"``, or a list such as
            ``["cuda:0", "cuda:1"]``: one worker process per device when more than one.
        threads: torch CPU threads (per worker when several).
        show_progress_bar: a tqdm bar with texts/s, tokens/s, shard count and ETA.

    Returns:
        a summary dict (rows, embedded, errors, shards, seconds, tokens, interrupted, ...).
    """
    import torch

    config = config or JobConfig()
    t_start = time.perf_counter()
    devs = resolve_devices(devices)
    with open_job(inputs, outdir, config) as job:
        if job.manifest["complete"]:
            return job.summary(already_complete=True, seconds=0.0)
        done = job.done
        saved_threads = torch.get_num_threads()
        runner = _Runner(job, devs, threads)
        tokens = 0
        try:
            bar = _progress(job, show_progress_bar)
            with _SigintGuard() as guard, bar:
                runner.start()
                shards = _shards(iter_records(job.files, **job.columns), config.shard_size)
                todo = (
                    (index, records)
                    for index, records in shards
                    if index not in done and not guard.stop
                )
                if runner.local is not None:
                    # one device: the next shard is read and tokenized while this one runs
                    for entry in runner.local.embed_shards(job.outdir, todo):
                        entry = job.record(entry)
                        tokens += entry["tokens"]
                        _advance(bar, entry, job, tokens, t_start)
                        if guard.stop:
                            break
                else:
                    for index, records in todo:
                        for entry in runner.submit(index, records):
                            tokens += entry["tokens"]
                            _advance(bar, entry, job, tokens, t_start)
                    for entry in runner.drain():
                        tokens += entry["tokens"]
                        _advance(bar, entry, job, tokens, t_start)
                interrupted = guard.stop and not job.manifest["complete"]
        finally:
            runner.close()
            torch.set_num_threads(saved_threads)
        return job.summary(
            tokens_this_run=tokens,
            seconds=time.perf_counter() - t_start,
            interrupted=interrupted,
        )


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise JobError(f"{path} is not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise JobError(f"{path} is not an llm2vec-fast manifest ({MANIFEST_FORMAT})")
    return manifest


def _totals(manifest: dict) -> dict:
    shards = manifest["shards"]
    return {
        "shards_done": len(shards),
        "embedded": sum(s["n_embedded"] for s in shards),
        "errors": sum(s["n_errors"] for s in shards),
        "warnings": sum(s.get("n_warnings", 0) for s in shards),
        "oom_splits": sum(s["oom_splits"] for s in shards),
    }


def _progress(job: Job, enabled: bool):
    from tqdm.auto import tqdm

    done_rows = sum(s["rows"][1] - s["rows"][0] for s in job.manifest["shards"])
    bar = tqdm(
        total=job.manifest["input"]["n_rows"],
        initial=done_rows,
        unit="text",
        desc="Embedding",
        disable=not enabled,
    )
    bar.set_postfix(shards=f"{len(job.manifest['shards'])}/{job.n_shards}")
    return bar


def _advance(bar, entry: dict, job: Job, tokens: int, t0: float) -> None:
    bar.update(entry["rows"][1] - entry["rows"][0])
    rate = tokens / max(time.perf_counter() - t0, 1e-9)
    bar.set_postfix(shards=f"{len(job.manifest['shards'])}/{job.n_shards}", tok_s=f"{rate:,.0f}")


class _Runner:
    """Runs shards in this process (one device) or in one worker process per device; the
    job records each finished shard."""

    def __init__(self, job: Job, devs, threads):
        self.job, self.devs, self.threads = job, devs, threads
        self.local: ShardEmbedder | None = None
        self.procs: list = []
        self.in_flight = 0

    def start(self) -> None:
        config, outdir = self.job.config, self.job.outdir
        if len(self.devs) == 1:
            self.local = ShardEmbedder(config, self.devs[0], self.threads)
            self.job.check_model(self.local.describe())
            return
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.tasks = ctx.Queue(maxsize=len(self.devs))
        self.results = ctx.Queue()
        threads = self.threads or max(1, (os.cpu_count() or 1) // len(self.devs))
        for d in self.devs:
            p = ctx.Process(
                target=_worker_main,
                args=(config, d, threads, str(outdir), self.tasks, self.results),
                daemon=True,
            )
            p.start()
            self.procs.append(p)
        for _ in self.devs:
            kind, dev, payload = self._get()
            if kind != "ready":
                raise JobError(f"worker on {dev} failed: {payload}")
            self.job.check_model(payload)

    def _get(self):
        import queue

        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise JobError(
                        f"a worker process died (exit code {dead[0].exitcode})"
                    ) from None

    def submit(self, index: int, records: list[Record]) -> list[dict]:
        """Queue one shard for the workers; returns the entries of shards finished meanwhile."""
        finished = []
        while self.in_flight >= 2 * len(self.devs):
            finished.append(self._collect())
        self.tasks.put((index, records))
        self.in_flight += 1
        return finished

    def _collect(self) -> dict:
        kind, dev, payload = self._get()
        if kind == "error":
            raise JobError(f"worker on {dev} failed: {payload}")
        self.in_flight -= 1
        return self.job.record(payload)

    def drain(self) -> list[dict]:
        out = []
        while self.in_flight:
            out.append(self._collect())
        return out

    def close(self) -> None:
        if not self.procs:
            return
        for _ in self.procs:
            with contextlib.suppress(Exception):
                self.tasks.put_nowait(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        self.procs = []


def _write_errors(outdir: Path, manifest: dict) -> None:
    """errors.jsonl and warnings.jsonl: the manifest's shard entries, in row order."""
    for name, key in ((ERRORS, "errors"), (WARNINGS, "warnings")):
        lines = [
            json.dumps(e, ensure_ascii=False) for s in manifest["shards"] for e in s.get(key, [])
        ]
        data = ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
        atomic_write(outdir / name, lambda f, data=data: f.write(data))


# ---------------------------------------------------------------------------------- reading


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
    manifest = _read_manifest(outdir / MANIFEST)
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
