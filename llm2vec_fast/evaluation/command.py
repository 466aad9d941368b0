"""``llm2vec-fast eval``: the offline suite or MTEB tasks on an encoder named by the shared
model options (:mod:`llm2vec_fast.options`); registered by :mod:`llm2vec_fast.cli`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from llm2vec_fast.evaluation.offline import (
    POLARITY_FILE,
    WORDSIM_FILE,
    evaluate_offline,
    gensim_test_data_dir,
    offline_table,
)
from llm2vec_fast.options import (
    add_device_argument,
    add_encoding_arguments,
    add_model_arguments,
    add_subcommand,
    model_kwargs_from_args,
)

EVAL_HELP = """\
Evaluate an encoder.

--offline: the built-in suite, no data download: sentence classification on gensim's
pang_lee_polarity.cor (k-fold logistic regression) and word similarity on wordsim353.tsv,
each with a 95% bootstrap interval. Writes OUTPUT_DIR/offline.json.

--tasks T1,T2: MTEB tasks (needs the mteb extra: pip install "llm2vec-fast[mteb]"). Queries get
the task's instruction from --instructions (the official llm2vec task_to_instructions.json
format, {"TaskName": "instruction:"}; tasks it does not name get MTEB's default instruction),
documents none, as the official mteb_eval.py does. --data-dir DIR holds local copies of the
tasks' Hugging Face dataset repositories at DIR/<repository id> (e.g. DIR/mteb/stsbenchmark-sts);
nothing is downloaded then. Writes MTEB's result files under OUTPUT_DIR/results/ and a summary
table to OUTPUT_DIR/summary.md and summary.json.
"""


def add_eval_parser(sub) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on ``llm2vec-fast``'s subparsers."""
    e = add_subcommand(
        sub,
        "eval",
        "evaluate an encoder: MTEB tasks, or the built-in offline suite",
        EVAL_HELP,
    )
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--offline", action="store_true", help="the built-in offline suite")
    what.add_argument(
        "--tasks", default=None, help="MTEB task names, comma-separated (e.g. STS12,SciFact)"
    )
    add_model_arguments(e)
    e.add_argument("--max-length", type=int, default=None, help="token limit per sequence")
    add_device_argument(e, "cpu, cuda, cuda:1 ... (default: cuda if any)")
    add_encoding_arguments(e, dtype_help="model dtype", batch_help="texts per forward pass")
    e.add_argument(
        "--instructions",
        default=None,
        metavar="FILE",
        help="MTEB: task_to_instructions.json ({task name: instruction})",
    )
    e.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="MTEB: local dataset copies at DIR/<repository id>; offline: a folder with "
        f"{POLARITY_FILE} and {WORDSIM_FILE} (default: gensim's test data)",
    )
    e.add_argument("--output-dir", default="eval-results", metavar="DIR", help="where results go")
    e.add_argument(
        "--resume",
        action="store_true",
        help="MTEB: keep results already in OUTPUT_DIR for the same model name (default: rerun)",
    )
    e.add_argument("--folds", type=int, default=10, help="offline: k of the k-fold classifier")
    e.add_argument("--bootstrap", type=int, default=1000, help="offline: bootstrap resamples")
    e.add_argument("--seed", type=int, default=0, help="offline: seed of folds and bootstrap")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=run_eval_command)
    return e


def _task_names(spec: str) -> list[str]:
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise ValueError("--tasks names no task")
    return names


def run_eval_command(args: argparse.Namespace) -> int:
    """``llm2vec-fast eval``: load the model, run the offline suite or MTEB, write results."""
    from llm2vec_fast.optional import install_command, require

    out_dir = Path(args.output_dir)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is not a directory")
    mteb_module = None
    data_dir = args.data_dir
    if args.tasks is None and data_dir is None:  # before the model loads
        data_dir = gensim_test_data_dir(other_way="--data-dir DIR")
    if args.tasks is not None:
        tasks = _task_names(args.tasks)
        if args.data_dir is not None:  # local data only: never reach for the hub
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        require("mteb", feature="eval --tasks")
        try:
            from llm2vec_fast.integrations import mteb as mteb_module
        except ImportError as e:  # mteb is there but does not import (a version it cannot use)
            raise ValueError(
                f"--tasks needs the mteb package ({e}); install it with {install_command('mteb')}"
            ) from None
        instructions = (
            mteb_module.load_task_instructions(args.instructions) if args.instructions else None
        )

    from llm2vec_fast import LLM2Vec

    model = LLM2Vec.from_pretrained(**model_kwargs_from_args(args))
    out_dir.mkdir(parents=True, exist_ok=True)
    if mteb_module is None:
        scores = evaluate_offline(
            model,
            data_dir=data_dir,
            folds=args.folds,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            batch_size=args.batch_size,
            show_progress_bar=not args.quiet,
        )
        (out_dir / "offline.json").write_text(json.dumps(scores, indent=2) + "\n", "utf-8")
        print(offline_table(scores))
        print(f"\nwrote {out_dir / 'offline.json'} ({scores['seconds']:.1f} s)")
        return 0

    encoder = mteb_module.LLM2VecMTEB(model, instructions, batch_size=args.batch_size)
    rows = mteb_module.run_mteb(
        encoder,
        tasks,
        output_dir=out_dir,
        data_dir=args.data_dir,
        overwrite=not args.resume,
        show_progress_bar=not args.quiet,
    )
    table = mteb_module.summary_table(rows)
    (out_dir / "summary.md").write_text(table + "\n", "utf-8")
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n", "utf-8")
    print(table)
    print(f"\nresults under {out_dir / 'results'}; summary in {out_dir / 'summary.md'}")
    return 0
