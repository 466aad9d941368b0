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
deviate on purpose (README, "Differences, on purpose"; /work/shared/DESIGN.md); the test asserts
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

MAX_LENGTH = 32
DOC_MAX_LENGTH = 20
BATCH_SIZE = 8
MODES = ("mean", "weighted_mean", "eos_token", "last_token")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# --------------------------------------------------------------------------- checkpoints
# kind "tiny": make_tiny_checkpoint(dir, family, seed=, name_or_path=, add_bos=, **overrides)
CHECKPOINTS: dict[str, dict] = {
    "llama": {"kind": "tiny", "family": "llama", "seed": 1101},
    "mistral": {"kind": "tiny", "family": "mistral", "seed": 2202},
    "qwen2": {"kind": "tiny", "family": "qwen2", "seed": 3303},
    "gemma": {"kind": "tiny", "family": "gemma", "seed": 4404},
    "mistral_bos": {"kind": "tiny", "family": "mistral", "seed": 5505, "add_bos": True},
    "llama2_chat": {
        "kind": "tiny",
        "family": "llama",
        "seed": 1101,
        "name_or_path": "meta-llama/Llama-2-7b-chat-hf",
    },
    "llama3_instruct": {
        "kind": "tiny",
        "family": "llama",
        "seed": 1101,
        "name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
    },
    "llama3_base": {
        "kind": "tiny",
        "family": "llama",
        "seed": 1101,
        "name_or_path": "meta-llama/Meta-Llama-3-8B",
    },
    "mistral_instruct": {
        "kind": "tiny",
        "family": "mistral",
        "seed": 2202,
        "name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
    },
    "gemma2_it": {
        "kind": "tiny",
        "family": "gemma",
        "seed": 4404,
        "name_or_path": "google/gemma-2-9b-it",
    },
    "qwen2_instruct": {
        "kind": "tiny",
        "family": "qwen2",
        "seed": 3303,
        "name_or_path": "Qwen/Qwen2-1.5B-Instruct",
    },
    # (e) a directory written by our LLM2Vec.save
    "saved": {
        "kind": "saved",
        "from": "llama2_chat",
        "load": {
            "pooling_mode": "weighted_mean",
            "max_length": MAX_LENGTH,
            "doc_max_length": DOC_MAX_LENGTH,
            "skip_instruction": False,
        },
    },
    # (f) the published layout: config.json + MNTP adapter (base named by path here, by a hub
    # id in the test), and a SimCSE-like adapter with llm2vec_config.json on top
    "published_base": {"kind": "tiny", "family": "llama", "seed": 6606},
    "published_mntp": {
        "kind": "mntp",
        "base": "published_base",
        "seed": 6607,
        "target_modules": LORA_TARGETS,
        "name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
    },
    "published_simcse": {
        "kind": "lora",
        "base": "published_base",
        "seed": 6608,
        "target_modules": LORA_TARGETS,
        "llm2vec_config": {
            "pooling_mode": "mean",
            "max_length": MAX_LENGTH,
            "doc_max_length": DOC_MAX_LENGTH,
            "skip_instruction": True,
        },
    },
}

TINY_FILES = (
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)

# --------------------------------------------------------------------------- texts
# A list is either all strings or all [instruction, text] pairs: the official library decides
# the form from sentences[0] (mixing them is a deviation case of its own).
PLAIN = [
    "The cat sat on the mat.",
    "Stocks fell sharply on Monday as oil prices rose.",
    "x",
    "  leading and trailing spaces  ",
]
PAIRS = [
    ["Retrieve a news article about markets", "Stocks fell sharply on Monday."],
    ["  Find the answer:  ", " a text with a leading space"],
    ["", "an empty instruction"],
    ["Classify the sentiment of the review", "I loved it!"],
]
LONG_INSTRUCTION = [
    ["Given a very long instruction that goes on and on " * 5, "short text"],
    ["Classify", "another short text"],
]
# the text fits doc_max_length (20) but instruction + text exceed max_length (32)
CUT_BY_MAX_LENGTH = [
    [
        "Given a question about the history and architecture of several old European cities, "
        "retrieve the relevant passages",
        "The old town of Prague has many bridges, towers and churches along the wide river",
    ],
    ["Summarise", "one two three four five six seven eight nine ten"],
]
# over doc_max_length (20) tokens alone: cut to fewer words (twice, for the first)
CUT_BY_DOC_MAX_LENGTH = [
    ["", " ".join(f"word{i}" for i in range(40))],
    ["Summarise the document", "alpha beta gamma delta " * 6],
]
UNICODE = [
    ["", "Café naïve — 東京タワー 🚀 über Straße"],  # over doc_max_length: cut by words
    ["Übersetze ins Deutsche:", "日本語のテキストです。"],
    ["", "naïve café 🚀 русский"],
]
# a plain text longer than max_length with no doc_max_length cut (doc_max_length 400)
LONG_PLAIN = ["many words here " * 30, "short"]


def standard_cases() -> list[dict]:
    return [
        {"name": "plain", "sentences": PLAIN},
        {"name": "pairs", "sentences": PAIRS},
        {"name": "long_instruction", "sentences": LONG_INSTRUCTION},
        {"name": "cut_by_max_length", "sentences": CUT_BY_MAX_LENGTH},
        {"name": "cut_by_doc_max_length", "sentences": CUT_BY_DOC_MAX_LENGTH},
        {"name": "unicode", "sentences": UNICODE},
    ]


