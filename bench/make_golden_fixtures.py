#!/usr/bin/env python
"""Golden fixtures from the official llm2vec 0.2.3, for tests/test_golden.py.

    python bench/make_golden_fixtures.py [--out tests/fixtures/golden] [--workdir DIR] [--jobs 2]

Runs from the system python (the one with llm2vec_fast installed). It

1. writes tiny random checkpoints of every family the official library supports (llama,
   mistral, qwen2, gemma; hidden size 64) with ``llm2vec_fast.testing.make_tiny_checkpoint``
   (and LoRA adapters with ``make_tiny_lora`` of tests/l2vf_support): the same code the tests
   call, so the tests regenerate them bit for bit from the arguments recorded in the fixtures
   (no weights are committed; their sha256 is recorded);
2. builds the two on-disk layouts whose loading is part of the contract: a directory written by
   our ``LLM2Vec.save`` and the published LLM2Vec layout (config.json + an MNTP adapter, plus a
   SimCSE-like adapter on top);
3. runs the official library on them with ``bench/official_runner.py`` inside
   ``bench/.venv-official`` (created with ``bench/setup_official_env.sh`` when missing), as
   subprocesses of that venv's python: every pooling mode, with and without instructions, and
   the edge cases (an instruction longer than max_length, a text cut by max_length, a text cut
   by doc_max_length, unicode, empty texts, prompt wrapping keyed on ``_name_or_path``);
4. writes one JSON file per group into ``--out``: per case the input, the official token ids,
   embed_mask, pooled count and embeddings (float32 values written as their shortest repr, so
   they read back exactly), the run settings, the checkpoint arguments and hashes, and the
   versions of both stacks.

Cases whose ``expect`` is ``"match"`` must be reproduced by llm2vec-fast exactly (ids, masks) and
to a relative L2 error of 1e-5 (embeddings). The others record the official output where we
deviate on purpose (README, "Differences, on purpose"); the test asserts
the documented difference. One deviation is found here rather than documented there: the
official ``Qwen2BiModel`` on transformers 4.44 is causal (its attention classes set
``is_causal = False``, but the mask comes from ``Qwen2Model._update_causal_mask``, which it does
not override, and the SDPA path passes ``is_causal=True`` when no mask is needed). llm2vec-fast
keeps Qwen2 bidirectional; the qwen2 runs are compared with our ``enable_bidirectional=False``,
and the generator checks that the official bidirectional and causal Qwen2 outputs coincide.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
VENV_PYTHON = BENCH / ".venv-official" / "bin" / "python"
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "golden"
FORMAT = 1

sys.path.insert(0, str(BENCH))
from golden_cases import BATCH_SIZE, CHECKPOINTS, TINY_FILES, runs  # noqa: E402

# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32(values) -> list:
    """float32 values as Python floats whose repr is the shortest float32 round trip."""
    arr = np.asarray(values, dtype=np.float32)
    return [float(str(v)) for v in arr.reshape(-1)] if arr.ndim <= 1 else [f32(r) for r in arr]


def build_checkpoints(work: Path, peft012_fields: list[str]) -> tuple[dict, dict]:
    """Write every checkpoint; return ({name: dir}, {name: recorded spec with hashes})."""
    sys.path.append(str(ROOT / "tests"))  # l2vf_support
    from l2vf_support.checkpoints import make_published_layout, make_tiny_lora, tensors_sha256
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.testing import make_tiny_checkpoint

    sys.path.insert(0, str(BENCH))
    from official_runner import _inert  # the runner's rule for keys peft 0.12 may drop

    dirs: dict[str, Path] = {}
    recorded: dict[str, dict] = {}
    for name, spec in CHECKPOINTS.items():
        d = work / "ckpt" / name
        rec = copy.deepcopy(spec)
        if spec["kind"] == "tiny":
            make_tiny_checkpoint(
                d,
                spec["family"],
                seed=spec["seed"],
                name_or_path=spec.get("name_or_path"),
                add_bos=spec.get("add_bos", False),
                **spec.get("overrides", {}),
            )
            rec.setdefault("name_or_path", None)
            rec.setdefault("add_bos", False)
            rec.setdefault("overrides", {})
            rec["sha256"] = {f: sha256_file(d / f) for f in TINY_FILES}
        elif spec["kind"] == "saved":
            src = dirs[spec["from"]]
            model = LLM2Vec.from_pretrained(src, device="cpu", **spec["load"])
            model.save(d)
            rec["saved_files"] = sorted(p.name for p in d.iterdir())
        elif spec["kind"] in ("lora", "mntp"):
            base = dirs[spec["base"]]
            make_tiny_lora(base, d, spec["seed"], spec["target_modules"])
            rec["sha256"] = {
                "adapter_model.safetensors": tensors_sha256(d / "adapter_model.safetensors")
            }
            acfg = json.loads((d / "adapter_config.json").read_text(encoding="utf-8"))
            if spec["kind"] == "mntp":
                # The official stack loads this directory as its base model: transformers 4.44
                # reads adapter_config.json through peft 0.12, which refuses keys newer peft
                # writes. Keep the keys peft 0.12 knows (the others must be inert).
                dropped = {k: v for k, v in acfg.items() if k not in peft012_fields}
                live = {k: v for k, v in dropped.items() if not _inert(k, v, acfg)}
                if live:
                    raise SystemExit(f"adapter keys peft 0.12 cannot honour: {live}")
                acfg = {k: v for k, v in acfg.items() if k in peft012_fields}
                (d / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True))
                rec["adapter_config_dropped_for_peft_0_12"] = sorted(dropped)
                make_published_layout(d, base, spec["name_or_path"])
            if spec.get("llm2vec_config"):
                (d / "llm2vec_config.json").write_text(json.dumps(spec["llm2vec_config"], indent=4))
            rec["adapter_config"] = {
                k: acfg.get(k) for k in ("r", "lora_alpha", "target_modules", "peft_type")
            }
            rec["adapter_config"]["target_modules"] = sorted(acfg["target_modules"])
        else:
            raise ValueError(spec["kind"])
        dirs[name] = d
        recorded[name] = rec
    return dirs, recorded


DRIVER = r"""
import json, sys, traceback
sys.path.insert(0, sys.argv[1])
import official_runner as r
for job, out in json.load(open(sys.argv[2])):
    r._PEFT_DROPPED.clear()
    try:
        r.parity(job, out)
    except Exception:
        with open(out + ".error", "w") as f:
            f.write(traceback.format_exc())
