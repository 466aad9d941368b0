"""``encode(device=[...])``: one worker process per device, each loading the model itself.

CI has no GPU, so the workers run on the CPU (``device=["cpu", "cpu"]``: two processes). Starting
them costs a few seconds (each imports torch and loads the model), so one module-scoped pool
serves most tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from llm2vec_fast import LLM2Vec
from llm2vec_fast import multi_device as md

TEXTS = [f"text number {i} " + "word " * (i % 13) for i in range(40)]
TEXTS += [["Retrieve a passage about cats", "cats eat meat"], "", "x"]
DEVICES = ["cpu", "cpu"]


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint("llama", seed=21)


@pytest.fixture(scope="module")
def model(ckpt):
    m = LLM2Vec.from_pretrained(ckpt, device="cpu", max_length=24)
    yield m
    m.close_device_pool()


def test_two_cpu_workers_equal_one_device(model):
    single = model.encode(TEXTS, batch_size=4, show_progress_bar=False)
    multi = model.encode(TEXTS, batch_size=4, device=DEVICES, show_progress_bar=False)
    assert multi.shape == single.shape
    assert_close(multi, single, atol=1e-6, rtol=1e-6)

    (pool,) = model._device_pools.values()
    assert len(set(pool.pids)) == 2 and os.getpid() not in pool.pids

    # token embeddings, normalisation, numpy output, a single string: same as one device
    tok_1 = model.encode(TEXTS, output_value="token_embeddings", show_progress_bar=False)
    tok_n = model.encode(
        TEXTS, output_value="token_embeddings", device=DEVICES, show_progress_bar=False
    )
    assert len(tok_n) == len(tok_1)
    for a, b in zip(tok_n, tok_1):
        assert_close(a, b, atol=1e-6, rtol=1e-6)
    norm = model.encode(
        TEXTS[:7],
        device=DEVICES,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
        max_tokens_per_batch=20,
    )
    expected = model.encode(TEXTS[:7], normalize_embeddings=True, show_progress_bar=False)
    assert_close(torch.from_numpy(norm), expected, atol=1e-6, rtol=1e-6)
    one = model.encode("alpha beta", device=DEVICES, show_progress_bar=False)
    assert_close(one, model.encode("alpha beta", show_progress_bar=False), atol=1e-6, rtol=1e-6)

    # a stream in small chunks: read lazily, batches handed out as workers free up, in order
    streamed = model.encode(
        iter(TEXTS), batch_size=2, chunk_size=5, device=DEVICES, show_progress_bar=False
    )
    assert_close(streamed, single, atol=1e-6, rtol=1e-6)
    tok_s = model.encode(
        (t for t in TEXTS),
        output_value="token_embeddings",
        batch_size=3,
        chunk_size=4,
        device=DEVICES,
        show_progress_bar=False,
    )
    for a, b in zip(tok_s, tok_1, strict=True):
        assert_close(a, b, atol=1e-6, rtol=1e-6)
    blocks = list(model.encode_iter(iter(TEXTS), batch_size=2, chunk_size=8, device=DEVICES))
    assert [len(b) for b in blocks] == [4, 8, 8, 8, 8, 7]  # in input order, chunk by chunk
    assert_close(torch.from_numpy(np.concatenate(blocks)), single, atol=1e-6, rtol=1e-6)

    # the pool is kept between calls (same worker processes), and settings follow the encoder
    assert model._device_pools[tuple(DEVICES)] is pool and pool.alive
    model.pooling_mode = "weighted_mean"
    try:
        got = model.encode(TEXTS, device=DEVICES, show_progress_bar=False)
        assert_close(got, model.encode(TEXTS, show_progress_bar=False), atol=1e-6, rtol=1e-6)
    finally:
        model.pooling_mode = "mean"
    assert model._device_pools[tuple(DEVICES)] is pool

    model.close_device_pool()
    assert not model._device_pools and not pool.alive


def test_one_device_in_a_list_runs_in_process(model, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("no worker process for a single device")

    monkeypatch.setattr(md, "DevicePool", fail)
    out = model.encode(TEXTS[:5], device=["cpu"], show_progress_bar=False)
    assert_close(out, model.encode(TEXTS[:5], show_progress_bar=False))


def test_refused_when_workers_cannot_rebuild_the_model(ckpt):
    m = LLM2Vec.from_pretrained(ckpt, device="cpu")
    with torch.no_grad():  # weights changed in place after loading (as training does)
        m.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    with pytest.raises(ValueError, match="weights .* changed after LLM2Vec.from_pretrained"):
        m.encode(["a"], device=DEVICES)
    m2 = LLM2Vec.from_pretrained(ckpt, device="cpu").to(torch.bfloat16)
    with pytest.raises(ValueError, match="changed after"):
        m2.encode(["a"], device=DEVICES)
    direct = LLM2Vec(m.model, m.tokenizer)
    with pytest.raises(ValueError, match="not loaded with LLM2Vec.from_pretrained"):
        direct.encode(["a"], device=DEVICES)


def test_bad_device_lists(model):
    with pytest.raises(ValueError, match="names no device"):
        model.encode(["a"], device=[])
    with pytest.raises(ValueError, match="invalid device"):
        model.encode(["a"], device=["cpu", "tpu:9"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            model.encode(["a"], device=["cuda:0", "cuda:1"])


def test_device_none_never_starts_processes(model, monkeypatch):
    """With several GPUs visible, ``device=None`` runs on the model's own device, in this
    process: worker processes start only for a device list the caller names."""

    def fail(*args, **kwargs):
        raise AssertionError("no worker process without device=[...]")

    ref = model.encode(TEXTS[:5], show_progress_bar=False)
    monkeypatch.setattr(md, "DevicePool", fail)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    out = model.encode(TEXTS[:5], show_progress_bar=False)
    assert_close(out, ref)
    assert not hasattr(md, "default_devices")


def test_worker_failure_is_reported(ckpt, tmp_path):
    """A worker that cannot load the model reports its error; no process is left behind."""
    copy = shutil.copytree(ckpt, tmp_path / "copy")
    m = LLM2Vec.from_pretrained(copy, device="cpu")
    (copy / "model.safetensors").unlink()
    with pytest.raises(RuntimeError, match="encode worker on cpu failed"):
        m.encode(["a", "b"], device=DEVICES, show_progress_bar=False)
    assert not m.__dict__.get("_device_pools")


SCRIPT = """\
import sys
from llm2vec_fast import LLM2Vec
model = LLM2Vec.from_pretrained(sys.argv[1], device="cpu")
texts = [f"text {i} " + "w " * i for i in range(12)]
multi = model.encode(texts, device=["cpu", "cpu"], batch_size=3, show_progress_bar=False)
single = model.encode(texts, batch_size=3, show_progress_bar=False)
print("MAXDIFF", float((multi - single).abs().max()))
"""


def test_script_without_main_guard(ckpt, tmp_path):
    """A plain script (no ``if __name__ == "__main__":``) encodes on several devices: the workers
    do not re-run it (with spawn's default they would, and die bootstrapping: llm2vec #121)."""
    script = tmp_path / "plain_script.py"
    script.write_text(SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(ckpt)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("MAXDIFF")]
    assert float(line.split()[1]) <= 1e-6


def test_worker_pool_reports_workers_that_die_without_a_word():
    """The pool primitive both multi-device encode and the batch job run on: workers that exit
    without a reply (here ``os._exit`` refuses the pool's arguments and the process exits 1)
    are named with their exit codes instead of being waited for; close() leaves none."""
    from llm2vec_fast.workers import WorkerPool

    pool = WorkerPool(
        os._exit,
        [(), ()],
        ["first", "second"],
        failed=lambda name, detail: AssertionError(f"no error message expected: {detail}"),
        died=lambda dead: RuntimeError(f"died: {sorted(dead)}"),
    )
    try:
        with pytest.raises(RuntimeError, match=r"died: \[\('first', 1\)|died: \[\('second', 1\)"):
            pool.get(timeout=60)
    finally:
        pool.close()
    assert not pool.alive


def test_batch_job_resolve_devices():
    from llm2vec_fast.batch_job import JobError, resolve_devices

    assert resolve_devices(None) == [None]
    assert resolve_devices("cpu, cpu") == ["cpu", "cpu"]
    assert resolve_devices(["cuda:1", "cpu"]) == ["cuda:1", "cpu"]
    n = torch.cuda.device_count()
    assert resolve_devices("all") == ([f"cuda:{i}" for i in range(n)] if n else ["cpu"])
    with pytest.raises(JobError, match="no devices given"):
        resolve_devices(" , ")
    with pytest.raises(JobError, match="bad device 'tpu:9'"):
        resolve_devices("cpu,tpu:9")