def settings(mode, skip_instruction=True, max_length=MAX_LENGTH, doc_max_length=DOC_MAX_LENGTH):
    return {
        "pooling_mode": mode,
        "max_length": max_length,
        "doc_max_length": doc_max_length,
        "skip_instruction": skip_instruction,
        "enable_bidirectional": True,
    }


def runs() -> list[dict]:
    """Every official run: {fixture, id, checkpoint, peft, settings, ours, cases}. ``settings``
    are passed to the official from_pretrained (None: not passed); ``ours`` overrides what the
    test passes to ours; case ``expect``: "match" or the name of a deviation."""
    out: list[dict] = []

    def add(fixture, rid, checkpoint, sett, cases, ours=None, peft=None, note=None):
        run = {
            "fixture": fixture,
            "id": rid,
            "checkpoint": checkpoint,
            "peft": peft,
            "settings": sett,
            "ours": ours or {},
            "cases": [{"expect": "match", **c} for c in cases],
        }
        if note:
            run["note"] = note
        out.append(run)

    skip_false_mode = {
        "llama": "mean",
        "mistral": "weighted_mean",
        "qwen2": "mean",
        "gemma": "weighted_mean",
    }
    for fam in ("llama", "mistral", "qwen2", "gemma"):
        ours = {}
        note = None
        if fam == "qwen2":
            ours = {"enable_bidirectional": False}
            note = (
                "official Qwen2BiModel (transformers 4.44) is causal: compared with our "
                "enable_bidirectional=False; our default (bidirectional) differs on purpose"
            )
        for mode in MODES:
            cases = standard_cases()
            if mode in ("mean", "weighted_mean"):
                cases.append({"name": "empty_text_alone", "sentences": [["Represent this", ""]]})
            if mode == "weighted_mean":  # official: a zero vector, as ours
                cases.append(
                    {
                        "name": "empty_text_with_neighbour",
                        "sentences": [
                            ["Represent this", ""],
                            ["", "a much longer neighbour text " * 3],
                        ],
                    }
                )
            add(fam, f"{fam}/{mode}", fam, settings(mode), cases, ours, note=note)
        mode = skip_false_mode[fam]
        add(
            fam,
            f"{fam}/{mode}/with_instruction_pooled",
            fam,
            settings(mode, skip_instruction=False),
            standard_cases(),
            ours,
            note=note,
        )
        if fam in ("llama", "qwen2"):
            causal = settings("mean")
            causal["enable_bidirectional"] = False
            add(
                fam,
                f"{fam}/mean/causal",
                fam,
                causal,
                standard_cases(),
                {"enable_bidirectional": False},
            )
    add(
        "llama",
        "llama/mean/no_doc_cut",
        "llama",
        settings("mean", doc_max_length=400),
        [
            {"name": "cut_by_max_length_only", "sentences": LONG_PLAIN},
            {"name": "cut_by_max_length", "sentences": CUT_BY_MAX_LENGTH},
        ],
    )

    # add_bos tokenizer: bos_token pooling, and mean (the BOS is not in the pooled span)
    add("bos", "mistral_bos/bos_token", "mistral_bos", settings("bos_token"), standard_cases())
    add("bos", "mistral_bos/mean", "mistral_bos", settings("mean"), standard_cases())

    # prompt wrapping keyed on _name_or_path
    prompt_cases = [c for c in standard_cases() if c["name"] != "unicode"]
    for ckpt, mode in (
        ("llama2_chat", "mean"),
        ("llama2_chat", "eos_token"),
        ("llama3_instruct", "mean"),
        ("llama3_base", "eos_token"),
        ("mistral_instruct", "eos_token"),
        ("gemma2_it", "mean"),
        ("qwen2_instruct", "mean"),
    ):
        ours = {"enable_bidirectional": False} if ckpt.startswith("qwen2") else {}
        add("prompts", f"{ckpt}/{mode}", ckpt, settings(mode), prompt_cases, ours)

    # deliberate deviations (README "Differences, on purpose")
    dev = settings("mean")
    out.append(
        {
            "fixture": "deviations",
            "id": "llama/mean/deviations",
            "checkpoint": "llama",
            "peft": None,
            "settings": dev,
            "ours": {},
            "cases": [
                {"name": "bare_string", "expect": "bare_string", "sentences": "abc"},
                {
                    "name": "mixed_pair_then_plain",
                    "expect": "mixed_pair_then_plain",
                    "sentences": [["Instr", "alpha beta"], "gamma"],
                },
                {
                    "name": "empty_text_with_neighbour",
                    "expect": "empty_span_mean",
                    "sentences": [
                        ["Represent this", ""],
                        ["", "a much longer neighbour text " * 3],
                    ],
                },
                {
                    "name": "no_tokens_with_neighbour",
                    "expect": "no_tokens",
                    "sentences": ["", "a much longer neighbour text " * 3],
                },
            ],
        }
    )
    out.append(
        {
            "fixture": "deviations",
            "id": "llama/bos_token/no_bos",
            "checkpoint": "llama",
            "peft": None,
            "settings": settings("bos_token"),
            "ours": {},
            "cases": [{"name": "no_bos_token", "expect": "bos_none", "sentences": ["hello world"]}],
        }
    )

    # (e) our save() read by the official library (llm2vec_config.json decides the settings)
    add("save", "saved/llm2vec_config", "saved", {}, standard_cases())
    # (f) the published layout
    add(
        "published",
        "published/mntp+simcse",
        "published_mntp",
        {},
        standard_cases(),
        peft="published_simcse",
    )
    return out


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
    import importlib.metadata as md

    out = {}
    for pkg in (
        "llm2vec-fast",
        "transformers",
        "tokenizers",
        "torch",
        "peft",
        "safetensors",
        "numpy",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


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