"""


def run_official(jobs: list[tuple[str, str]], n_workers: int) -> None:
    """Run parity jobs in the official venv, n_workers processes side by side."""
    shards = [jobs[i::n_workers] for i in range(n_workers)]
    procs = []
    for i, shard in enumerate(shards):
        if not shard:
            continue
        listing = Path(shard[0][1]).parent / f"shard{i}.json"
        listing.write_text(json.dumps(shard))
        procs.append(
            subprocess.Popen(
                [str(VENV_PYTHON), "-c", DRIVER, str(BENCH), str(listing)],
                env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
            )
        )
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"official runner worker failed (exit {p.returncode})")


def official_versions_and_peft_fields() -> tuple[dict, list[str]]:
    code = (
        "import dataclasses, json, sys; sys.path.insert(0, sys.argv[1]); "
        "import official_runner as r; from peft import LoraConfig; "
        "print(json.dumps([r.versions(), [f.name for f in dataclasses.fields(LoraConfig)]]))"
    )
    out = subprocess.run(
        [str(VENV_PYTHON), "-c", code, str(BENCH)], check=True, capture_output=True, text=True
    ).stdout
    versions, fields = json.loads(out.strip().splitlines()[-1])
    return versions, fields


def our_versions() -> dict:
    from official_runner import versions  # importable here: it loads llm2vec only when asked

    return versions(
        ("llm2vec-fast", "transformers", "tokenizers", "torch", "peft", "safetensors", "numpy")
    )


def case_record(case: dict, rec: dict) -> dict:
    official: dict = {}
    if "features_error" in rec:
        official["features_error"] = rec["features_error"]
    if "encode_error" in rec:
        official["encode_error"] = rec["encode_error"]
    if rec.get("sentences") is not None:
        official["rows"] = [
            {
                "converted": p["converted"],
                "prepared": p["prepared"],
                "ids": p["ids"],
                "embed_mask": p["embed_mask"],
                "pool_count": p["pool_count"],
                "batch": p["batch"],
                "padded_length": p["padded_length"],
            }
            for p in rec["sentences"]
        ]
        official["order"] = rec["order"]
    if rec.get("embeddings") is not None:
        official["embeddings"] = f32(rec["embeddings"])
    return {
        "name": case["name"],
        "expect": case["expect"],
        "sentences": case["sentences"],
        "batch_size": rec["batch_size"],
        "official": official,
    }


def check_findings(run: dict, cases: list[dict]) -> list[str]:
    """Flag official rows whose pooled span reaches past the sequence into padding."""
    notes = []
    for c in cases:
        for i, row in enumerate(c["official"].get("rows") or []):
            if row["pool_count"] > len(row["ids"]) and row["padded_length"] > len(row["ids"]):
                notes.append(
                    f"{run['id']} {c['name']} row {i}: pooled span {row['pool_count']} > "
                    f"sequence {len(row['ids'])} inside a padded batch"
                )
    return notes


README = """# Golden fixtures from the official llm2vec

