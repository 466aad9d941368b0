"""Tokenizer benchmark: llm2vec-fast's C++ BPE against HF ``tokenizers``, same texts, same run.

Texts: gensim's corpora (lee_background, lee, pang_lee_polarity, crime-and-punishment: news,
reviews, some Russian), repeated ``--repeat-corpus`` times. Tokenizers: SmolLM2's byte-level
BPE (GPT-2 regex), the same vocabulary under the Llama-3 regex, and Mistral-7B's SentencePiece
BPE (when ``mistral-common`` is installed). Ids are checked equal before timing.

Rows (tokens/s, median of ``--repeats`` after a warm-up pass, so both sides' word caches are
warm; plus one cold pass on a freshly loaded tokenizer):

- ``hf``: ``tokenizers.Tokenizer.encode_batch`` (what transformers calls), all threads or one
  (``TOKENIZERS_PARALLELISM=false``); ``hf_fast``: ``encode_batch_fast`` (no offsets);
- ``ours``: ``Tokenizer.encode_batch`` (lists of ints), ``ours_arrays`` (flat int32 ids +
  offsets, the packer's input), each on 1 thread and on every core.

Then the encoder's input path per packed batch (instructions joined, ids and pooled counts,
packed into batches of <= 32 texts / 16,384 tokens): CPU and wall ms per batch with the HF
tokenizer (``LLM2VEC_FAST_TOKENIZER=0``) and with ours.

    python bench/bench_tokenizer.py --json bench/results/cpu-tokenizer.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def corpus(repeat: int) -> list[str]:
    import gensim

    data = pathlib.Path(gensim.__file__).parent / "test" / "test_data"
    texts: list[str] = []
    for name in ("lee_background.cor", "lee.cor", "pang_lee_polarity.cor"):
        for line in (data / name).read_bytes().splitlines():
            try:
                texts.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                texts.append(line.decode("latin-1"))
    texts += [p for p in (data / "crime-and-punishment.txt").read_text().split("\n") if p.strip()]
    return texts * repeat


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) of ``fn``, gc off while timing."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    finally:
        gc.enable()
    return statistics.median(walls), statistics.median(cpus)


def tokenizer_jsons() -> dict[str, str]:
    sys.path.append(str(pathlib.Path(__file__).resolve().parents[1] / "tests"))  # l2vf_support
    from l2vf_support.mistral import mistral_tokenizer_json
    from llm2vec_fast.testing import smollm2_tokenizer_json
    from llm2vec_fast.tokenizer import LLAMA3_REGEX

    out = {"smollm2 (byte-level, GPT-2 regex)": smollm2_tokenizer_json()}
    d = json.loads(out["smollm2 (byte-level, GPT-2 regex)"])
    d["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False},
        ],
    }  # fmt: skip
    d["model"]["ignore_merges"] = True
    out["smollm2 vocab, Llama-3 regex (byte-level)"] = json.dumps(d)
    try:
        out["mistral-7b (SentencePiece BPE, byte fallback)"] = mistral_tokenizer_json()
    except ImportError as exc:
        print(f"skipping Mistral: {exc}", file=sys.stderr)
    return out


def bench_tokenizers(texts: list[str], repeats: int, n_cores: int) -> list[dict]:
    """Every tokenizer of :func:`tokenizer_jsons`, HF against ours."""
    rows = []
    for name, text in tokenizer_jsons().items():
        rows += bench_one(name, text, texts, repeats, n_cores)
    return rows


def bench_one(name: str, text: str, texts: list[str], repeats: int, n_cores: int) -> list[dict]:
    """One tokenizer.json: HF and ours, warm (1 and all threads) and cold."""
    from tokenizers import Tokenizer as HF

    from llm2vec_fast import Tokenizer

    rows = []
    hf, ours = HF.from_str(text), Tokenizer.from_str(text)
    want = [e.ids for e in hf.encode_batch(texts[: len(texts) // 4])]
    assert ours.encode_batch(texts[: len(texts) // 4]) == want, f"{name}: ids differ"
    n_tokens = int(ours.count_tokens(texts).sum())

    def hf_run(fast: bool, threads: str) -> Callable[[], object]:
        def run():
            os.environ["TOKENIZERS_PARALLELISM"] = "false" if threads == "1" else "true"
            return (hf.encode_batch_fast if fast else hf.encode_batch)(texts)

        return run

    cases = {
        ("hf", "1"): hf_run(False, "1"),
        ("hf", "all"): hf_run(False, "all"),
        ("hf_fast", "1"): hf_run(True, "1"),
        ("hf_fast", "all"): hf_run(True, "all"),
        ("ours", "1"): lambda: ours.encode_batch(texts, num_threads=1),
        ("ours", "all"): lambda: ours.encode_batch(texts, num_threads=0),
        ("ours_arrays", "1"): lambda: ours.encode_batch_arrays(texts, num_threads=1),
        ("ours_arrays", "all"): lambda: ours.encode_batch_arrays(texts, num_threads=0),
    }
    results = {}
    for (impl, threads), fn in cases.items():
        wall, cpu = timed(fn, repeats)
        results[(impl, threads)] = wall
        rows.append({"tokenizer": name, "impl": impl, "threads": threads if threads == "1" else n_cores,
                     "cache": "warm", "seconds": wall, "cpu_seconds": cpu,
                     "tokens": n_tokens, "tokens_per_s": n_tokens / wall})  # fmt: skip
    # one cold pass each (fresh tokenizers, empty word caches), all threads
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    for impl, make, call in (
        ("hf", lambda: HF.from_str(text), lambda t: t.encode_batch(texts)),
        ("ours", lambda: Tokenizer.from_str(text), lambda t: t.encode_batch(texts)),
    ):
        tok = make()
        t0 = time.perf_counter()
        call(tok)
        wall = time.perf_counter() - t0
        rows.append({"tokenizer": name, "impl": impl, "threads": n_cores, "cache": "cold",
                     "seconds": wall, "tokens": n_tokens, "tokens_per_s": n_tokens / wall})  # fmt: skip
    for threads in ("1", "all"):
        print(
            f"{name:48s} {threads:>3s} thr: hf {n_tokens / results[('hf', threads)] / 1e6:6.2f} "
            f"M tok/s, hf_fast {n_tokens / results[('hf_fast', threads)] / 1e6:6.2f}, "
            f"ours {n_tokens / results[('ours', threads)] / 1e6:6.2f}, "
            f"ours_arrays {n_tokens / results[('ours_arrays', threads)] / 1e6:6.2f} "
            f"({results[('hf', threads)] / results[('ours', threads)]:.1f}x hf)"
        )
    return rows


def bench_encoder_input(texts: list[str], repeats: int) -> list[dict]:
    """The encoder's CPU work before the model: join instructions, ids + pooled counts, pack."""
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.packing import pack_token_ids
    from llm2vec_fast.testing import make_tiny_checkpoint

    instructions = ["", "Given a news article, retrieve articles on the same topic"]
    pairs = [(instructions[i % 2], t) for i, t in enumerate(texts)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = LLM2Vec.from_pretrained(make_tiny_checkpoint(tmp, "llama", seed=0), device="cpu")

        def run():
            ids, pool = model.text.token_ids(model.text.joined(pairs))
            return pack_token_ids(ids, pool, max_length=model.max_length,
                                  max_tokens_per_batch=32 * model.max_length, max_batch_size=32)  # fmt: skip

        for impl, flag in (("hf (transformers)", "0"), ("ours", "1")):
            os.environ["LLM2VEC_FAST_TOKENIZER"] = flag
            n_batches = len(run())
            wall, cpu = timed(run, repeats)
            n_tokens = sum(len(x) for x in model.text.token_ids(model.text.joined(pairs))[0])
            rows.append({"impl": impl, "texts": len(texts), "batches": n_batches,
                         "tokens": n_tokens, "seconds": wall, "cpu_seconds": cpu,
                         "ms_per_batch": 1e3 * wall / n_batches,
                         "cpu_ms_per_batch": 1e3 * cpu / n_batches})  # fmt: skip
            print(
                f"encoder input, {impl:18s}: {1e3 * wall / n_batches:6.2f} ms/batch wall, "
                f"{1e3 * cpu / n_batches:6.2f} ms CPU ({n_batches} batches of <= 32 texts, "
                f"{n_tokens / wall / 1e6:.2f} M tok/s)"
            )
        os.environ.pop("LLM2VEC_FAST_TOKENIZER")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat-corpus", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args()

    import tokenizers
    import transformers

    import llm2vec_fast

    texts = corpus(args.repeat_corpus)
    n_cores = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"{len(texts)} texts, {sum(map(len, texts)) / 1e6:.1f}M characters; {n_cores} cores; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    rows = bench_tokenizers(texts, args.repeats, n_cores)
    encoder_rows = bench_encoder_input(corpus(max(1, args.repeat_corpus // 2)), args.repeats)
    load_after = os.getloadavg()
    result = {
        "benchmark": "tokenizer",
        "host": {"cpu": platform.processor() or platform.machine(), "cores": n_cores,
                 "python": platform.python_version(), "load_average_before": load,
                 "load_average_after": load_after},
        "versions": {"tokenizers": tokenizers.__version__,
                     "transformers": transformers.__version__,
                     "llm2vec_fast": llm2vec_fast.__version__},
        "texts": len(texts),
        "repeats": args.repeats,
        "tokenizers": rows,
        "encoder_input": encoder_rows,
    }  # fmt: skip
    try:
        with open("/proc/cpuinfo") as f:
            result["host"]["cpu"] = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
