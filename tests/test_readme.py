"""The README's commands are the ones CI runs, and its blocks run.

Every ```python block is executed as written (``test_every_python_block_runs_as_written``), in
a working directory holding every path the blocks name: tiny random checkpoints stand in for
the models, the published-layout directories, a corpus, MTEB's local data directory. The
shell commands outside the install blocks (the batch job, the training recipe) run with the
tiny checkpoint and two training steps (``_as_run_here`` says exactly what changes); every
flag of every command and usage synopsis is checked against the command line's parser.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from l2vf_support.sts import STS_ROWS, write_sts_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    assert len(commands) >= 2, "README must show the main-job and the test commands"
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_cmd in ci, ".ci/run must run the README's test command verbatim"


def test_main_job_embeds_the_shipped_sample():
    main_cmd = next(c for c in _readme_commands() if "llm2vec-fast embed" in c)
    sample = re.search(r"embed (\S+)", main_cmd).group(1)
    assert (ROOT / sample).is_file()


# ------------------------------------------------------------------- every block, run as written

README = ROOT / "README.md"

# Python blocks that cannot run here, each named by a line of it, with the reason. The test
# fails when a listed line matches no block (stale) and runs every other block, so a new block
# is either runnable or listed here.
PYTHON_NOT_RUN: dict[str, str] = {}

HUB_BASE = "princeton-nlp/Sheared-LLaMA-1.3B"  # what a published MNTP adapter names as its base


def _blocks() -> list[tuple[str, int, str]]:
    """``(info string, first line number, text)`` of every fenced block of README.md."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.fullmatch(r"```(\S*)\s*", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append((m.group(1), i + 2, "\n".join(lines[i + 1 : end])))
        i = end + 1
    return blocks


def _command_lines(text: str) -> list[str]:
    """The ``llm2vec-fast`` commands of a shell or synopsis block: backslash continuations and
    indented continuation lines joined, ``&&`` chains split."""
    joined: list[str] = []
    for line in text.replace("\\\n", " ").splitlines():
        if line[:1].isspace() and joined:
            joined[-1] += " " + line.strip()
        else:
            joined.append(line.strip())
    return [
        part.strip()
        for line in joined
        for part in line.split("&&")
        if part.strip().startswith("llm2vec-fast ")
    ]


def _is_synopsis(cmd: str) -> bool:
    return "[" in cmd or "|" in cmd


def _runnable_commands() -> list[str]:
    """Commands of the shell/synopsis blocks other than the install-and-run blocks (CI runs
    those) and the usage synopses (their flags are checked, below)."""
    return [
        cmd
        for lang, _, text in _blocks()
        if lang in ("", "bash", "sh", "shell") and "pip install" not in text
        for cmd in _command_lines(text)
        if not _is_synopsis(cmd)
    ]


def _as_run_here(cmd: str) -> list[str]:
    """The arguments of a README command as this test runs it: as written, except that a
    command naming no ``--model`` gets the tiny checkpoint ``--model path/to/checkpoint``
    (the default model, SmolLM2-135M, is too slow here; tests/test_default_model.py runs it),
    ``--max-steps N`` becomes ``--max-steps 2``, and ``-q`` is added."""
    args = shlex.split(cmd)[1:]  # without "llm2vec-fast"
    if "--max-steps" in args:
        args[args.index("--max-steps") + 1] = "2"
    if "--model" not in args:
        args += ["--model", "path/to/checkpoint"]
    return [*args, "-q"]


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    """A working directory holding every path the README's blocks name, after running the
    README's commands (``_runnable_commands``, as ``_as_run_here`` says) there in order: the
    batch job's ``emb/`` that a Python block reads comes from the README's own command."""
    from l2vf_support.checkpoints import make_published_layout, make_tiny_lora
    from llm2vec_fast.cli import main
    from llm2vec_fast.testing import make_tiny_checkpoint

    d = tmp_path_factory.mktemp("readme")
    ckpt = make_tiny_checkpoint(d / "path" / "to" / "checkpoint", "llama")
    base = make_tiny_checkpoint(d / "Sheared-LLaMA-1.3B", "llama", seed=1)
    mntp = make_tiny_lora(
        base, d / "LLM2Vec-Sheared-LLaMA-mntp", 2, base_model_name_or_path=HUB_BASE
    )
    make_published_layout(mntp, base, HUB_BASE)
    make_tiny_lora(base, d / "LLM2Vec-Sheared-LLaMA-mntp-unsup-simcse", 3)
    shutil.copyfile(ckpt / "tokenizer.json", d / "tokenizer.json")
    sample = (ROOT / "examples" / "sample.txt").read_text(encoding="utf-8").splitlines()
    (d / "corpus.txt").write_text("\n".join(sample[:24]) + "\n", encoding="utf-8")
    (d / "texts.txt").write_text("\n".join(sample[24:]) + "\n", encoding="utf-8")
    with open(d / "triples.jsonl", "w", encoding="utf-8") as f:
        for i in range(6):
            rec = {"query": sample[i], "positive": sample[i + 6], "negative": sample[i + 12]}
            f.write(json.dumps({**rec, "instruction": "Retrieve a related sentence"}) + "\n")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pytest.skip("pyarrow (the [test] extra) is needed for the README's parquet corpus")
    (d / "corpus").mkdir()
    for part in range(2):
        rows = sample[part * 20 : (part + 1) * 20]
        table = pa.table({"id": [f"p{part}-{i}" for i in range(len(rows))], "body": rows})
        pq.write_table(table, d / "corpus" / f"part-{part}.parquet")
    (d / "task_to_instructions.json").write_text(
        json.dumps({"STSBenchmark": "Retrieve semantically similar text:"}), encoding="utf-8"
    )
    write_sts_benchmark(d / "mteb-data", STS_ROWS[:6])

    cwd = os.getcwd()
    os.chdir(d)
    try:
        for cmd in _runnable_commands():
            assert main(_as_run_here(cmd)) == 0, f"README command failed: {cmd}"
    finally:
        os.chdir(cwd)
    return d


def test_readme_commands_run(readme_dir):
    """The batch job and the training recipe, run in ``readme_dir`` (see ``_as_run_here``)."""
    commands = _runnable_commands()
    assert any(c.startswith("llm2vec-fast embed 'corpus/*.parquet' -o emb/") for c in commands)
    assert sum(c.startswith("llm2vec-fast train ") for c in commands) == 4
    manifest = json.loads((readme_dir / "emb" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest  # the job finished its shards
    for out in ("out/mntp", "out/simcse", "out/sup"):
        assert (readme_dir / out / "adapter_model.safetensors").is_file(), out
    assert (readme_dir / "emb.npy").is_file()
    # latent-attention pooling: the head beside the adapter, and the embeddings made with it
    assert (readme_dir / "out" / "simcse-latent" / "latent_attention.safetensors").is_file()
    assert np.load(readme_dir / "emb-latent.npy").shape[0] > 0


def test_every_flag_of_the_readme_commands_exists():
    """Every flag a README command or usage synopsis names is one its subcommand parses, and
    the values a synopsis lists as ``A|B|C`` for a flag with fixed choices are among them."""
    from llm2vec_fast.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    commands = [
        cmd
        for lang, _, text in _blocks()
        if lang in ("", "bash", "sh", "shell")
        for cmd in _command_lines(text)
    ]
    assert {c.split()[1] for c in commands} >= {"embed", "train", "eval"}
    for cmd in commands:
        sub_parser = sub.choices[cmd.split()[1]]
        options = {s: a for a in sub_parser._actions for s in a.option_strings}
        tokens = re.findall(r"[^\s\[\]()]+", cmd)
        for i, token in enumerate(tokens):
            if not re.fullmatch(r"--?[A-Za-z][\w-]*", token):
                continue
            assert token in options, f"README: {cmd.split()[1]} has no {token} ({cmd})"
            choices = options[token].choices
            value = tokens[i + 1] if i + 1 < len(tokens) else ""
            if choices and "|" in value:
                assert set(value.split("|")) <= set(choices), f"README: {token} {value} ({cmd})"


def test_every_python_block_runs_as_written(readme_dir, monkeypatch):
    """Every ```python block of README.md, executed as written, in order, in one namespace (as
    a reader pastes them into one session), in ``readme_dir``; a traceback names README's
    line. Blocks in ``PYTHON_NOT_RUN`` are left out, with the reason given there."""
    pytest.importorskip("mteb", reason="the mteb extra is not installed")
    pytest.importorskip("sentence_transformers", reason="the st extra is not installed")
    blocks = [(line, text) for lang, line, text in _blocks() if lang == "python"]
    assert len(blocks) >= 7
    for key, reason in PYTHON_NOT_RUN.items():
        assert sum(key in text for _, text in blocks) == 1, f"stale PYTHON_NOT_RUN entry {key!r}"
        assert reason
    monkeypatch.chdir(readme_dir)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # no hub here; MTEB reads mteb-data
        monkeypatch.setenv(var, "1")
    namespace: dict = {"__name__": "__readme__"}
    ran = 0
    for line, text in blocks:
        if any(key in text for key in PYTHON_NOT_RUN):
            continue
        code = compile("\n" * (line - 1) + text, str(README), "exec")
        exec(code, namespace)
        ran += 1
    assert ran == len(blocks) - len(PYTHON_NOT_RUN)
    # what the blocks made is what they say
    hidden = namespace["model"].config.hidden_size
    n_corpus = len((readme_dir / "corpus.txt").read_text(encoding="utf-8").splitlines())
    assert (readme_dir / "embeddings.f32").stat().st_size == n_corpus * hidden * 4
    assert namespace["d"].dtype == np.int8 and namespace["d"].shape[0] == 2
    assert [r["task"] for r in namespace["rows"]] == ["STSBenchmark"]
