"""The batch embedding job: input formats, shard formats and precisions, the errors file,
out-of-memory splits, refusal of mixed settings, resume after SIGKILL and Ctrl-C, several
worker processes, and the command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from l2vf_support.batch_job_harness import (
    cli_argv,
    corpus,
    job,
    oom_above,
    reference,
    run,
    shard_bytes,
)
from llm2vec_fast import LLM2Vec
from llm2vec_fast.batch_job import JobConfig, JobError, read_embeddings
from llm2vec_fast.cli import main as cli_main
from llm2vec_fast.shard_files import dequantize, quantize
from llm2vec_fast.testing import make_tiny_checkpoint

pa = pytest.importorskip("pyarrow", reason="Parquet tests need pyarrow (the [parquet] extra)")
import pyarrow.parquet as pq  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> Path:
    return tiny_checkpoint("llama", seed=3)


@pytest.fixture(scope="module")
def encoder(model_dir) -> LLM2Vec:
    return LLM2Vec.from_pretrained(str(model_dir))


# ---------------------------------------------------------------------------------- inputs


def write_inputs(tmp: Path, texts: list[str], instructions: list[str]) -> dict[str, tuple]:
    """The same rows in every input format: name -> (path or glob, expected items, ids)."""
    n = len(texts)
    ids = [f"doc-{i}" for i in range(n)]
    pairs = [[ins, t] if ins else t for ins, t in zip(instructions, texts)]
    out = {}
    (tmp / "a.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out["txt"] = (tmp / "a.txt", texts, list(range(n)))
    with open(tmp / "a.jsonl", "w", encoding="utf-8") as f:
        for i, t, ins in zip(ids, texts, instructions):
            f.write(json.dumps({"id": i, "text": t, **({"instruction": ins} if ins else {})}))
            f.write("\n")
    out["jsonl"] = (tmp / "a.jsonl", pairs, ids)
    for kind, sep in (("csv", ","), ("tsv", "\t")):
        import csv

        with open(tmp / f"a.{kind}", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter=sep)
            w.writerow(["key", "body", "instruction"])
            for i, t, ins in zip(ids, texts, instructions):
                w.writerow([i, t, ins])
        out[kind] = (tmp / f"a.{kind}", pairs, ids)
    table = pa.table({"id": ids, "text": texts, "instruction": instructions})
    pq.write_table(table, tmp / "a.parquet", row_group_size=5)
    out["parquet"] = (tmp / "a.parquet", pairs, ids)
    parts = tmp / "parts"
    parts.mkdir()
    half = n // 2
    (parts / "p0.txt").write_text("\n".join(texts[:half]) + "\n", encoding="utf-8")
    (parts / "p1.txt").write_text("\n".join(texts[half:]) + "\n", encoding="utf-8")
    out["directory"] = (parts, texts, list(range(n)))
    out["glob"] = (str(parts / "p*.txt"), texts, list(range(n)))
    return out


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "tsv", "parquet", "directory", "glob"])
def test_every_input_format(kind, model_dir, encoder, tmp_path):
    texts = corpus(23, seed=hash(kind) % 1000)
    instructions = ["Retrieve a passage" if i % 3 == 0 else "" for i in range(len(texts))]
    path, items, ids = write_inputs(tmp_path, texts, instructions)[kind]
    cols = {"text_column": "body", "id_column": "key"} if kind in ("csv", "tsv") else {}
    s = run(path, tmp_path / "out", job(model_dir, **cols))
    assert s["complete"] and s["embedded"] == len(texts) and s["errors"] == 0
    got_ids, emb = read_embeddings(tmp_path / "out")
    assert got_ids == ids
    np.testing.assert_allclose(emb, reference(encoder, items), rtol=0, atol=1e-5)


def test_missing_text_column_is_a_clear_error(model_dir, tmp_path):
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "x.parquet")
    with pytest.raises(JobError, match=r"x\.parquet.*no column 'text'.*--text-column"):
        run(tmp_path / "x.parquet", tmp_path / "out", job(model_dir))
    (tmp_path / "x.csv").write_text("body\nhello\n", encoding="utf-8")
    with pytest.raises(JobError, match=r"x\.csv.*no column 'text'"):
        run(tmp_path / "x.csv", tmp_path / "out2", job(model_dir))
    with pytest.raises(JobError, match="does not exist"):
        run(tmp_path / "nope.txt", tmp_path / "out3", job(model_dir))


# ---------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("fmt", ["npy", "parquet", "safetensors"])
@pytest.mark.parametrize("precision", ["float32", "float16", "int8", "binary"])
def test_output_formats_and_precisions(fmt, precision, model_dir, encoder, tmp_path):
    texts = corpus(19, seed=7)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    truncate = 40 if precision in ("int8", "binary") else None
    cfg = job(model_dir, format=fmt, precision=precision, truncate_dim=truncate, normalize=True)
    run(tmp_path / "in.txt", tmp_path / "out", cfg)
    ref = torch.tensor(reference(encoder, texts))
    if truncate:
        ref = ref[:, :truncate]
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    ids, stored = read_embeddings(tmp_path / "out")
    assert ids == list(range(len(texts)))
    _, deq = read_embeddings(tmp_path / "out", dequantized=True)
    assert deq.dtype == np.float32 and deq.shape == ref.shape
    if precision == "float32":
        assert stored.dtype == np.float32
        np.testing.assert_allclose(stored, ref, rtol=0, atol=1e-6)
    elif precision == "float16":
        assert stored.dtype == np.float16
        np.testing.assert_allclose(deq, ref, rtol=2**-11, atol=1e-7)
    elif precision == "int8":
        assert stored.dtype == np.int8
        bound = np.abs(ref).max(axis=1, keepdims=True) / 254 + 1e-6  # the documented bound
        assert np.all(np.abs(deq - ref) <= bound)
    else:
        assert stored.dtype == np.uint8 and stored.shape == (len(texts), truncate // 8)
        np.testing.assert_array_equal(deq > 0, ref > 0)


def test_quantize_bounds_on_random_data():
    rng = np.random.default_rng(11)
    for d in (1, 7, 64, 100):
        x = (rng.standard_normal((33, d)) * rng.uniform(0.01, 100, (33, 1))).astype(np.float32)
        x[3] = 0.0  # an all-zero row
        q, s = quantize(x, "int8")
        assert q.dtype == np.int8 and s.shape == (33,)
        err = np.abs(dequantize(q, "int8", s) - x)
        assert np.all(err <= np.abs(x).max(axis=1, keepdims=True) / 254 * (1 + 1e-6) + 1e-30)
        b, _ = quantize(x, "binary")
        np.testing.assert_array_equal(dequantize(b, "binary", dim=d) > 0, x > 0)
    with pytest.raises(ValueError, match="unknown precision"):
        quantize(x, "int4")


# ---------------------------------------------------------------------------------- faults


def test_errors_file_and_the_job_goes_on(model_dir, encoder, tmp_path):
    lines = [
        json.dumps({"id": "a", "text": "a fine text"}),
        json.dumps({"id": "b", "text": ""}),
        json.dumps({"id": "c", "text": 42}),
        '{"id": "d", "text": "broken',
        json.dumps({"id": "e", "body": "no text field"}),
        json.dumps({"id": "f", "text": "   \t "}),
        json.dumps({"id": "g", "text": "lone \ud800 surrogate"}),
        json.dumps({"id": "h", "text": "ok", "instruction": ["not", "a", "string"]}),
        json.dumps({"id": "i", "text": "another fine text"}),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = run(tmp_path / "in.jsonl", tmp_path / "out", job(model_dir, shard_size=4))
    assert s["complete"] and s["embedded"] == 2 and s["errors"] == 7
    ids, emb = read_embeddings(tmp_path / "out")
    assert ids == ["a", "i"]
    np.testing.assert_allclose(
        emb, reference(encoder, ["a fine text", "another fine text"]), atol=1e-5, rtol=0
    )
    errors = [json.loads(x) for x in (tmp_path / "out/errors.jsonl").read_text().splitlines()]
    by_id = {e["id"]: e for e in errors}
    assert [e["row"] for e in errors] == [1, 2, 3, 4, 5, 6, 7]
    assert by_id["b"]["reason"] == "empty text" and by_id["f"]["reason"] == "empty text"
    assert "not a string" in by_id["c"]["reason"]
    assert "not valid JSON" in errors[2]["reason"] and errors[2]["source"] == "in.jsonl:4"
    assert '"text"' in by_id["e"]["reason"]
    assert "unicode" in by_id["g"]["reason"]
    assert "instruction" in by_id["h"]["reason"]


def write_invalid_utf8(tmp: Path, kind: str) -> Path:
    """Rows "good one", <invalid UTF-8>, "good two" (ids a, b, c where the format has ids):
    a byte 0xff (never valid) or an encoded surrogate (ED A0 80, refused by UTF-8)."""
    path = tmp / f"bad.{kind}"
    if kind == "txt":
        path.write_bytes(b"good one\nbad \xff line\ngood two\n")
    elif kind == "jsonl":
        path.write_bytes(
            b'{"id": "a", "text": "good one"}\n{"id": "b", "text": "bad \xed\xa0\x80"}\n'
            b'{"id": "c", "text": "good two"}\n'
        )
    elif kind in ("csv", "tsv"):
        sep = b"," if kind == "csv" else b"\t"
        rows = [[b"id", b"text"], [b"a", b"good one"], [b"b", b"bad \xff"], [b"c", b"good two"]]
        path.write_bytes(b"".join(sep.join(r) + b"\n" for r in rows))
    else:  # Parquet: a string column holding bytes that are not UTF-8 (pyarrow does not check)
        raw = pa.array([b"good one", b"bad \xff", b"good two"], type=pa.binary())
        pq.write_table(pa.table({"id": ["a", "b", "c"], "text": raw.view(pa.string())}), path)
    return path


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "tsv", "parquet"])
def test_invalid_utf8_goes_to_errors_and_the_job_goes_on(kind, model_dir, encoder, tmp_path):
    """The README: a row of invalid unicode goes to errors.jsonl; it is not embedded with
    U+FFFD in place of its bytes (nor, for Parquet, does it stop the job)."""
    path = write_invalid_utf8(tmp_path, kind)
    s = run(path, tmp_path / "out", job(model_dir))
    assert s["complete"] and s["embedded"] == 2 and s["errors"] == 1
    ids, emb = read_embeddings(tmp_path / "out")
    assert ids == ([0, 2] if kind == "txt" else ["a", "c"])
    np.testing.assert_allclose(emb, reference(encoder, ["good one", "good two"]), atol=1e-5)
    (err,) = [json.loads(x) for x in (tmp_path / "out/errors.jsonl").read_text().splitlines()]
    line = {"txt": 2, "jsonl": 2, "csv": 3, "tsv": 3, "parquet": 2}[kind]  # parquet: its row
    assert err["row"] == 1 and err["source"] == f"bad.{kind}:{line}"
    assert err["id"] == (1 if kind == "txt" else "b")
    assert "invalid UTF-8" in err["reason"], err
    # the single-file mode stops on it, naming the line
    assert (
        cli_main(["embed", str(path), "-o", str(tmp_path / "x.npy"), "--model", str(model_dir)])
        == 2
    )


def test_parquet_output_without_pyarrow_fails_before_any_work(
    model_dir, tmp_path, monkeypatch, capsys
):
    """--format parquet without pyarrow: refused up front (no model load, no output directory),
    naming the extra; the command line prints one line and exits with 2."""
    import llm2vec_fast.batch_job as batch_job
    from llm2vec_fast.optional import MissingDependencyError

    (tmp_path / "in.txt").write_text("one\ntwo\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setattr(batch_job.ShardEmbedder, "__init__", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(MissingDependencyError, match=r"pip install 'llm2vec-fast\[parquet\]'"):
        run(tmp_path / "in.txt", tmp_path / "out", job(model_dir, format="parquet"))
    assert not (tmp_path / "out").exists()
    argv = cli_argv(tmp_path / "in.txt", tmp_path / "out", model_dir, "--format", "parquet")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: writing Parquet shards (--format parquet) needs pyarrow")
    assert "pip install 'llm2vec-fast[parquet]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_parquet_input_without_pyarrow_names_the_extra(model_dir, tmp_path, monkeypatch, capsys):
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "in.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    for out in (tmp_path / "out", tmp_path / "x.npy"):
        argv = ["embed", str(tmp_path / "in.parquet"), "-o", str(out), "--model", str(model_dir)]
        assert cli_main([*argv, "-q"]) == 2
        err = capsys.readouterr().err
        assert "in.parquet needs pyarrow" in err and "pip install 'llm2vec-fast[parquet]'" in err
        assert "Traceback" not in err and not out.exists()


def test_out_of_memory_splits_the_batch(model_dir, tmp_path, monkeypatch):
    import llm2vec_fast.batch_job as batch_job

    texts = corpus(30, seed=5)
    texts[4] = " ".join(["river"] * 120)  # over the simulated limit even alone
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    plain = run(tmp_path / "in.txt", tmp_path / "plain", job(model_dir, shard_size=30))
    assert plain["oom_splits"] == 0
    monkeypatch.setattr(batch_job.ShardEmbedder, "run_batch", oom_above(100))
    s = run(tmp_path / "in.txt", tmp_path / "split", job(model_dir, shard_size=30))
    assert s["oom_splits"] > 0 and s["errors"] == 1 and s["embedded"] == 29
    manifest = json.loads((tmp_path / "split/manifest.json").read_text())
    assert manifest["shards"][0]["oom_splits"] == s["oom_splits"]
    err = json.loads((tmp_path / "split/errors.jsonl").read_text())
    assert err["row"] == 4 and "out of memory" in err["reason"]
    ids_a, a = read_embeddings(tmp_path / "plain")
    ids_b, b = read_embeddings(tmp_path / "split")
    keep = [i for i in ids_a if i != 4]
    assert ids_b == keep
    np.testing.assert_allclose(b, a[keep], rtol=0, atol=1e-5)


def test_refuses_to_mix_settings(model_dir, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(corpus(10, 1)) + "\n", encoding="utf-8")
    run(tmp_path / "in.txt", tmp_path / "out", job(model_dir))
    before = shard_bytes(tmp_path / "out")
    with pytest.raises(JobError, match=r"refusing to mix.*precision: 'float32' in the output"):
        run(tmp_path / "in.txt", tmp_path / "out", job(model_dir, precision="int8"))
    with pytest.raises(JobError, match="shard_size"):
        run(tmp_path / "in.txt", tmp_path / "out", job(model_dir, shard_size=3))
    other = make_tiny_checkpoint(tmp_path / "other", "llama", seed=99)
    with pytest.raises(JobError, match="model"):
        run(tmp_path / "in.txt", tmp_path / "out", JobConfig(model=str(other), shard_size=7))
    (tmp_path / "in.txt").write_text("\n".join(corpus(10, 2)) + "\n", encoding="utf-8")
    with pytest.raises(JobError, match="input files differ"):
        run(tmp_path / "in.txt", tmp_path / "out", job(model_dir))
    assert shard_bytes(tmp_path / "out") == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    with pytest.raises(JobError, match="not empty"):
        run(tmp_path / "in.txt", tmp_path / "busy", job(model_dir))


def test_second_job_on_the_same_output_refuses(model_dir, tmp_path):
    import fcntl

    (tmp_path / "in.txt").write_text("a\nb\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(JobError, match="another job"):
            run(tmp_path / "in.txt", out, job(model_dir))
    finally:
        os.close(fd)


def embed_on_cli(tmp_path: Path, model_dir: Path, capsys, content: str, *extra: str):
    """``llm2vec-fast embed`` of ``content`` (written to in.txt) into ``tmp_path/out``, which
    must succeed; returns the output directory, the command line and what it printed."""
    (tmp_path / "in.txt").write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    argv = cli_argv(tmp_path / "in.txt", out, model_dir, *extra)
    assert cli_main(argv) == 0
    return out, argv, capsys.readouterr().out


def test_cli_summary_counts_warnings(model_dir, tmp_path, capsys):
    out, argv, text = embed_on_cli(
        tmp_path, model_dir, capsys, "one\n\U000e0001\U000e0001\n\nfour\n", "--doc-max-length", "1"
    )
    assert "3 texts embedded, 1 errors" in text and "1 warnings" in text, text
    assert str(out / "warnings.jsonl") in text
    assert cli_main(argv) == 0
    assert "1 warnings" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- devices


def test_several_worker_processes_write_the_same_output(model_dir, tmp_path):
    texts = corpus(40, seed=9)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    run(tmp_path / "in.txt", tmp_path / "one", job(model_dir))
    s = run(tmp_path / "in.txt", tmp_path / "two", job(model_dir), devices=["cpu", "cpu"])
    assert s["complete"] and s["embedded"] == 40
    manifest = json.loads((tmp_path / "two/manifest.json").read_text())
    assert [x["index"] for x in manifest["shards"]] == list(range(6))
    assert shard_bytes(tmp_path / "two") == shard_bytes(tmp_path / "one")


# ---------------------------------------------------------------------------------- cli


def test_cli_job_summary_rerun_and_flags(model_dir, tmp_path, capsys):
    _, argv, text = embed_on_cli(
        tmp_path, model_dir, capsys, "one\n\nthree\nfour\n", "--format", "safetensors"
    )
    assert "1/1 shards" in text and "3 texts embedded, 1 errors" in text
    assert cli_main(argv) == 0
    assert "already complete" in capsys.readouterr().out
    assert cli_main([*argv[:-2], "--format", "npy"]) == 2
    assert "refusing to mix" in capsys.readouterr().err
    npy = tmp_path / "x.npy"
    assert cli_main(["embed", str(tmp_path / "in.txt"), "-o", str(npy), "--shard-size", "3"]) == 2
    assert "--shard-size needs an output directory" in capsys.readouterr().err
    assert cli_main(["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "x.csv")]) == 2
    assert "a .npy file or a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- shard plans


@pytest.mark.parametrize("shard_size", [1, 4, 7, 100])
def test_shard_plans_start_where_the_stream_does(shard_size, tmp_path):
    """Reading from each planned start gives exactly the rows a full pass gives (the Ray
    path's actors seek to their shard)."""
    from itertools import islice

    from llm2vec_fast.io_formats import iter_records, plan_shards

    texts = corpus(23, seed=4)
    texts[3] = ""
    paths = write_inputs(tmp_path, texts, ["Q" if i % 2 else "" for i in range(23)])
    (tmp_path / "b.jsonl").write_text('\n{"text": "x"}\n\n{"text": "y"}\n', encoding="utf-8")
    pq.write_table(pa.table({"text": texts[:11]}), tmp_path / "b.parquet", row_group_size=3)
    (tmp_path / "b.csv").write_text('text,id\n"two\nlines",7\nplain,8\n"",9\n', "utf-8")
    files = [paths[k][0] for k in ("txt", "jsonl", "parquet")]
    files += [tmp_path / "b.jsonl", tmp_path / "b.csv", tmp_path / "b.parquet"]
    cols = {"text_column": "text", "id_column": "id", "instruction_column": "instruction"}
    full = list(iter_records(files, **cols))
    plans = plan_shards(files, shard_size, **cols)
    assert [p["rows"][0] for p in plans] == list(range(0, len(full), shard_size))
    assert plans[-1]["rows"][1] == len(full)
    for plan in plans:
        a, b = plan["rows"]
        got = list(islice(iter_records(files, start=plan["start"], **cols), b - a))
        assert got == full[a:b]
