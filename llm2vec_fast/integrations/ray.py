"""The batch embedding job on a Ray cluster: Ray Data maps the encoder over the corpus's shards
with one actor per GPU, and the driver writes the same shard directory and manifest as
``llm2vec-fast embed INPUT -o OUTDIR`` (:mod:`llm2vec_fast.batch_job`), so a job started with one
can be resumed with the other.

    import ray
    from llm2vec_fast.batch_job import JobConfig, read_embeddings
    from llm2vec_fast.integrations.ray import run_ray_job

    ray.init(address="auto")                     # an existing cluster (or ray.init() locally)
    run_ray_job("/shared/corpus/*.parquet", "/shared/embeddings",
                JobConfig(model="/shared/models/my-llm2vec", dtype="bfloat16",
                          shard_size=50_000, format="parquet"))
    ids, emb = read_embeddings("/shared/embeddings")

How it runs: the driver reads the input once to plan the shards (where each starts: a byte offset
in a .txt/.jsonl file, a row count in a .csv or Parquet file; Parquet skips whole row groups),
then builds a Ray Dataset of the shards still to do and ``map_batches`` it through a pool of
actors (``num_gpus_per_actor`` GPUs each; one actor per GPU by default). Each actor loads the
model once, reads its shard's rows from the input files itself, embeds them (sorted and packed
within the shard, as the local job does), writes the shard files atomically into the output
directory, and returns the shard's manifest entry; the driver records entries as they stream
in. The input files and the output directory must therefore be on storage every node sees (a
shared or network filesystem). Stopping the driver at any moment loses at most the shards in
flight; rerun to continue.

Needs ``pip install 'llm2vec-fast[ray]'`` (``ray[data]``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import numpy as np

from llm2vec_fast.batch_job import JobConfig, JobError, ShardEmbedder, open_job
from llm2vec_fast.io_formats import iter_records, plan_shards
from llm2vec_fast.optional import require

__all__ = ["run_ray_job", "ShardActor"]


def _ray():
    require("ray", "pyarrow", feature="run_ray_job (the batch job on Ray Data)")
    import ray

    return ray


class ShardActor:
    """A Ray Data callable class: loads the model once per actor, then turns each batch of
    shard plans (column ``plan``: JSON) into written shards (column ``entry``: the manifest
    entries as JSON)."""

    def __init__(
        self, config: dict, files: list[str], outdir: str, columns: dict, threads: int | None
    ):
        self.embedder = ShardEmbedder(JobConfig(**config), device=None, threads=threads)
        self.files = [Path(f) for f in files]
        self.outdir = Path(outdir)
        self.columns = columns

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = []
        for plan_json in batch["plan"]:
            plan = json.loads(plan_json)
            first, stop = plan["rows"]
            rows = iter_records(self.files, start=plan["start"], **self.columns)
            records = list(islice(rows, stop - first))
            if len(records) != stop - first or records[0].row != first:
                raise JobError(f"shard {plan['index']}: the input changed while the job ran")
            entry = self.embedder.embed_shard(self.outdir, plan["index"], records)
            entry["model_config"] = self.embedder.describe()
            entries.append(json.dumps(entry))
        return {"entry": np.array(entries, dtype=object)}


def run_ray_job(
    inputs,
    outdir,
    config: JobConfig | None = None,
    *,
    num_actors: int | None = None,
    num_gpus_per_actor: float | None = None,
    threads: int | None = None,
    show_progress_bar: bool = True,
) -> dict:
    """Run (or resume) a batch embedding job on the Ray cluster this process is connected to
    (``ray.init`` is called with defaults when it is not).

    Args:
        inputs, outdir, config: as for :func:`llm2vec_fast.batch_job.run_job`; the paths must
            be visible to every node.
        num_actors: actors (model replicas); default one per GPU in the cluster, or 1 on a
            cluster without GPUs.
        num_gpus_per_actor: GPUs each actor reserves; default 1 when the cluster has GPUs,
            else 0 (the actors run on CPUs).
        threads: torch CPU threads in each actor.

    Returns:
        the same summary dict as ``run_job``.
    """
    ray = _ray()
    from tqdm.auto import tqdm

    config = config or JobConfig()
    t0 = time.perf_counter()
    with open_job(inputs, outdir, config) as job:
        if job.manifest["complete"]:
            return job.summary(already_complete=True, seconds=0.0)
        plans = plan_shards(job.files, config.shard_size, **job.columns)
        if len(plans) != job.n_shards or plans[-1]["rows"][1] != job.manifest["input"]["n_rows"]:
            raise JobError("the input's row count differs from the manifest's")
        done = job.done
        todo = [p for p in plans if p["index"] not in done]
        if not ray.is_initialized():
            ray.init()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if num_gpus_per_actor is None:
            num_gpus_per_actor = 1 if gpus else 0
        if num_actors is None:
            num_actors = max(1, int(gpus // num_gpus_per_actor) if num_gpus_per_actor else 1)
        num_actors = max(1, min(num_actors, len(todo)))
        ds = ray.data.from_items([{"plan": json.dumps(p)} for p in todo])
        results = ds.map_batches(
            ShardActor,
            fn_constructor_kwargs={
                "config": asdict(config),
                "files": [str(f.resolve()) for f in job.files],
                "outdir": str(Path(outdir).resolve()),
                "columns": job.columns,
                "threads": threads,
            },
            batch_size=1,
            concurrency=num_actors,
            num_gpus=num_gpus_per_actor,
            batch_format="numpy",
        )
        tokens = 0
        done_rows = sum(s["rows"][1] - s["rows"][0] for s in job.manifest["shards"])
        with tqdm(
            total=job.manifest["input"]["n_rows"],
            initial=done_rows,
            unit="text",
            desc="Embedding (Ray)",
            disable=not show_progress_bar,
        ) as bar:
            for row in results.iter_rows():
                entry = json.loads(row["entry"])
                job.check_model(entry.pop("model_config"))
                job.record(entry)
                tokens += entry["tokens"]
                bar.update(entry["rows"][1] - entry["rows"][0])
                bar.set_postfix(
                    shards=f"{len(job.manifest['shards'])}/{job.n_shards}",
                    tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f}",
                )
        return job.summary(
            tokens_this_run=tokens, seconds=time.perf_counter() - t0, interrupted=False
        )
