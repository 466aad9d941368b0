"""The batch job's resume: after a SIGKILL at each step of a shard and at a random moment, after
Ctrl-C, with error and warning rows; the resumed output is byte-identical to an uninterrupted
run. The faults are injected from outside the library (``l2vf_support/batch_job_harness.py``)."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from l2vf_support.batch_job_harness import cli_argv, corpus, job, reference, run, shard_bytes, spawn
from llm2vec_fast import LLM2Vec
from llm2vec_fast.batch_job import read_embeddings
from llm2vec_fast.cli import main as cli_main
from llm2vec_fast.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("m") / "llama", "llama", seed=3)


def kill_resume_and_compare(tmp_path: Path, model_dir: Path, kill_at: str, *extra: str) -> None:
    """Embed ``tmp_path/in.txt`` into ``killed`` with a SIGKILL at ``kill_at``, rerun the same
    command to resume, embed it uninterrupted into ``whole``: the files must be identical."""
    argv = cli_argv(tmp_path / "in.txt", tmp_path / "killed", model_dir, *extra)
    proc = spawn(argv, kill_at=kill_at)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert cli_main(argv) == 0
    assert cli_main([*argv[:2], "-o", str(tmp_path / "whole"), *argv[4:]]) == 0
    assert shard_bytes(tmp_path / "killed") == shard_bytes(tmp_path / "whole")


def test_invalid_utf8_resume_is_byte_identical(model_dir, tmp_path):
    lines = [t.encode() for t in corpus(20, seed=13)]
    lines[3] = b"caf\xe9 in Latin-1"  # shard 0
    lines[14] = b"\xc3"  # shard 2: a truncated sequence
    (tmp_path / "in.txt").write_bytes(b"\n".join(lines) + b"\n")
    kill_resume_and_compare(tmp_path, model_dir, "manifest_written:1")
    errors = (tmp_path / "whole/errors.jsonl").read_text().splitlines()
    assert [json.loads(e)["row"] for e in errors] == [3, 14]


@pytest.fixture(scope="module")
def resume_case(model_dir, tmp_path_factory):
    """An input of 10 shards and its uninterrupted output (int8 parquet: three files kinds)."""
    tmp = tmp_path_factory.mktemp("resume")
    texts = corpus(57, seed=21)
    texts[8] = ""  # an error row in shard 1
    (tmp / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    extra = ("--format", "npy", "--precision", "int8")
    assert cli_main(cli_argv(tmp / "in.txt", tmp / "ref", model_dir, *extra)) == 0
    return tmp, extra, shard_bytes(tmp / "ref")


@pytest.mark.parametrize("point", ["embedded:3", "files_written:3", "manifest_written:3"])
def test_resume_after_kill_at_each_step_is_byte_identical(point, resume_case, model_dir):
    tmp, extra, ref = resume_case
    out = tmp / f"killed-{point.split(':')[0]}"
    proc = spawn(cli_argv(tmp / "in.txt", out, model_dir, *extra), kill_at=point)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    manifest = json.loads((out / "manifest.json").read_text())
    done = [s["index"] for s in manifest["shards"]]
    assert done == ([0, 1, 2, 3] if point.startswith("manifest") else [0, 1, 2])
    assert cli_main(cli_argv(tmp / "in.txt", out, model_dir, *extra)) == 0
    assert shard_bytes(out) == ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resume_after_kill_at_a_random_moment_is_byte_identical(seed, resume_case, model_dir):
    tmp, extra, ref = resume_case
    out = tmp / f"random-kill-{seed}"
    # each shard takes at least 0.05 s, so the 10 shards last >= 0.5 s after the manifest
    # appears; the kill lands at a random moment inside that window
    proc = spawn(cli_argv(tmp / "in.txt", out, model_dir, *extra), slow_shard=0.05)
    deadline = time.monotonic() + 120
    while not (out / "manifest.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(0.0, 0.45))
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    assert cli_main(cli_argv(tmp / "in.txt", out, model_dir, *extra)) == 0
    assert shard_bytes(out) == ref
    assert not list(out.glob(".*.tmp-*"))


def test_ctrl_c_finishes_the_shard_and_exits_cleanly(resume_case, model_dir):
    tmp, extra, ref = resume_case
    out = tmp / "sigint"
    proc = spawn(cli_argv(tmp / "in.txt", out, model_dir, *extra), slow_shard=0.5)
    deadline = time.monotonic() + 120
    while not (out / "manifest.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # inside the first shards' slow step
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and 1 <= len(manifest["shards"]) < manifest["n_shards"]
    assert cli_main(cli_argv(tmp / "in.txt", out, model_dir, *extra)) == 0
    assert shard_bytes(out) == ref


def test_empty_pooled_span_is_a_warning_and_resume_is_byte_identical(model_dir, tmp_path):
    """A row embedded although no token of its text is pooled (here: doc_max_length=1 and a
    first code point of several tokens) goes to the manifest's warnings and warnings.jsonl,
    counted in the summary, not to the errors; a long text without spaces is cut by tokens
    and embedded normally. A run killed after its first shard resumes to the same bytes."""
    tag = "\U000e0001" * 5
    texts = ["fine text", "a" * 3000, tag, "another fine text", f"{tag} {tag}", "ok"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    s = run(tmp_path / "in.txt", tmp_path / "out", job(model_dir, doc_max_length=1, shard_size=4))
    assert s["complete"] and s["embedded"] == 6 and s["errors"] == 0 and s["warnings"] == 2
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert [x["n_warnings"] for x in manifest["shards"]] == [1, 1]
    warned = [json.loads(x) for x in (tmp_path / "out/warnings.jsonl").read_text().splitlines()]
    assert [w["row"] for w in warned] == [2, 4] and [w["id"] for w in warned] == [2, 4]
    assert all("pooled span" in w["reason"] for w in warned)
    assert (tmp_path / "out/errors.jsonl").read_text() == ""
    model = LLM2Vec.from_pretrained(str(model_dir), doc_max_length=1)
    with pytest.warns(UserWarning, match="pooled span"):
        want = reference(model, texts)
    ids, emb = read_embeddings(tmp_path / "out")
    assert ids == list(range(6))
    np.testing.assert_allclose(emb, want, atol=1e-5, rtol=0)
    assert np.linalg.norm(emb[1]) > 0 and np.abs(emb[1] - emb[0]).max() > 1e-3

    kill_resume_and_compare(tmp_path, model_dir, "manifest_written:0", "--doc-max-length", "1")
    assert b"pooled span" in shard_bytes(tmp_path / "whole")["warnings.jsonl"]
