#!/usr/bin/env python
"""Training throughput and peak memory per step: llm2vec-fast against the official recipe.

    python bench/bench_training.py                       # CPU, SmolLM2-135M, a few minutes
    python bench/bench_training.py --gpu                 # the official recipes' shapes on CUDA
    python bench/bench_training.py --gpu --random-weights sheared-llama-1.3b

Both sides train the same model on the same texts with the same batch size and sequence
length, one process per (objective, precision, side), so each process's memory is its own.

- llm2vec-fast: ``llm2vec_fast.training.train(TrainConfig(...))``: packed, padding-free
  batches; MNTP packs ``batch_size`` token sequences of at most ``max_seq_length`` (each text
  cut into pieces; counting every token fed), SimCSE puts both views of the batch in one
  packed forward (counting both views' tokens). Data in file order (``shuffle_buffer=1``).
  Only LoRA is trained on either side for SmolLM2 (4,884,480 parameters).
- official: bench/official_train_runner.py in bench/.venv-official (llm2vec 0.2.3,
  transformers 4.44.2, peft 0.12.0): the step of experiments/run_mntp.py and run_simcse.py
  rebuilt from the package's own classes (``LlamaBiForMNTP`` + LoRA +
  ``DataCollatorForLanguageModeling(mlm_probability=0.2)`` over ``group_texts`` blocks;
  ``LLM2Vec(attention_dropout=0.3)`` + LoRA + run_simcse's ``DefaultCollator`` +
  ``HardNegativeNLLLoss(scale=20)`` over two forward passes); see that file.

Data (gensim's test_data/lee_background.cor, 300 news articles; the same files for both sides,
shuffled once with the seed):
- MNTP: the articles joined and cut, at token boundaries, into pieces of at most
  ``max_seq_length`` tokens (each re-checked on its own). Ours packs ``batch_size`` pieces a
  step (a piece is one text); the official concatenates the same pieces and cuts
  ``max_seq_length`` blocks (``group_texts``), ``batch_size`` blocks a step. Same texts, same
  B x L, no padding on either side (ours ~1% fewer tokens: a re-tokenized piece can come out a
  token short).
- SimCSE: the articles split into sentences (2,613; 29 tokens on average, at most 89), as
  run_simcse's Wiki1M data is one sentence a line; truncated at ``max_seq_length``. The
  official pads each view to its batch's longest sentence.

Tokens: the non-padding tokens fed to the model (SimCSE: both views). Timing: a step ends when
its ``zero_grad`` returns (ours: an ``AdamW`` subclass put in place of ``torch.optim.AdamW`` in
the child process records it); ``--warmup-steps`` steps, then ``--steps`` timed ones.
Memory (bench/official_train_runner.py ``StepMeter``, the same code on both sides): CUDA:
``max_memory_allocated`` over the timed steps; CPU: one extra untimed step under
``torch.profiler(profile_memory=True)``: the tensors alive at the step's start (found with
``gc``: weights, LoRA, optimizer state) plus the step's allocator peak above them, an estimate
of the peak of torch's CPU tensor memory; and the process's ``ru_maxrss``.

Precision (``--precisions``): ``fp32``: float32 weights, no autocast, both sides. ``bf16``:
the weights in bfloat16 on both sides; ours also under bf16 autocast (``TrainConfig(dtype=
"bfloat16", bf16=True)``); the official trains in the loaded dtype without autocast, as its
train_configs do (``torch_dtype: bfloat16``, no ``bf16`` flag); both keep LoRA weights in
float32. ``amp``: float32 weights under bf16 autocast on both sides (the official as
``Trainer(bf16=True)``; ours fails there on the CPU's sdpa path, see bench/README.md).

GPU machines without network or the 98 MB GGUF: ``--export-assets DIR`` (here) writes the
tokenizer and the data file into DIR; carry it and pass ``--assets DIR``; ``--random-weights``
builds a random-weight checkpoint of a preset (``sheared-llama-1.3b``, ``smollm2-135m``) or of
a JSON file of config.json keys there, its tokenizer cut to the config's vocabulary when that
is smaller. The official side needs its virtual environment (``--official-python``).

Results: bench/results/<device>-training-<name>.json; ratios (ours / official) printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OFFICIAL_PY = HERE / ".venv-official" / "bin" / "python"
sys.path.insert(0, str(HERE))
from bench_data import (  # noqa: E402
    PRESETS,
    mntp_pieces,
    random_checkpoint,
    read_articles,
    split_sentences,
    tokenizer_and_articles,
    write_lines,
)

# ---------------------------------------------------------------------------------- children


def child_ours(job: dict) -> dict:
    """One llm2vec-fast run (in its own process): ``train()`` with a step-timing AdamW."""
    import torch

    sys.path.insert(0, str(HERE))
    from official_train_runner import StepMeter

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    meter = StepMeter(job["device"], int(job["warmup_steps"]), int(job["steps"]), True)

    class TimedAdamW(torch.optim.AdamW):
        def zero_grad(self, set_to_none: bool = True) -> None:
            super().zero_grad(set_to_none=set_to_none)
            meter.boundary()

    torch.optim.AdamW = TimedAdamW
    from llm2vec_fast.training import TrainConfig, train

    prec = job["precision"]
    out_dir = Path(job["out"]).with_suffix(".train")
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = TrainConfig(
        job["objective"],
        data=job["data"],
        output=str(out_dir),
        model=job["model"],
        max_steps=meter.total_steps,
        batch_size=int(job["batch_size"]),
        max_seq_length=int(job["max_seq_length"]),
        dtype="bfloat16" if prec == "bf16" else "float32",
        bf16=prec in ("bf16", "amp"),
        gradient_checkpointing=bool(job.get("gradient_checkpointing")),
        attn_implementation=job["attn_implementation"],
        device=job["device"],
        shuffle_buffer=1,
        save_steps=None,
        show_progress_bar=False,
    )
    t0 = time.perf_counter()
    summary = train(cfg)
    wall = time.perf_counter() - t0
    rows = [
        json.loads(line)
        for line in (out_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    cum = [0] + [r["tokens"] for r in rows]
    step_tokens = [b - a for a, b in zip(cum, cum[1:])]
    res = meter.result(step_tokens)
    res["losses"] = summary["losses"]
    res["train_summary"] = {
        k: summary[k]
        for k in ("tokens_this_run", "seconds_this_run", "tokens_per_second", "peak_memory_bytes")
    }
    res["wall_seconds"] = wall
    res["setup"] = {
        "weights_dtype": cfg.dtype,
        "autocast": "bfloat16" if cfg.bf16 else None,
        "attn_implementation": cfg.attn_implementation,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "learning_rate": cfg.learning_rate,
        "threads": torch.get_num_threads(),
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    return res


def run_child(side: str, job: dict, work: Path, official_python: Path) -> dict:
    job_path = work / f"{job['objective']}-{job['precision']}-{side}.job.json"
    job = {**job, "out": str(job_path.with_suffix(".out.json"))}
    job_path.write_text(json.dumps(job, indent=1))
    if side == "ours":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(job_path)]
        env = dict(os.environ)
    else:
        cmd = [str(official_python), str(HERE / "official_train_runner.py"), str(job_path)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        err = lines[-1] if lines else f"exit status {proc.returncode}"
        sys.stderr.write(proc.stderr[-3000:])
        print(f"{job['objective']} {job['precision']} {side} FAILED: {err}", flush=True)
        return {"side": side, "objective": job["objective"], "precision": job["precision"],
                "error": err}  # fmt: skip
    res = json.loads(Path(job["out"]).read_text())
    res["side"] = side
    res["process_seconds"] = time.perf_counter() - t0
    res["load_average_1min"] = {"start": load0, "end": os.getloadavg()[0]}
    return res


# ---------------------------------------------------------------------------------- main


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def peak_bytes(r: dict):
    m = r["memory"]
    return m.get("cuda_max_allocated_bytes", m.get("peak_estimate_bytes"))


def shape(s: str) -> tuple[int, int]:
    b, n = s.lower().split("x")
    return int(b), int(n)


def machine() -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from bench_vs_official import cpu_name

    out = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_before": os.getloadavg(),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--objectives", default="mntp,simcse")
    ap.add_argument("--precisions", default=None, help="fp32,bf16,amp (default fp32,bf16)")
    ap.add_argument("--sides", default="official,ours")
    ap.add_argument("--mntp-shape", default=None, help="batch x max_seq_length (default 8x128)")
    ap.add_argument("--simcse-shape", default=None, help="batch x max_seq_length (default 16x64)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="default 2 (GPU 3)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 3; GPU 10)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--device", default=None, help="cpu (default) or cuda")
    ap.add_argument(
        "--gpu",
        action="store_true",
        help="the official recipes on CUDA: MNTP 32x512, SimCSE 128x128, bf16, gradient "
        "checkpointing, 3 warm-up + 10 timed steps",
    )
    ap.add_argument("--ours-attn", default=None, help="default sdpa (CPU), triton (CUDA)")
    ap.add_argument("--official-attn", default="sdpa")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", help="checkpoint directory (default: the embedded SmolLM2-135M)")
    ap.add_argument("--random-weights", metavar="CONFIG", help=f"preset {list(PRESETS)} or JSON")
    ap.add_argument("--assets", help="a directory from --export-assets (tokenizer + data)")
    ap.add_argument("--export-assets", metavar="DIR", help="write tokenizer + data, then exit")
    ap.add_argument("--official-python", default=str(OFFICIAL_PY))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--out", help="results JSON (default: bench/results/...)")
    args = ap.parse_args()

    if args.child:
        job = json.loads(Path(args.child).read_text())
        res = {"objective": job["objective"], "precision": job["precision"], **child_ours(job)}
        Path(job["out"]).write_text(json.dumps(res, indent=1))
        return

    if args.gpu:
        args.device = args.device or "cuda"
        args.mntp_shape = args.mntp_shape or "32x512"
        args.simcse_shape = args.simcse_shape or "128x128"
        args.precisions = args.precisions or "bf16"
        args.gradient_checkpointing = True
        args.warmup_steps = 3 if args.warmup_steps is None else args.warmup_steps
        args.steps = 10 if args.steps is None else args.steps
    device = args.device or "cpu"
    precisions = (args.precisions or "fp32,bf16").split(",")
    warmup = 2 if args.warmup_steps is None else args.warmup_steps
    steps = 3 if args.steps is None else args.steps
    shapes = {
        "mntp": shape(args.mntp_shape or "8x128"),
        "simcse": shape(args.simcse_shape or "16x64"),
    }
    objectives = args.objectives.split(",")
    sides = args.sides.split(",")

    # the tokenizer's directory and the articles
    tok_dir, articles_file = tokenizer_and_articles(args.assets, args.model)
    if args.export_assets:
        out = Path(args.export_assets)
        (out / "tokenizer").mkdir(parents=True, exist_ok=True)
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "config.json",
        ):
            if (tok_dir / name).is_file():
                shutil.copy(tok_dir / name, out / "tokenizer" / name)
        shutil.copy(articles_file, out / "lee_background.cor")
        print(f"wrote {out}: tokenizer/ and lee_background.cor")
        return

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="l2vf-train-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.random_weights:
        t0 = time.perf_counter()
        model_dir = random_checkpoint(args.random_weights, tok_dir, work / "model", args.seed)
        print(f"random-weight checkpoint {model_dir} ({time.perf_counter() - t0:.0f} s)")
        model_tag = f"random-{Path(args.random_weights).stem}"
    elif args.model:
        model_dir, model_tag = Path(args.model), Path(args.model).name
    elif args.assets:
        raise SystemExit("--assets needs --model or --random-weights")
    else:
        model_dir, model_tag = tok_dir, "smollm2-135m"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    articles = read_articles(articles_file)
    rng = random.Random(args.seed)
    data = {}
    if "mntp" in objectives:
        pieces = mntp_pieces(articles, tokenizer, shapes["mntp"][1])
        rng.shuffle(pieces)
        data["mntp"] = write_lines(work / "mntp.txt", pieces)
    if "simcse" in objectives:
        sents = split_sentences(articles)
        rng.shuffle(sents)
        data["simcse"] = write_lines(work / "simcse.txt", sents)

    if "official" in sides and not Path(args.official_python).exists():
        if args.official_python != str(OFFICIAL_PY):
            raise SystemExit(f"no official python at {args.official_python}")
        subprocess.run(["bash", str(HERE / "setup_official_env.sh")], check=True)

    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": model_tag,
        "model_dir": str(model_dir),
        "device": device,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "gradient_checkpointing": args.gradient_checkpointing,
        "shapes": {k: list(v) for k, v in shapes.items() if k in objectives},
        "data": {k: {"file": str(v), "texts": sum(1 for _ in open(v))} for k, v in data.items()},
        "runs": [],
    }
    ours_attn = args.ours_attn or ("triton" if device.startswith("cuda") else "sdpa")
    for objective in objectives:
        B, L = shapes[objective]
        for prec in precisions:
            for side in sides:
                job = {
                    "objective": objective,
                    "precision": prec,
                    "model": str(model_dir),
                    "data": str(data[objective]),
                    "batch_size": B,
                    "max_seq_length": L,
                    "attn_implementation": ours_attn if side == "ours" else args.official_attn,
                    "device": device,
                    "warmup_steps": warmup,
                    "steps": steps,
                    "gradient_checkpointing": args.gradient_checkpointing,
                    "threads": args.threads,
                    "seed": 42,
                }
                r = run_child(side, job, work, Path(args.official_python))
                r["batch_size"], r["max_seq_length"] = B, L
                result["runs"].append(r)
                if "error" in r:
                    continue
                t = r["timed"]
                print(
                    f"{objective:6s} {B}x{L} {prec:4s} {side:8s} {t['tokens_per_s']:9.1f} tokens/s "
                    f"({t['tokens']} tokens / {t['seconds']:.1f} s), peak {_mib(peak_bytes(r))} MiB, "
                    f"loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}",
                    flush=True,
                )

    ratios = {}
    for objective in objectives:
        for prec in precisions:
            by = {
                r["side"]: r
                for r in result["runs"]
                if r["objective"] == objective and r["precision"] == prec and "error" not in r
            }
            if "ours" in by and "official" in by:
                o, f = by["ours"], by["official"]
                pf, po = peak_bytes(f), peak_bytes(o)
                ratios[f"{objective}-{prec}"] = {
                    "tokens_per_s": o["timed"]["tokens_per_s"] / f["timed"]["tokens_per_s"],
                    "peak_memory": (po / pf) if po and pf else None,
                    "ru_maxrss": o["memory"]["ru_maxrss_bytes"] / f["memory"]["ru_maxrss_bytes"],
                    "median_step_tokens_per_s": o["timed"]["median_step_tokens_per_s"]
                    / f["timed"]["median_step_tokens_per_s"],
                }
    result["ratios"] = ratios
    result["machine"]["load_average_after"] = os.getloadavg()
    name = args.name or model_tag
    kind = "gpu" if device.startswith("cuda") else "cpu"
    out = Path(args.out) if args.out else HERE / "results" / f"{kind}-training-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nwrote {out}")
    print(
        f"\n{'run':20s} {'side':8s} {'tokens/step':>11s} {'padded':>7s} {'tokens/s':>9s} "
        f"{'peak MiB':>9s} {'step MiB':>9s} {'maxrss MiB':>10s}"
    )
    for r in result["runs"]:
        if "error" in r:
            print(f"{r['objective']} {r['precision']} {r['side']}: failed: {r['error']}")
            continue
        w = r["timed"]["steps"]
        tps = r["step_tokens"][warmup : warmup + w]
        pad = r.get("step_padded_tokens", r["step_tokens"])[warmup : warmup + w]
        m = r["memory"]
        print(
            f"{r['objective'] + ' ' + str(r['batch_size']) + 'x' + str(r['max_seq_length']) + ' ' + r['precision']:20s} "
            f"{r['side']:8s} {sum(tps) / w:11.0f} {sum(pad) / w:7.0f} {r['timed']['tokens_per_s']:9.1f} "
            f"{_mib(peak_bytes(r)):>9s} {_mib(m.get('step_peak_above_live_bytes')):>9s} "
            f"{_mib(m['ru_maxrss_bytes']):>10s}"
        )
    print("\nratios, ours / official (tokens/s: higher is better; memory: lower is better):")
    for k, v in ratios.items():
        mem = "-" if v["peak_memory"] is None else f"{v['peak_memory']:.2f}x"
        print(
            f"  {k:14s} tokens/s {v['tokens_per_s']:.2f}x (median step "
            f"{v['median_step_tokens_per_s']:.2f}x)   peak memory {mem}   "
            f"ru_maxrss {v['ru_maxrss']:.2f}x"
        )


if __name__ == "__main__":
    sys.exit(main())
