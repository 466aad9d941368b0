"""The Ray Data entry point on a local Ray cluster (CPU actors, a tiny model): it writes the
same shards as the local job, resumes a job the local runner started, and the local runner
reads what it wrote."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llm2vec_fast.batch_job import JobConfig, read_embeddings, run_job
from llm2vec_fast.testing import make_tiny_checkpoint

ray = pytest.importorskip(
    "ray", reason="the Ray tests need ray[data]: pip install 'llm2vec-fast[ray]'"
)
pytest.importorskip("ray.data", reason="the Ray tests need ray[data]")

WORDS = "alpha beta gamma delta river bank loan green idea".split()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def files_but_manifest(outdir: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(outdir.iterdir())
        if p.name not in ("manifest.json", ".lock")
    }


def test_ray_job_resumes_a_local_job_byte_identically(local_ray, tmp_path):
    from llm2vec_fast.integrations.ray import run_ray_job

    rng = random.Random(5)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(41)]
    texts[12] = ""  # an error row
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    model = make_tiny_checkpoint(tmp_path / "m", "llama", seed=2)
    config = JobConfig(model=str(model), shard_size=6, format="parquet", precision="int8")
    run_job(tmp_path / "in.jsonl", tmp_path / "local", config, threads=1, show_progress_bar=False)
    reference = files_but_manifest(tmp_path / "local")

    # the local job was interrupted after three shards: keep those, drop the rest
    run_job(tmp_path / "in.jsonl", tmp_path / "mixed", config, threads=1, show_progress_bar=False)
    manifest_path = tmp_path / "mixed/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for shard in manifest["shards"][3:]:
        for f in shard["files"].values():
            (tmp_path / "mixed" / f["file"]).unlink()
    manifest["shards"], manifest["complete"] = manifest["shards"][:3], False
    manifest_path.write_text(json.dumps(manifest))

    s = run_ray_job(
        tmp_path / "in.jsonl",
        tmp_path / "mixed",
        config,
        num_actors=2,
        threads=1,
        show_progress_bar=False,
    )
    assert s["complete"] and s["embedded"] == 40 and s["errors"] == 1
    assert files_but_manifest(tmp_path / "mixed") == reference
    ids, _ = read_embeddings(tmp_path / "mixed")
    assert ids == [f"d{i}" for i in range(41) if i != 12]
    again = run_ray_job(tmp_path / "in.jsonl", tmp_path / "mixed", config, show_progress_bar=False)
    assert again["already_complete"]
