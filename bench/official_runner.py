#!/usr/bin/env python
"""Run the official llm2vec 0.2.3 and record what it does.

Runs INSIDE the official environment (bench/.venv-official, made by
bench/setup_official_env.sh): it imports llm2vec, transformers 4.44.2 and
nothing from llm2vec_fast.

Parity mode:

    python bench/official_runner.py JOB.json OUT.(json|npz)

JOB.json:
    {"model": dir, "peft": dir or null, "merge_peft": false,
     "pooling_mode": "mean", "max_length": 512, "doc_max_length": 400,
     "skip_instruction": true, "enable_bidirectional": true, "batch_size": 32,
     "torch_dtype": "float32", "device": null, "attn_implementation": null,
     "threads": null,
     "cases": [{"name": "plain", "sentences": ["text", ...]},
               {"name": "instr", "sentences": [["instruction", "text"], ...]}]}
    Only "model" and "cases" are required; pooling_mode, max_length,
    doc_max_length and skip_instruction left out (or null) are not passed, so
    llm2vec_config.json or the official defaults apply, as in the official
    from_pretrained. A case's "batch_size" overrides the job's.

For each case it normalises the input the way LLM2Vec.encode does (a list of
strings becomes ["", s] pairs, a [str, ..., int] list becomes one item,
_convert_to_str with doc_max_length), sorts and batches it exactly as encode
does (np.argsort of minus the character length, then batch_size at a time),
calls prepare_for_tokenization and tokenize on each batch, and records per
sentence (in input order):
    converted   the _convert_to_str output (with the !@#$%^&*() separator)
    prepared    the prepare_for_tokenization output
    ids         input_ids where attention_mask == 1 (left padding stripped)
    embed_mask  embed_mask over those positions
    pool_count  the embed_mask row sum over the whole padded row (n, the text's
                own token count; can exceed len(ids) in edge cases)
    batch, padded_length   which batch it went into and that batch's width
    embedding   the row of the real LLM2Vec.encode(...) output (convert_to_numpy)
Then it calls the real encode(sentences, batch_size, convert_to_numpy=True)
and stores its output (also whole, as "embeddings", since bos_token pooling
can return a number of rows other than the number of sentences). An exception
in a case is recorded ("features_error" / "encode_error") and the run goes on.

Output: OUT.json holds everything (floats written with repr: float32 values
round-trip exactly). OUT.npz holds "__json__" (that JSON without the
embeddings, as a 0-d string array) and, per case index c,
"c{c}.embeddings" (float32) and "c{c}.ids.{i}", "c{c}.embed_mask.{i}" (int64).

Throughput mode:

    python bench/official_runner.py --throughput --model DIR --texts FILE \\
        --batch-sizes 8,32 [--threads N] [--pooling-mode mean] [--max-length 512]
        [--torch-dtype float32] [--device cpu] [--repeats 1] [--warmup full|batch]
        [--limit N] [--causal] [--peft DIR]

FILE: one text per line, or a .json list of strings / [instruction, text]
pairs. Per batch size: one warm-up encode (all texts by default, --warmup batch:
only the first batch_size), then `repeats` timed encodes of all texts (the
best one is reported); prints JSON on stdout with texts/s and
tokens/s (tokens = attention_mask sum of the official tokenize output over all
texts, i.e. real tokens, no padding; padded_tokens = what the batches held with
padding).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

SEP = "!@#$%^&*()"


def _dtype(name):
    if name is None:
        return torch.float32
    return {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }[name]


_PEFT_DROPPED = []


def _inert(key, value, config):
    if value is None or value is False or value == [] or value == {}:
        return True
    if key == "peft_version":  # metadata only
        return True
    if key == "qalora_group_size" and not config.get("use_qalora"):
        return True
    return False


def compat_peft_dir(path):
    """peft 0.12 (the official stack) refuses adapter_config.json keys that newer
    peft writes (LoraConfig.__init__() got an unexpected keyword argument
    'alora_invocation_tokens', ...). When every such key holds its inert default,
    load from a temporary copy without them (the other files symlinked);
    otherwise fail, naming the keys."""
    import dataclasses
    import os
    import tempfile

    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    cfg_path = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(cfg_path):
        return path
    with open(cfg_path, encoding="utf-8") as f:
        config = json.load(f)
    cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(config.get("peft_type"), PeftConfig)
    known = {fld.name for fld in dataclasses.fields(cls)}
    unknown = {k: v for k, v in config.items() if k not in known}
    if not unknown:
        return path
    live = {k: v for k, v in unknown.items() if not _inert(k, v, config)}
    if live:
        raise ValueError(f"adapter_config.json keys that peft 0.12 cannot honour: {live}")
    tmp = tempfile.mkdtemp(prefix="official-peft-")
    for name in os.listdir(path):
        if name != "adapter_config.json":
            os.symlink(os.path.abspath(os.path.join(path, name)), os.path.join(tmp, name))
    with open(os.path.join(tmp, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in config.items() if k in known}, f, indent=2)
    _PEFT_DROPPED.extend(sorted(unknown))
    return tmp


def load(
    model,
    peft=None,
    merge_peft=False,
    enable_bidirectional=True,
    torch_dtype="float32",
    attn_implementation=None,
    **encoder_args,
):
    from llm2vec import LLM2Vec

    if peft:
        peft = compat_peft_dir(peft)

    kwargs = {k: v for k, v in encoder_args.items() if v is not None}
    kwargs["torch_dtype"] = _dtype(torch_dtype)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return LLM2Vec.from_pretrained(
        model,
        peft_model_name_or_path=peft,
        merge_peft=bool(merge_peft),
        enable_bidirectional=bool(enable_bidirectional),
        **kwargs,
    )


def normalise_like_encode(sentences):
    """The input handling at the top of LLM2Vec.encode, verbatim in effect."""
    if isinstance(sentences[0], str) and isinstance(sentences[-1], int):
        sentences = [sentences]
    if isinstance(sentences[0], str):
        sentences = [[""] + [sentence] for sentence in sentences]
    return sentences


def official_features(l2v, sentences, batch_size):
    """Per sentence (input order): what encode's _encode feeds the model."""
    pairs = normalise_like_encode(sentences)
    converted = []
    for sentence in pairs:
        assert isinstance(sentence[0], str)
        assert isinstance(sentence[1], str)
        converted.append(l2v._convert_to_str(sentence[0], sentence[1]))
    order = np.argsort([-l2v._text_length(sen) for sen in converted])
    out = [None] * len(converted)
    for b, start in enumerate(range(0, len(converted), batch_size)):
        idx = [int(i) for i in order[start : start + batch_size]]
        prepared = [l2v.prepare_for_tokenization(converted[i]) for i in idx]
        feats = l2v.tokenize(prepared)
        width = int(feats["input_ids"].shape[1])
        for row, i in enumerate(idx):
            keep = feats["attention_mask"][row].bool()
            out[i] = {
                "converted": converted[i],
                "prepared": prepared[row],
                "ids": feats["input_ids"][row][keep].tolist(),
                "embed_mask": feats["embed_mask"][row][keep].tolist(),
                "pool_count": int(feats["embed_mask"][row].sum()),
                "batch": b,
                "padded_length": width,
            }
    return out, [int(i) for i in order]


