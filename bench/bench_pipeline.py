#!/usr/bin/env python
"""Does the model wait for its input? ``encode()`` with the overlapped input pipeline against
the same stages run one after another, same model, texts and settings, in one run.

    python bench/bench_pipeline.py [--texts 512] [--repeats 3] [--dtype bfloat16]
    python bench/bench_pipeline.py --device cuda --random-weights smollm2-135m --assets DIR \\
        --texts 4096 --attn triton

Two modes of ``LLM2Vec.encode`` (``llm2vec_fast.pipeline``), alternated ``--repeats`` times
after a warm-up of each:
- ``sequential``: ``LLM2VEC_FAST_PIPELINE=0``: each chunk is joined, tokenized and packed, each
  batch copied to the device, run, and its result copied back, one step after the other;
- ``overlapped``: the default: tokenization and packing on a thread, copies on a side stream
  from pinned memory, the result copied back while the next batch runs.

Per run: wall time, tokens/s, and ``input_wait_fraction`` (``encode().last_encode_stats``):
the share of wall time the caller's thread spent blocked waiting for the next ready batch (in
the sequential mode that is the whole input preparation). On a GPU, one more profiled run per
mode gives the fraction of ``encode()``'s wall time in which no kernel or copy runs on the GPU
(``torch.profiler``, the union of device activity intervals): the issue's "GPU idle" number.

``--simulate-tok-s R`` replaces the model by a stand-in that sleeps ``tokens / R`` seconds per
batch (the host thread idles, as it does while a GPU computes) and returns zeros, pooling
included (a GPU kernel too, not host work): what is left
is the input side alone, so on a machine without a GPU it shows whether this CPU can feed a
device of that speed (the GPU's real numbers need the GPU).

Texts: the end-to-end mix of the kernel issue, from gensim's lee_background news articles:
half one sentence, a third a paragraph (an article), the rest long documents (several articles
joined; cut at max_length 512 by the tokenizer). CPU numbers on this 2-core machine mostly show
the pipeline costs nothing; the GPU numbers are the point.

GPU machines (no network, no 98 MB GGUF): ``python bench/bench_training.py --export-assets DIR``
here, carry DIR, and pass ``--assets DIR --random-weights smollm2-135m`` (or another preset of
bench_training.py) there.
Results: bench/results/<device>-pipeline-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_data import (  # noqa: E402
    random_checkpoint,
    read_articles,
    split_sentences,
    tokenizer_and_articles,
)

from llm2vec_fast import LLM2Vec  # noqa: E402


def mixed_texts(articles: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    sentences = split_sentences(articles)
    out = []
    for i in range(n):
        r = i % 6
        if r < 3:
            out.append(rng.choice(sentences))
        elif r < 5:
            out.append(rng.choice(articles))
        else:
            out.append(" ".join(rng.sample(articles, 4)))
    rng.shuffle(out)
    return out


def run(model: LLM2Vec, texts, mode: str, batch_size: int) -> dict:
    os.environ["LLM2VEC_FAST_PIPELINE"] = "0" if mode == "sequential" else "1"
    if model.runner.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch_size, show_progress_bar=False)
    wall = time.perf_counter() - t0
    stats = dict(model.last_encode_stats)
    stats["wall_s"] = wall
    stats["tokens_per_s"] = stats["tokens"] / wall
    return stats


def gpu_idle_fraction(model: LLM2Vec, texts, mode: str, batch_size: int) -> dict:
    """One profiled encode(): the share of its wall time with no GPU activity."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    os.environ["LLM2VEC_FAST_PIPELINE"] = "0" if mode == "sequential" else "1"
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("bench_encode"):
            model.encode(texts, batch_size=batch_size, show_progress_bar=False)
            torch.cuda.synchronize()
    events = prof.events()
    (outer,) = [e for e in events if e.name == "bench_encode" and e.device_type == DeviceType.CPU]
    start, end = outer.time_range.start, outer.time_range.end
    spans = sorted(
        (max(e.time_range.start, start), min(e.time_range.end, end))
        for e in events
        if e.device_type == DeviceType.CUDA
        and e.time_range.end > e.time_range.start
        and e.name != "bench_encode"  # the annotation's own GPU-side span is not activity
        and not getattr(e, "is_user_annotation", False)
    )
    busy, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                busy += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        busy += cur_b - cur_a
    wall = end - start
    return {
        "profiled_wall_s": wall / 1e6,
        "gpu_busy_s": busy / 1e6,
        "gpu_idle_fraction": 1 - busy / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attn", default=None, help="attn_implementation (default: the library's)")
    ap.add_argument("--model", help="a checkpoint directory (default: the embedded SmolLM2)")
    ap.add_argument("--random-weights", help="a preset of bench_training.py, e.g. smollm2-135m")
    ap.add_argument("--assets", help="a directory from bench_training.py --export-assets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--simulate-tok-s", type=float, help="a sleeping stand-in model, tokens/s")
    ap.add_argument("--out", help="results JSON (default bench/results/...)")
    args = ap.parse_args()

    tok_dir, articles_file = tokenizer_and_articles(args.assets, args.model)
    articles = read_articles(articles_file)
    if args.random_weights:
        work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
        model_dir = random_checkpoint(args.random_weights, tok_dir, work / "model", args.seed)
        tag = f"random-{args.random_weights}"
    else:
        model_dir = Path(args.model) if args.model else tok_dir
        tag = model_dir.name if args.model else "smollm2-135m"
    kwargs = {"attn_implementation": args.attn} if args.attn else {}
    model = LLM2Vec.from_pretrained(model_dir, torch_dtype=args.dtype, device=args.device, **kwargs)
    if args.simulate_tok_s:
        hidden_size, rate = model.model.config.hidden_size, args.simulate_tok_s

        def stand_in(batch):
            time.sleep(batch.input_ids.shape[0] / rate)
            return torch.zeros(1, hidden_size).expand(batch.input_ids.shape[0], hidden_size)

        def pool_stand_in(hidden, batch):
            return torch.zeros(batch.cu_seqlens.shape[0] - 1, hidden_size)

        model.runner.run_model, model.runner.pool = stand_in, pool_stand_in
        tag += f"-simulated-{rate:.0f}tok-s"
    texts = mixed_texts(articles, args.texts, args.seed)
    dev = model.runner.device
    device_name = (
        torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    )
    print(
        f"{device_name}: {tag} {args.dtype}, {len(texts)} texts, {torch.get_num_threads()} threads"
    )

    modes = ("sequential", "overlapped")
    for mode in modes:  # warm-up (kernel compilation, caches)
        run(model, texts, mode, args.batch_size)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes:
            res = run(model, texts, mode, args.batch_size)
            runs[mode].append(res)
            print(
                f"  run {r} {mode:>10}: {res['wall_s']:7.2f} s  {res['tokens_per_s']:10,.0f} tok/s"
                f"  input wait {100 * res['input_wait_fraction']:5.1f}%"
                f"  tokenize {res['tokenize_s']:.2f} s"
            )
    summary = {}
    for mode in modes:
        walls = [x["wall_s"] for x in runs[mode]]
        summary[mode] = {
            "median_wall_s": statistics.median(walls),
            "median_tokens_per_s": statistics.median(x["tokens_per_s"] for x in runs[mode]),
            "median_input_wait_fraction": statistics.median(
                x["input_wait_fraction"] for x in runs[mode]
            ),
            "tokens": runs[mode][0]["tokens"],
        }
        if dev.type == "cuda":
            summary[mode].update(gpu_idle_fraction(model, texts, mode, args.batch_size))
    ratio = summary["sequential"]["median_wall_s"] / summary["overlapped"]["median_wall_s"]
    for mode in modes:
        s = summary[mode]
        line = (
            f"{mode:>10}: median {s['median_wall_s']:.2f} s, {s['median_tokens_per_s']:,.0f} tok/s,"
            f" input wait {100 * s['median_input_wait_fraction']:.1f}% of wall"
        )
        if "gpu_idle_fraction" in s:
            line += f", GPU idle {100 * s['gpu_idle_fraction']:.1f}% (profiled run)"
        print(line)
    print(f"overlapped speedup over sequential (same run): {ratio:.3f}x")

    result = {
        "device": device_name,
        "model": tag,
        "dtype": args.dtype,
        "attn_implementation": model.model.attn_implementation
        if hasattr(model.model, "attn_implementation")
        else None,
        "texts": len(texts),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "simulated_model_tokens_per_s": args.simulate_tok_s,
        "runs": runs,
        "summary": summary,
        "speedup_overlapped_over_sequential": ratio,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    kind = "cpu" if dev.type == "cpu" else torch.cuda.get_device_name(dev).split()[-1].lower()
    out = Path(args.out or HERE / "results" / f"{kind}-pipeline-{tag}-{args.dtype}.json")
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
