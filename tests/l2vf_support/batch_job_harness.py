"""The batch job tests' harness: corpora, command lines, output bytes, and faults injected
from outside the library.

Run as a script, it is ``llm2vec-fast`` with faults:

    python tests/l2vf_support/batch_job_harness.py [--kill-at POINT:SHARD] [--slow-shard SECONDS]
        [--oom-above TOKENS] -- embed INPUT -o OUTDIR ...

The faults are monkeypatches of the library's functions, installed in this process before the
command line runs (the library carries no test hook):

- ``--kill-at POINT:SHARD``: SIGKILL this process at POINT of shard SHARD: ``embedded`` (its
  embeddings computed, its files not yet written), ``files_written`` (its files written, the
  manifest not yet), ``manifest_written`` (the manifest records it).
- ``--slow-shard SECONDS``: sleep that long after embedding each shard, before its files.
- ``--oom-above TOKENS``: a batch of more than TOKENS tokens raises ``torch.OutOfMemoryError``
  (:func:`oom_above`, also used in the test process itself).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORDS = "the of river bank money loan walk fast slow green idea sleeps furiously".split()


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(n)]


def reference(encoder, items: list):
    """What ``encode`` gives for ``items`` (numpy)."""
    return encoder.encode(items, convert_to_numpy=True, show_progress_bar=False)


def job(model_dir, **kw):
    """A job on ``model_dir``, shards of 7 rows unless given."""
    from llm2vec_fast.batch_job import JobConfig

    kw.setdefault("shard_size", 7)
    return JobConfig(model=str(model_dir), **kw)


def run(inputs, out, config, **kw):
    """``run_job`` on one thread, no progress bar."""
    from llm2vec_fast.batch_job import run_job

    kw.setdefault("threads", 1)
    return run_job(inputs, out, config, show_progress_bar=False, **kw)


def shard_bytes(outdir: Path) -> dict[str, bytes]:
    """Every output file but the manifest (it holds timings) and the lock."""
    return {
        p.name: p.read_bytes()
        for p in sorted(outdir.iterdir())
        if p.name not in ("manifest.json", ".lock")
    }


def cli_argv(inp: Path, out: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        "embed", str(inp), "-o", str(out), "--model", str(model_dir), "--threads", "1",
        "--shard-size", "6", "-q", *extra,
    ]  # fmt: skip


def spawn(
    argv: list[str],
    *,
    kill_at: str | None = None,
    slow_shard: float | None = None,
    oom_above: int | None = None,
) -> subprocess.Popen:
    """``llm2vec-fast ARGV`` in a child process, with the faults given (see the module doc)."""
    faults = []
    if kill_at is not None:
        faults += ["--kill-at", kill_at]
    if slow_shard is not None:
        faults += ["--slow-shard", str(slow_shard)]
    if oom_above is not None:
        faults += ["--oom-above", str(oom_above)]
    return subprocess.Popen(
        [sys.executable, __file__, *faults, "--", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------------------------- faults


def oom_above(limit: int):
    """A ``ShardEmbedder.run_batch`` that raises ``torch.OutOfMemoryError`` for a batch of more
    than ``limit`` tokens and otherwise runs the model."""
    import torch

    from llm2vec_fast.batch_job.shards import ShardEmbedder

    real = ShardEmbedder.run_batch

    def run_batch(self, tensors, batch):
        if batch.n_tokens > limit:
            raise torch.OutOfMemoryError(
                f"simulated out of memory ({batch.n_tokens} tokens > {limit})"
            )
        return real(self, tensors, batch)

    return run_batch


def inject(
    kill_at: str | None = None, slow_shard: float | None = None, oom_limit: int | None = None
) -> None:
    """Install the faults in this process (see the module doc)."""
    from llm2vec_fast.batch_job import manifest, shards

    def kill(point: str, index: int) -> None:
        if kill_at == f"{point}:{index}":
            os.kill(os.getpid(), signal.SIGKILL)

    real_write, real_record = shards.write_shard, manifest.Job.record

    def write_shard(outdir, index, *args, **kwargs):
        if slow_shard:
            time.sleep(slow_shard)
        kill("embedded", index)
        files = real_write(outdir, index, *args, **kwargs)
        kill("files_written", index)
        return files

    def record(self, entry: dict) -> dict:
        entry = real_record(self, entry)
        kill("manifest_written", entry["index"])
        return entry

    shards.write_shard = write_shard
    manifest.Job.record = record
    if oom_limit is not None:
        shards.ShardEmbedder.run_batch = oom_above(oom_limit)


def main(argv: list[str]) -> int:
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="batch_job_harness.py")
    p.add_argument("--kill-at", default=None, metavar="POINT:SHARD")
    p.add_argument("--slow-shard", type=float, default=None, metavar="SECONDS")
    p.add_argument("--oom-above", type=int, default=None, metavar="TOKENS")
    args = p.parse_args(argv[:split])
    inject(args.kill_at, args.slow_shard, args.oom_above)
    from llm2vec_fast.cli import main as cli_main

    return cli_main(argv[split + 1 :])


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # the checkout under test, as `python -m` from its root
    sys.exit(main(sys.argv[1:]))