def run_case(l2v, case, batch_size, device=None):
    name = case.get("name")
    sentences = case["sentences"]
    bs = int(case.get("batch_size") or batch_size)
    rec = {"name": name, "batch_size": bs, "n_input": len(sentences)}
    try:
        per, order = official_features(l2v, sentences, bs)
        rec["sentences"] = per
        rec["order"] = order
    except Exception as e:  # noqa: BLE001 - recorded for the caller
        rec["features_error"] = f"{type(e).__name__}: {e}"
        per = None
    try:
        with torch.no_grad():
            emb = l2v.encode(
                sentences,
                batch_size=bs,
                show_progress_bar=False,
                convert_to_numpy=True,
                device=device,
            )
        emb = np.asarray(emb, dtype=np.float32)
        rec["embeddings"] = emb
        if per is not None and emb.ndim == 2 and emb.shape[0] == len(per):
            for i, p in enumerate(per):
                p["embedding"] = emb[i]
    except Exception as e:  # noqa: BLE001
        rec["encode_error"] = f"{type(e).__name__}: {e}"
    return rec


OFFICIAL_PACKAGES = (
    "llm2vec",
    "transformers",
    "tokenizers",
    "torch",
    "peft",
    "huggingface-hub",
    "numpy",
)


def versions(packages=OFFICIAL_PACKAGES):
    """{package: installed version, or None}."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _jsonable(obj, keep_arrays):
    if isinstance(obj, np.ndarray):
        return obj.tolist() if keep_arrays else None
    if isinstance(obj, dict):
        return {
            k: _jsonable(v, keep_arrays)
            for k, v in obj.items()
            if keep_arrays or not isinstance(v, np.ndarray)
        }
    if isinstance(obj, list):
        return [_jsonable(v, keep_arrays) for v in obj]
    return obj


def write_output(path, result):
    if path.endswith(".npz"):
        arrays = {"__json__": np.array(json.dumps(_jsonable(result, keep_arrays=False)))}
        for c, rec in enumerate(result["cases"]):
            if "embeddings" in rec:
                arrays[f"c{c}.embeddings"] = rec["embeddings"]
            for i, p in enumerate(rec.get("sentences") or []):
                arrays[f"c{c}.ids.{i}"] = np.asarray(p["ids"], dtype=np.int64)
                arrays[f"c{c}.embed_mask.{i}"] = np.asarray(p["embed_mask"], dtype=np.int64)
        np.savez(path, **arrays)
    else:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_jsonable(result, keep_arrays=True), f, ensure_ascii=False)


def parity(job_path, out_path):
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    t0 = time.perf_counter()
    l2v = load(
        job["model"],
        peft=job.get("peft"),
        merge_peft=job.get("merge_peft", False),
        enable_bidirectional=job.get("enable_bidirectional", True),
        torch_dtype=job.get("torch_dtype", "float32"),
        attn_implementation=job.get("attn_implementation"),
        pooling_mode=job.get("pooling_mode"),
        max_length=job.get("max_length"),
        doc_max_length=job.get("doc_max_length"),
        skip_instruction=job.get("skip_instruction"),
    )
    load_s = time.perf_counter() - t0
    batch_size = int(job.get("batch_size") or 32)
    cases = [run_case(l2v, case, batch_size, job.get("device")) for case in job["cases"]]
    result = {
        "versions": versions(),
        "job": job,
        "resolved": {
            "pooling_mode": l2v.pooling_mode,
            "max_length": l2v.max_length,
            "doc_max_length": l2v.doc_max_length,
            "skip_instruction": l2v.skip_instruction,
            "name_or_path": l2v.model.config._name_or_path,
            "config_class": type(l2v.model.config).__name__,
            "model_class": type(l2v.model).__name__,
            "attn_implementation": getattr(l2v.model.config, "_attn_implementation", None),
            "bos_token_id": l2v.tokenizer.bos_token_id,
            "eos_token_id": l2v.tokenizer.eos_token_id,
            "pad_token_id": l2v.tokenizer.pad_token_id,
        },
        "peft_dropped_keys": list(_PEFT_DROPPED),
        "load_seconds": load_s,
        "cases": cases,
    }
    write_output(out_path, result)
    n_err = sum(1 for c in cases if "features_error" in c or "encode_error" in c)
    print(
        f"official_runner: {len(cases)} cases, {n_err} with errors -> {out_path}", file=sys.stderr
    )


def read_texts(path, limit=None):
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            texts = json.load(f)
    else:
        with open(path, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
    return texts[:limit] if limit else texts


def throughput(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = read_texts(args.texts, args.limit)
    l2v = load(
        args.model,
        peft=args.peft,
        enable_bidirectional=not args.causal,
        torch_dtype=args.torch_dtype,
        attn_implementation=args.attn_implementation,
        pooling_mode=args.pooling_mode,
        max_length=args.max_length,
        doc_max_length=args.doc_max_length,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    results = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        per, _ = official_features(l2v, texts, bs)
        tokens = sum(len(p["ids"]) for p in per)
        padded = 0
        widths = {}
        for p in per:
            widths[p["batch"]] = p["padded_length"]
        for b, w in widths.items():
            padded += w * sum(1 for p in per if p["batch"] == b)
        with torch.no_grad():
            # warm-up: a full pass by default, so every batch shape has been seen once
            # (CPU kernels cache per shape; the first pass over new shapes is slow)
            warm = texts if args.warmup == "full" else texts[:bs]
            l2v.encode(
                warm, batch_size=bs, show_progress_bar=False, convert_to_numpy=True, device=device
            )
            sync()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                l2v.encode(
                    texts,
                    batch_size=bs,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    device=device,
                )
                sync()
                times.append(time.perf_counter() - t0)
        best = min(times)
        results.append(
            {
                "batch_size": bs,
                "seconds": best,
                "all_seconds": times,
                "texts": len(texts),
                "tokens": tokens,
                "padded_tokens": padded,
                "texts_per_s": len(texts) / best,
                "tokens_per_s": tokens / best,
            }
        )
    out = {
        "impl": "official-llm2vec",
        "versions": versions(),
        "model": args.model,
        "device": device,
        "torch_dtype": args.torch_dtype,
        "threads": torch.get_num_threads(),
        "pooling_mode": l2v.pooling_mode,
        "max_length": l2v.max_length,
        "results": results,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job", nargs="?", help="parity job JSON")
    ap.add_argument("out", nargs="?", help="output .json or .npz")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("--peft")
    ap.add_argument("--texts")
    ap.add_argument("--batch-sizes", default="32")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--pooling-mode")
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--doc-max-length", type=int)
    ap.add_argument("--torch-dtype", default="float32")
    ap.add_argument("--attn-implementation")
    ap.add_argument("--device")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--warmup",
        choices=["full", "batch"],
        default="full",
        help="warm-up encode of all texts (default) or of one batch",
    )
    ap.add_argument("--limit", type=int)
    ap.add_argument("--causal", action="store_true", help="enable_bidirectional=False")
    args = ap.parse_args(argv)
    if args.throughput:
        if not (args.model and args.texts):
            ap.error("--throughput needs --model and --texts")
        throughput(args)
    else:
        if not (args.job and args.out):
            ap.error("parity mode needs JOB.json and OUT path")
        parity(args.job, args.out)


if __name__ == "__main__":
    main()
