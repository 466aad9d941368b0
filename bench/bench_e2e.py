#!/usr/bin/env python
"""End to end: ``encode()`` tokens/s, llm2vec-fast against the official llm2vec 0.2.3, on the
same checkpoint, texts, dtype and device, in one run.

    python bench/bench_e2e.py --device cuda --assets DIR --random-weights sheared-llama-1.3b
    python bench/bench_e2e.py --device cuda --assets DIR --random-weights mistral-7b

The kernel issue's end-to-end check: random-weight checkpoints shaped like Sheared-LLaMA-1.3B
and Mistral-7B (bench_training.py's presets), bfloat16, 4096 texts of mixed length (half one
sentence, a third an article, the rest several articles joined, cut at max_length 512), mean
pooling. Ours: default settings (``attn_implementation="auto"``, batch_size 32, packed) after
a warm-up pass, best of ``--repeats``. The official library: ``official_runner.py
--throughput`` in its own environment (``--official-python``; ``setup_official_env.sh`` makes
``bench/.venv-official``), one warm-up and ``--repeats`` timed passes at each of
``--official-batch-sizes``; its best batch size is the baseline. Tokens are counted the same on
both sides (the official tokenizer's attention mask there; our ids, identical, here).
Targets on one H100: 3x the official tokens/s on the 1.3B shape, 1.8x on the 7B shape.

GPU machines (no network, no 98 MB GGUF): ``python bench/bench_training.py --export-assets DIR``
here, carry DIR; the official environment travels as wheels ("On a GPU machine" in
bench/README.md).
Results: bench/results/<device>-e2e-<model>-<dtype>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_data import random_checkpoint, read_articles, tokenizer_and_articles  # noqa: E402
from bench_pipeline import mixed_texts  # noqa: E402
from bench_vs_official import ours_throughput, run_official  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--random-weights", default="sheared-llama-1.3b")
    ap.add_argument("--model", help="a checkpoint directory instead of random weights")
    ap.add_argument("--assets", help="a directory from bench_training.py --export-assets")
    ap.add_argument("--official-python", default=str(HERE / ".venv-official" / "bin" / "python"))
    ap.add_argument("--official-batch-sizes", default="8,16,32,64")
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="results JSON (default bench/results/...)")
    args = ap.parse_args()

    tok_dir, articles_file = tokenizer_and_articles(args.assets)  # --model: a checkpoint
    articles = read_articles(articles_file)
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    if args.model:
        model_dir, tag = Path(args.model), Path(args.model).name
    else:
        model_dir = random_checkpoint(args.random_weights, tok_dir, work / "model", args.seed)
        tag = f"random-{args.random_weights}"
    texts = mixed_texts(articles, args.texts, args.seed)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    dev = torch.device(args.device)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"{device_name}: {tag} {args.dtype}, {len(texts)} texts", flush=True)

    rows = []
    mine = ours_throughput(model_dir, texts, args.dtype, args.repeats, device=args.device)
    rows.append(mine)
    print(
        f"llm2vec-fast ({mine['kernels']}): {mine['tokens_per_s']:,.0f} tokens/s "
        f"({mine['tokens']:,} tokens in {mine['seconds']:.2f} s)",
        flush=True,
    )
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    ratio = None
    if not args.skip_official:
        out = run_official(
            [
                "--throughput", "--model", str(model_dir), "--texts", str(texts_file),
                "--batch-sizes", args.official_batch_sizes, "--torch-dtype", args.dtype,
                "--device", args.device, "--repeats", str(args.repeats),
            ],
            python=args.official_python,
        )  # fmt: skip
        for r in out["results"]:
            rows.append({"impl": "official-llm2vec", **r})
            print(
                f"official batch {r['batch_size']:3d}: {r['tokens_per_s']:,.0f} tokens/s",
                flush=True,
            )
        best = max(r["tokens_per_s"] for r in out["results"])
        ratio = mine["tokens_per_s"] / best
        print(f"ours / official best batch size (same run): {ratio:.2f}x", flush=True)
    result = {
        "device": device_name,
        "model": tag,
        "dtype": args.dtype,
        "texts": len(texts),
        "torch": torch.__version__,
        "rows": rows,
        "ours_over_official_best": ratio,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    kind = "cpu" if dev.type == "cpu" else device_name.split()[-1].lower()
    path = Path(args.out or HERE / "results" / f"{kind}-e2e-{tag}-{args.dtype}.json")
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
