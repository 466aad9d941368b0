"""The ``llm2vec-fast embed`` command line: inputs, outputs, flags, errors, help.

Everything runs on one tiny random llama checkpoint (made once per module). The CLI is called
in-process through ``llm2vec_fast.cli.main`` (fast); one test runs the installed entry point in
a real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm2vec_fast import LLM2Vec
from llm2vec_fast.cli import main

HIDDEN = 64  # tiny_config's hidden_size

# A blank line is a text too (row i is line i); the unicode line holds U+2028, which
# str.splitlines() would split but a file's lines do not.
TXT_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "naïve café — 日本語のテキスト 😀 Ünïcödé\u2028still the same line",
    "short",
    "a somewhat longer sentence about text embeddings and how they are pooled",
]

# No blank line here: a blank line embeds to a zero vector, which --normalize cannot make unit.
# The first text is ~40 tokens: over --max-length 8 and over --batch-tokens 16.
FLAG_LINES = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "short",
    "a medium sized sentence about embeddings",
    "x",
    "naïve café — 日本語 😀",
    "Retrieval augmented generation needs good dense vectors.",
]

JSONL_RECORDS = [
    {
        "id": "doc-a",
        "instruction": "Retrieve passages that answer the question",
        "text": "what is a fox?",
    },
    {"id": 7, "text": "A fox is a small omnivorous mammal."},  # no instruction
    {"id": "doc-c", "instruction": "Classify the sentiment", "text": "naïve café 😀 is great"},
    {"id": 3.5, "instruction": "", "text": "empty instruction"},
]


# ---------------------------------------------------------------------------- helpers


def run_cli(argv: list[str]) -> int:
    """``main(argv)``'s exit code, as the interpreter would report it.

    A ``SystemExit`` escaping main is turned into its exit status the way Python does at top
    level (None -> 0, an int -> itself, anything else -> printed to stderr, status 1). Any other
    exception propagates, failing the test: that would be a traceback for the user.
    """
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    return code


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


def ids_path(out: Path) -> Path:
    """Where the ids go: OUTPUT with .ids.json in place of .npy (``emb.npy`` -> ``emb.ids.json``)."""
    return out.with_suffix(".ids.json")


def to_np(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> Path:
    return tiny_checkpoint("llama", seed=0)


@pytest.fixture(scope="module")
def ref_model(model_dir) -> LLM2Vec:
    return LLM2Vec.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def flags_input(tmp_path_factory) -> Path:
    return write_lines(tmp_path_factory.mktemp("flags") / "flags.txt", FLAG_LINES)


@pytest.fixture(scope="module")
def flags_default(model_dir, flags_input, tmp_path_factory) -> np.ndarray:
    """The CLI's embeddings of FLAG_LINES with every flag at its default."""
    out = tmp_path_factory.mktemp("flags-default") / "emb.npy"
    assert run_cli(["embed", flags_input, "-o", out, "--model", model_dir, "-q"]) == 0
    return np.load(out)


def embed_flags(model_dir, flags_input, tmp_path, *flags) -> np.ndarray:
    out = tmp_path / "emb.npy"
    assert run_cli(["embed", flags_input, "-o", out, "--model", model_dir, "-q", *flags]) == 0
    emb = np.load(out)
    assert emb.dtype == np.float32
    assert emb.shape == (len(FLAG_LINES), HIDDEN)
    assert json.loads(ids_path(out).read_text(encoding="utf-8")) == list(range(len(FLAG_LINES)))
    return emb


# ---------------------------------------------------------------------------- inputs