Made by `bench/make_golden_fixtures.py`, which writes tiny random checkpoints (hidden size 64,
2 layers, SmolLM2's tokenizer) with `llm2vec_fast.testing.make_tiny_checkpoint` /
`make_tiny_lora` (tests/l2vf_support), runs the official llm2vec {llm2vec} (transformers {transformers},
tokenizers {tokenizers}, peft {peft}, torch {torch}; `bench/.venv-official`, made by
`bench/setup_official_env.sh`) on them through `bench/official_runner.py`, and records per
sentence the token ids, the embed_mask and the float32 embedding.

Regenerate (under a minute on 2 CPU cores) after a change to the checkpoint generator, the cases
or the official environment:

    python bench/make_golden_fixtures.py

No weights are committed: `tests/test_golden.py` regenerates every checkpoint from the arguments
recorded under `checkpoints` (and checks their sha256), loads it with `llm2vec_fast.LLM2Vec`
with the recorded settings, and requires identical token ids and pooled spans and a relative L2
error <= 1e-5 per embedding for every case whose `expect` is `"match"`. Other `expect` values
are deliberate deviations (README, "Differences, on purpose"): the fixture holds the official
output and the test asserts the documented difference.

Files: {files}.

Generated {date}; our side (checkpoint writing): {ours}.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--workdir", type=Path, help="keep checkpoints and raw outputs here")
    ap.add_argument("--jobs", type=int, default=2, help="official runner processes")
    ap.add_argument("--only", help="comma-separated fixture names to regenerate")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    if not VENV_PYTHON.exists():
        subprocess.run(["bash", str(BENCH / "setup_official_env.sh")], check=True)
    official_versions, peft_fields = official_versions_and_peft_fields()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="golden-"))
    if work.exists() and args.workdir:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    dirs, recorded = build_checkpoints(work, peft_fields)
    print(f"checkpoints written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    all_runs = runs()
    if args.only:
        wanted = set(args.only.split(","))
        all_runs = [r for r in all_runs if r["fixture"] in wanted]
    jobs = []
    (work / "out").mkdir(exist_ok=True)
    for k, run in enumerate(all_runs):
        job = {
            "model": str(dirs[run["checkpoint"]]),
            "peft": str(dirs[run["peft"]]) if run["peft"] else None,
            "batch_size": BATCH_SIZE,
            "torch_dtype": "float32",
            "device": "cpu",
            "threads": 1,
            "cases": [{"name": c["name"], "sentences": c["sentences"]} for c in run["cases"]],
        }
        for key, value in run["settings"].items():
            job[key] = value
        jp = work / "out" / f"job{k:03d}.json"
        jp.write_text(json.dumps(job, ensure_ascii=False))
        jobs.append((str(jp), str(work / "out" / f"out{k:03d}.json")))
    t1 = time.perf_counter()
    run_official(jobs, max(1, args.jobs))
    print(f"{len(jobs)} official runs in {time.perf_counter() - t1:.1f} s", file=sys.stderr)

    fixtures: dict[str, dict] = {}
    findings: list[str] = []
    for run, (_, out_path) in zip(all_runs, jobs):
        if os.path.exists(out_path + ".error"):
            raise SystemExit(
                f"official run {run['id']} failed:\n{Path(out_path + '.error').read_text()}"
            )
        result = json.loads(Path(out_path).read_text(encoding="utf-8"))
        cases = [case_record(c, rec) for c, rec in zip(run["cases"], result["cases"])]
        findings += check_findings(run, cases)
        fx = fixtures.setdefault(
            run["fixture"],
            {
                "format": FORMAT,
                "generator": "bench/make_golden_fixtures.py",
                "official_versions": official_versions,
                "our_versions": our_versions(),
                "checkpoints": {},
                "runs": [],
            },
        )
        needed = [run["checkpoint"]] + ([run["peft"]] if run["peft"] else [])
        while needed:
            name = needed.pop()
            fx["checkpoints"][name] = recorded[name]
            spec = CHECKPOINTS[name]
            needed += [spec[k] for k in ("from", "base") if k in spec]
        fx["runs"].append(
            {
                "id": run["id"],
                "checkpoint": run["checkpoint"],
                "peft": run["peft"],
                "settings": run["settings"],
                "ours": run["ours"],
                **({"note": run["note"]} if run.get("note") else {}),
                "batch_size": BATCH_SIZE,
                "resolved": result["resolved"],
                "peft_dropped_keys": result.get("peft_dropped_keys", []),
                "cases": cases,
            }
        )

    # (d): the official Qwen2 "bidirectional" model gives the causal model's output
    if "qwen2" in fixtures:
        by_id = {r["id"]: r for r in fixtures["qwen2"]["runs"]}
        bi, causal = by_id["qwen2/mean"], by_id["qwen2/mean/causal"]
        worst = 0.0
        for cb, cc in zip(bi["cases"], causal["cases"]):
            a = np.asarray(cb["official"]["embeddings"], dtype=np.float64)
            b = np.asarray(cc["official"]["embeddings"], dtype=np.float64)
            worst = max(
                worst, float((np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).max())
            )
        print(
            f"qwen2: official Qwen2BiModel vs causal Qwen2Model, max rel L2 {worst:.2e}",
            file=sys.stderr,
        )
        if worst > 1e-6:
            raise SystemExit(
                "the official Qwen2BiModel is not causal after all: revisit deviation (d)"
            )
        fixtures["qwen2"]["qwen2_official_bidirectional_vs_causal_max_rel_l2"] = worst

    args.out.mkdir(parents=True, exist_ok=True)
    for name, fx in sorted(fixtures.items()):
        path = args.out / f"{name}.json"
        path.write_text(
            json.dumps(fx, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n",
            encoding="utf-8",
        )
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)
    seconds = time.perf_counter() - t0
    files = sorted(p.name for p in args.out.glob("*.json"))
    (args.out / "README.md").write_text(
        README.format(
            files=", ".join(f"`{f}`" for f in files),
            date=time.strftime("%Y-%m-%d"),
            seconds=seconds,
            ours=", ".join(f"{k} {v}" for k, v in our_versions().items()),
            **{k.replace("-", "_"): v for k, v in official_versions.items()},
        ),
        encoding="utf-8",
    )
    for f in findings:
        print("FINDING:", f, file=sys.stderr)
    print(f"done in {seconds:.0f} s", file=sys.stderr)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
