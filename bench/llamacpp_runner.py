#!/usr/bin/env python
"""llama.cpp (llama-cpp-python) embedding throughput on the default model's GGUF, one JSON line.

Runs in its own environment (bench/.venv-llamacpp; `bash bench/setup_llamacpp_env.sh` builds
it), called by bench_vs_official.py --llamacpp, which compares it with the official library and
ours in the same run:

    python bench/llamacpp_runner.py --gguf SmolLM2.gguf --texts texts.json --quants f32,q8_0,q4_1

Each quantisation: the GGUF requantised once with ``llama_model_quantize`` (cached beside the
work files; the shipped file is Q4_1), loaded with non-causal attention and mean pooling (the
LLM2Vec way), ``n_ctx = n_batch = n_ubatch = max_length`` (a larger context makes its batched
attention span it whole and runs several times slower), texts truncated to ``max_length``
tokens; one warm-up pass over all texts, then the best of ``repeats`` timed passes of
``Llama.embed(texts)``. Prints ``{"results": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import llama_cpp

FTYPES = {
    "f32": llama_cpp.LLAMA_FTYPE_ALL_F32,
    "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
}


def requantized(src: Path, quant: str, work: Path) -> Path:
    """``src`` requantised to ``quant`` (the source itself when it already is that type)."""
    if quant == "q4_1" and src.name.lower().endswith("q4_1.gguf"):
        return src
    out = work / f"{src.stem}.{quant}.gguf"
    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = FTYPES[quant]
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        tmp = out.with_suffix(".tmp")
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize to {quant} failed ({rc})")
        tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--texts", type=Path, required=True, help="a JSON list of strings")
    ap.add_argument("--quants", default="f32,q8_0,q4_1")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("bench/work/llamacpp"))
    args = ap.parse_args()

    texts = json.loads(args.texts.read_text(encoding="utf-8"))
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for quant in args.quants.split(","):
        path = requantized(args.gguf, quant, args.work)
        llm = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            attention_type=llama_cpp.LLAMA_ATTENTION_TYPE_NON_CAUSAL,
            n_ctx=args.max_length,
            n_batch=args.max_length,
            n_ubatch=args.max_length,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            verbose=False,
        )
        n_tokens = sum(
            min(len(llm.tokenize(t.encode("utf-8"), add_bos=True)), args.max_length) for t in texts
        )
        llm.embed(texts, truncate=True)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            emb = llm.embed(texts, truncate=True)
            times.append(time.perf_counter() - t0)
        assert len(emb) == len(texts)
        best = min(times)
        results.append(
            {
                "quant": quant,
                "gguf": path.name,
                "texts": len(texts),
                "llama_tokens": n_tokens,
                "seconds": best,
                "all_seconds": times,
                "threads": args.threads,
                "n_ctx": args.max_length,
                "llama_cpp_python": llama_cpp.__version__,
            }
        )
        del llm
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