def test_txt_input_rows_in_order(model_dir, ref_model, tmp_path, capsys):
    inp = write_lines(tmp_path / "in.txt", TXT_LINES)
    out = tmp_path / "sub" / "emb.npy"  # a missing parent directory is created
    assert run_cli(["embed", inp, "-o", out, "--model", model_dir, "-q"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err

    emb = np.load(out)
    assert emb.dtype == np.float32
    assert emb.shape == (len(TXT_LINES), HIDDEN)
    assert json.loads(ids_path(out).read_text(encoding="utf-8")) == list(range(len(TXT_LINES)))
    assert not list(out.parent.glob("*.tmp*")), "temporary file left behind"

    expected = to_np(ref_model.encode(TXT_LINES, show_progress_bar=False))
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-5)
    # The rows are distinct texts: a permutation would not pass the comparison above.
    assert np.abs(emb[0] - emb[3]).max() > 1e-3


def test_output_directory_named_with_a_dot_and_a_trailing_slash(model_dir, ref_model, tmp_path):
    """``-o emb.v2/`` (and even ``-o out.npy/``) is a new directory, the batch job; without the
    slash a new ``emb.v2`` is still refused, and the message says how to ask for a directory."""
    from llm2vec_fast.batch_job import read_embeddings

    inp = write_lines(tmp_path / "in.txt", TXT_LINES)
    for name in ("emb.v2", "out.npy"):
        assert run_cli(["embed", inp, "-o", f"{tmp_path / name}/", "--model", model_dir, "-q"]) == 0
        ids, emb = read_embeddings(tmp_path / name)
        assert ids == [0, 2, 3, 4]  # the blank line is an error row in the batch job
        want = to_np(ref_model.encode([TXT_LINES[i] for i in ids], show_progress_bar=False))
        np.testing.assert_allclose(emb, want, rtol=0, atol=1e-5)
    assert run_cli(["embed", inp, "-o", tmp_path / "emb.v3", "--model", model_dir, "-q"]) == 2
    assert not (tmp_path / "emb.v3").exists()


def test_jsonl_input_pairs_and_ids(model_dir, ref_model, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", JSONL_RECORDS)
    out = tmp_path / "emb.npy"
    assert run_cli(["embed", inp, "-o", out, "--model", model_dir, "-q"]) == 0

    emb = np.load(out)
    assert emb.dtype == np.float32
    assert emb.shape == (len(JSONL_RECORDS), HIDDEN)
    assert json.loads(ids_path(out).read_text(encoding="utf-8")) == [r["id"] for r in JSONL_RECORDS]

    pairs = [[r.get("instruction", ""), r["text"]] for r in JSONL_RECORDS]
    expected = to_np(ref_model.encode(pairs, show_progress_bar=False))
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-5)

    # The instruction reaches the model: it is attended to (bidirectionally), so the pooled
    # text tokens differ from the text embedded alone.
    alone = to_np(ref_model.encode([r["text"] for r in JSONL_RECORDS], show_progress_bar=False))
    assert np.abs(emb[0] - alone[0]).max() > 1e-4
    np.testing.assert_allclose(emb[1], alone[1], rtol=0, atol=1e-5)  # no instruction


# ---------------------------------------------------------------------------- flags


def test_pooling_flag(model_dir, flags_input, flags_default, tmp_path):
    emb = embed_flags(model_dir, flags_input, tmp_path, "--pooling", "weighted_mean")
    assert np.abs(emb - flags_default).max() > 1e-3
    ref = LLM2Vec.from_pretrained(model_dir, pooling_mode="weighted_mean")
    expected = to_np(ref.encode(FLAG_LINES, show_progress_bar=False))
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-5)


def test_normalize_flag(model_dir, flags_input, flags_default, tmp_path):
    emb = embed_flags(model_dir, flags_input, tmp_path, "--normalize")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=0, atol=1e-5)
    unit = flags_default / np.linalg.norm(flags_default, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, unit, rtol=0, atol=1e-5)


def test_max_length_flag(model_dir, flags_input, flags_default, tmp_path):
    emb = embed_flags(model_dir, flags_input, tmp_path, "--max-length", "8")
    ref = LLM2Vec.from_pretrained(model_dir, max_length=8)
    expected = to_np(ref.encode(FLAG_LINES, show_progress_bar=False))
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-5)
    assert np.abs(emb[0] - flags_default[0]).max() > 1e-3  # the long text was cut


def test_bfloat16_flag(model_dir, flags_input, flags_default, tmp_path):
    emb = embed_flags(model_dir, flags_input, tmp_path, "--dtype", "bfloat16")
    assert np.isfinite(emb).all()
    rel = np.linalg.norm(emb - flags_default, axis=1) / np.linalg.norm(flags_default, axis=1)
    assert rel.max() < 3e-2, rel


