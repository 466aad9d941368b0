"""Running a job: :func:`run_job` reads the input lazily, cuts it into shards, embeds the
shards not yet done (here, or in one worker process per device), and records each one in the
manifest; a first Ctrl-C finishes the shard under way."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from llm2vec_fast.batch_job.config import JobConfig, JobError
from llm2vec_fast.batch_job.manifest import Job, open_job
from llm2vec_fast.batch_job.shards import ShardEmbedder, iter_shards
from llm2vec_fast.devices import parse_devices
from llm2vec_fast.io_formats import Record, iter_records
from llm2vec_fast.workers import WorkerPool


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
                shards = iter_shards(iter_records(job.files, **job.columns), config.shard_size)
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
    """Runs shards in this process (one device) or in one worker process per device
    (:class:`~llm2vec_fast.workers.WorkerPool`); the job records each finished shard."""

    def __init__(self, job: Job, devs, threads):
        self.job, self.devs, self.threads = job, devs, threads
        self.local: ShardEmbedder | None = None
        self.pool: WorkerPool | None = None
        self.in_flight = 0

    def start(self) -> None:
        config, outdir = self.job.config, self.job.outdir
        if len(self.devs) == 1:
            self.local = ShardEmbedder(config, self.devs[0], self.threads)
            self.job.check_model(self.local.describe())
            return
        threads = self.threads or max(1, (os.cpu_count() or 1) // len(self.devs))
        self.pool = WorkerPool(
            _worker_main,
            [(config, d, threads, str(outdir)) for d in self.devs],
            self.devs,
            failed=lambda dev, detail: JobError(f"worker on {dev} failed: {detail}"),
            died=lambda dead: JobError(f"a worker process died (exit code {dead[0][1]})"),
            max_tasks=len(self.devs),
            label="llm2vec-fast-job",
        )
        for desc in self.pool.wait_ready():
            self.job.check_model(desc)

    def submit(self, index: int, records: list[Record]) -> list[dict]:
        """Queue one shard for the workers; returns the entries of shards finished meanwhile."""
        finished = []
        while self.in_flight >= 2 * len(self.devs):
            finished.append(self._collect())
        self.pool.put((index, records))
        self.in_flight += 1
        return finished

    def _collect(self) -> dict:
        _, _, entry = self.pool.get()
        self.in_flight -= 1
        return self.job.record(entry)

    def drain(self) -> list[dict]:
        out = []
        while self.in_flight:
            out.append(self._collect())
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def _worker_main(
    rank: int, config: JobConfig, device: str, threads, outdir: str, tasks, results
) -> None:
    """One device's worker process: load the model, embed the shards it is given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        embedder = ShardEmbedder(config, device, threads)
        results.put(("ready", rank, embedder.describe()))
        # the next shard is taken and tokenized while this one runs (None ends the stream)
        for entry in embedder.embed_shards(Path(outdir), iter(tasks.get, None)):
            results.put(("done", rank, entry))
    except BaseException as e:  # report, then let the parent stop the job
        results.put(("error", rank, f"{type(e).__name__}: {e}"))


def resolve_devices(devices) -> list[str | None]:
    """``None`` -> [default device]; ``"all"`` -> every CUDA device (the CPU when there is
    none); a comma-separated string or a list -> those devices (split and expanded by
    :func:`llm2vec_fast.devices.parse_devices`, each checked by ``torch.device``)."""
    import torch

    names = parse_devices(devices)
    if names is None:
        return [None]
    if not names:
        raise JobError("no devices given")
    for d in names:
        try:
            torch.device(d)
        except (RuntimeError, TypeError) as e:
            raise JobError(f"bad device {d!r}: {e}") from None
    return names


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
