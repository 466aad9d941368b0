"""The ``llm2vec-fast`` command line: the root parser and the entry point.

llm2vec-fast embed INPUT -o OUTDIR|OUTPUT.npy [--model PATH] [--peft DIR ...] [--pooling MODE] ...

The subcommands register themselves (``embed``: :mod:`llm2vec_fast.embed_cli`, ``eval``:
:mod:`llm2vec_fast.evaluation.command`, ``train``: :mod:`llm2vec_fast.training.cli`) with the
shared option groups of :mod:`llm2vec_fast.options`; none of them imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from llm2vec_fast.options import CLIError

__all__ = ["CLIError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm2vec-fast", description="LLM2Vec text encoders, fast, over packed batches."
    )
    from llm2vec_fast.version import __version__

    parser.add_argument("--version", action="version", version=f"llm2vec-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for register in _subcommands():
        register(sub)
    return parser


def _subcommands():
    """Each subcommand's registration function: ``embed``, ``eval``, ``train`` (imported when
    the parser is built, so importing this module loads none of them)."""
    from llm2vec_fast.embed_cli import add_embed_parser
    from llm2vec_fast.evaluation.command import add_eval_parser
    from llm2vec_fast.training.cli import add_train_parser  # torch-free until it runs

    return [add_embed_parser, add_eval_parser, add_train_parser]


@contextlib.contextmanager
def _quiet_libraries(quiet: bool):
    """Under ``-q``, for this command only: no transformers/huggingface_hub progress bars (the
    GGUF conversion's and checkpoint loading's, see :func:`llm2vec_fast.loading.
    gguf_to_safetensors`), in this process and in worker processes it starts. The previous
    state is restored afterwards, so a program that calls :func:`main` keeps its own."""
    if not quiet:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    was_on, hub_was_on = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    env = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read at import by spawned workers
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if env is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = env
        if was_on:
            hf_logging.enable_progress_bar()
        if hub_was_on:
            enable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    from llm2vec_fast.optional import MissingDependencyError

    args = build_parser().parse_args(argv)
    try:
        with _quiet_libraries(getattr(args, "quiet", False)):
            return args.func(args)
    except (
        CLIError,
        ValueError,
        TypeError,
        FileNotFoundError,
        MissingDependencyError,
    ) as e:  # CheckpointError and batch_job.JobError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C; the batch job's manifest stays consistent
        print("aborted; rerun the same command to continue a batch job", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