@pytest.mark.parametrize(
    "flags",
    [("--batch-size", "1"), ("--batch-tokens", "16")],
    ids=["batch-size-1", "batch-tokens-16"],
)
def test_batching_flags_keep_rows(model_dir, flags_input, flags_default, tmp_path, flags):
    emb = embed_flags(model_dir, flags_input, tmp_path, *flags)
    np.testing.assert_allclose(emb, flags_default, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- errors


def _bad_json(tmp_path: Path) -> Path:
    # line 1 valid, line 2 blank (skipped but counted), line 3 broken
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "broken\n', encoding="utf-8")
    return path


ERROR_CASES = {
    # name: (build argv pieces (input, output, extra args) from tmp_path and model_dir,
    #        substrings the stderr message must hold)
    "missing-input": (
        lambda tmp, m: (tmp / "nope.txt", tmp / "emb.npy", ["--model", m]),
        ["nope.txt", "does not exist"],
    ),
    "bad-json-line": (
        lambda tmp, m: (_bad_json(tmp), tmp / "emb.npy", ["--model", m]),
        ["bad.jsonl", ":3:", "JSON"],
    ),
    "jsonl-without-text": (
        lambda tmp, m: (
            write_jsonl(tmp / "notext.jsonl", [{"text": "ok"}, {"id": 1, "body": "no text key"}]),
            tmp / "emb.npy",
            ["--model", m],
        ),
        ["notext.jsonl", ":2:", '"text"'],
    ),
    "instruction-not-string": (
        lambda tmp, m: (
            write_jsonl(tmp / "instr.jsonl", [{"text": "ok", "instruction": 5}]),
            tmp / "emb.npy",
            ["--model", m],
        ),
        ["instr.jsonl:1:", "instruction", "not a string"],
    ),
    "unknown-input-type": (
        lambda tmp, m: (write_lines(tmp / "in.xml", ["a"]), tmp / "emb.npy", ["--model", m]),
        ["in.xml", ".jsonl", ".parquet"],
    ),
    "empty-input": (
        lambda tmp, m: (write_lines(tmp / "empty.jsonl", []), tmp / "emb.npy", ["--model", m]),
        ["empty.jsonl", "no texts"],
    ),
    "output-not-npy": (
        lambda tmp, m: (write_lines(tmp / "in.txt", ["a"]), tmp / "emb.csv", ["--model", m]),
        ["emb.csv", ".npy"],
    ),
    "missing-model-dir": (
        lambda tmp, m: (
            write_lines(tmp / "in.txt", ["a"]),
            tmp / "emb.npy",
            ["--model", tmp / "no-such-model"],
        ),
        ["no-such-model", "does not exist"],
    ),
    "unknown-pooling": (
        lambda tmp, m: (
            write_lines(tmp / "in.txt", ["a"]),
            tmp / "emb.npy",
            ["--model", m, "--pooling", "max"],
        ),
        ["--pooling", "invalid choice", "max"],
    ),
}


def _run_error_case(name, tmp_path, model_dir):
    build, _ = ERROR_CASES[name]
    inp, out, extra = build(tmp_path, model_dir)
    code = run_cli(["embed", inp, "-o", out, "-q", *extra])
    return code, out


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_error_messages(name, model_dir, tmp_path, capsys):
    code, out = _run_error_case(name, tmp_path, model_dir)
    captured = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in captured.err
    assert "error" in captured.err.lower()
    for piece in ERROR_CASES[name][1]:
        assert piece in captured.err, (piece, captured.err)
    assert captured.out == ""
    assert not out.exists()
    assert not ids_path(out).exists()


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_error_exit_code_is_2(name, model_dir, tmp_path, capsys):
    code, _ = _run_error_case(name, tmp_path, model_dir)
    capsys.readouterr()
    assert code == 2


# ---------------------------------------------------------------------------- help


def test_top_level_help(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert "embed" in out
    assert ".txt" in out and ".jsonl" in out


def test_embed_help(capsys):
    assert run_cli(["embed", "--help"]) == 0
    out = capsys.readouterr().out
    for piece in ("INPUT", ".txt", ".jsonl", '"text"', '"instruction"', '"id"', ".ids.json"):
        assert piece in out, piece
    for flag in (
        "--model",
        "--pooling",
        "--max-length",
        "--batch-size",
        "--batch-tokens",
        "--dtype",
        "--normalize",
        "-q",
    ):
        assert flag in out, flag


# ---------------------------------------------------------------------------- entry point


def test_entry_point_subprocess(model_dir, ref_model, tmp_path):
    """The installed ``llm2vec-fast`` script (beside this interpreter), else ``python -m``."""
    script = Path(sys.executable).parent / "llm2vec-fast"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "llm2vec_fast.cli"]
    inp = write_lines(tmp_path / "in.txt", TXT_LINES)
    out = tmp_path / "emb.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            *cmd,
            "embed",
            str(inp),
            "-o",
            str(out),
            "--model",
            str(model_dir),
            "-q",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "embedded 5 texts" in proc.stdout
    emb = np.load(out)
    assert emb.shape == (len(TXT_LINES), HIDDEN) and emb.dtype == np.float32
    assert json.loads(ids_path(out).read_text(encoding="utf-8")) == list(range(len(TXT_LINES)))
    expected = to_np(ref_model.encode(TXT_LINES, show_progress_bar=False))
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-5)
