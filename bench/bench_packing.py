"""Micro benchmark: the C++ packer against the numpy fallback.

Packs N random texts (lengths drawn log-normally, like tokenized sentences and
paragraphs) in two input forms: a list of id lists (what a tokenizer returns)
and a flat int32 array with offsets (the zero-copy fast path). Reports the
median of ``--repeats`` timed runs after ``--warmup`` untimed ones, and the
speed-up of C++ over Python, measured in the same run. The garbage collector
is off while timing, as in timeit.

    python bench/bench_packing.py --n-texts 100000 --json bench/work/packing.jsonl
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from llm2vec_fast.packing import HAVE_EXTENSION, pack_token_ids


def make_inputs(n_texts: int, mean_len: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(mean_len), 0.8, size=n_texts), 0, 4096).astype(np.int64)
    offsets = np.zeros(n_texts + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = rng.integers(0, 128_000, size=int(offsets[-1]), dtype=np.int32)
    rows = [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(n_texts)]
    pool = (lengths * rng.uniform(0.5, 1.0, size=n_texts)).astype(np.int64)
    return {"rows": rows, "flat": flat, "offsets": offsets, "pool": pool}


def median_time(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn``; the garbage collector is off while timing, as in timeit
    (the caller's 100k id lists would otherwise make every full collection slow)."""
    for _ in range(warmup):
        fn()
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=100_000)
    parser.add_argument("--mean-len", type=float, default=64.0, help="median text length")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens-per-batch", type=int, default=16_384)
    parser.add_argument("--max-batch-size", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="append one JSON row here")
    args = parser.parse_args()

    if not HAVE_EXTENSION:
        raise SystemExit("llm2vec_fast._C is not built: pip install -e . first")

    data = make_inputs(args.n_texts, args.mean_len, args.seed)
    common = {
        "max_length": args.max_length,
        "max_tokens_per_batch": args.max_tokens_per_batch,
        "max_batch_size": args.max_batch_size,
    }

    def run(backend: str, form: str) -> list:
        if form == "list":
            return pack_token_ids(data["rows"], data["pool"], backend=backend, **common)
        return pack_token_ids(
            data["flat"], data["pool"], offsets=data["offsets"], backend=backend, **common
        )

    n_tokens = int(data["offsets"][-1])
    n_batches = len(run("cpp", "flat"))
    print(
        f"{args.n_texts} texts, {n_tokens} tokens (median length {args.mean_len:g}), "
        f"max_length={args.max_length}, budget={args.max_tokens_per_batch} -> {n_batches} batches"
    )
    results: dict[str, float] = {}
    for form in ("list", "flat"):
        for backend in ("cpp", "python"):
            seconds = median_time(functools.partial(run, backend, form), args.repeats, args.warmup)
            results[f"{backend}_{form}_s"] = seconds
            print(f"  {backend:6s} {form:4s}: {seconds * 1e3:9.2f} ms (median of {args.repeats})")
        ratio = results[f"python_{form}_s"] / results[f"cpp_{form}_s"]
        results[f"speedup_{form}"] = ratio
        print(f"  {form} form: C++ is {ratio:.1f}x faster than the Python fallback")

    if args.json:
        row = {
            "bench": "packing",
            "n_texts": args.n_texts,
            "n_tokens": n_tokens,
            "n_batches": n_batches,
            **{k: v for k, v in vars(args).items() if k not in ("json", "n_texts")},
            **results,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
