"""The job's output directory and its ``manifest.json``, the truth about what is done.

:func:`open_job` locks the directory, reads or creates the manifest and refuses one made with
other settings, model, adapters or input; :meth:`Job.record` adds a finished shard and rewrites
the manifest atomically, then ``errors.jsonl`` and ``warnings.jsonl`` from it. A shard file the
manifest does not list is recomputed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from pathlib import Path

from llm2vec_fast.batch_job.config import JobConfig, JobError, model_fingerprint
from llm2vec_fast.io_formats import (
    InputError,
    check_inputs,
    count_rows,
    fingerprint_inputs,
    resolve_inputs,
)
from llm2vec_fast.shard_files import atomic_write, write_json_atomic

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
WARNINGS = "warnings.jsonl"
MANIFEST_FORMAT = "llm2vec-fast-embeddings/1"


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
                    "was started: " + "; ".join(diff(self.manifest["model_config"], desc))
                )
        else:
            self.manifest["model_config"] = desc
            self.write_manifest()

    def record(self, entry: dict) -> dict:
        """Add a finished shard's entry to the manifest (written atomically), then rewrite
        ``errors.jsonl`` and ``warnings.jsonl``."""
        shards = self.manifest["shards"]
        shards.append(entry)
        shards.sort(key=lambda s: s["index"])
        if len(shards) == self.n_shards:
            self.manifest["complete"] = True
        self.write_manifest()
        write_errors(self.outdir, self.manifest)
        return entry

    def summary(self, **extra) -> dict:
        return {
            "outdir": str(self.outdir),
            "rows": self.manifest["input"]["n_rows"],
            "shards": self.n_shards,
            **totals(self.manifest),
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
            manifest = read_manifest(manifest_path)
            diffs = diff(manifest["settings"], config.output_settings())
            diffs += diff({"model": manifest["model"]["fingerprint"]}, {"model": model_fp})
            if manifest["input"]["sha256"] != input_fp["sha256"]:
                diffs.append("input: the input files differ from the ones this output was made of")
            if diffs:
                raise JobError(
                    f"{outdir} holds the output of a different job; refusing to mix shards. "
                    "Differences: " + "; ".join(diffs) + ". Use a new output directory."
                )
        else:
            manifest = _new_manifest(job, input_fp, model_fp)
        job.manifest = manifest
        yield job


def _new_manifest(job: Job, input_fp: dict, model_fp: dict) -> dict:
    """The manifest of a job started in the empty directory ``job.outdir``."""
    outdir, config, files = job.outdir, job.config, job.files
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
    return {
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


def diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The differences between two (nested) settings dicts, one line each."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} in the output, {b!r} now")
    return out


def read_manifest(path: Path) -> dict:
    """A job's manifest; refuses a file that is not one."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise JobError(f"{path} is not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise JobError(f"{path} is not an llm2vec-fast manifest ({MANIFEST_FORMAT})")
    return manifest


def totals(manifest: dict) -> dict:
    """Counts over the finished shards: shards, embedded rows, errors, warnings, splits."""
    shards = manifest["shards"]
    return {
        "shards_done": len(shards),
        "embedded": sum(s["n_embedded"] for s in shards),
        "errors": sum(s["n_errors"] for s in shards),
        "warnings": sum(s.get("n_warnings", 0) for s in shards),
        "oom_splits": sum(s["oom_splits"] for s in shards),
    }


def write_errors(outdir: Path, manifest: dict) -> None:
    """errors.jsonl and warnings.jsonl: the manifest's shard entries, in row order."""
    for name, key in ((ERRORS, "errors"), (WARNINGS, "warnings")):
        lines = [
            json.dumps(e, ensure_ascii=False) for s in manifest["shards"] for e in s.get(key, [])
        ]
        data = ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
        atomic_write(outdir / name, lambda f, data=data: f.write(data))
