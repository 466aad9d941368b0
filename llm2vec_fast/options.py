"""The options shared by the command line's subcommands, and the one place where they become
the arguments of ``LLM2Vec.from_pretrained``.

``llm2vec-fast embed``, ``eval`` and ``train`` register their own options and take the shared
groups from here: the model options (:func:`add_model_arguments`), the device option
(:func:`add_device_argument`) and the encoding options (:func:`add_encoding_arguments`). The
command line (:mod:`llm2vec_fast.cli`), the batch job, the evaluation and training all turn
their settings into ``from_pretrained`` keyword arguments with :func:`model_kwargs`, through
:class:`~llm2vec_fast.loading.LoadSpec`. Apps and the command line use this module; it imports
only core (the loading layer, on first use).
"""

from __future__ import annotations

import argparse

__all__ = [
    "CLIError",
    "DTYPES",
    "POOLING_MODES",
    "add_device_argument",
    "add_encoding_arguments",
    "add_model_arguments",
    "add_subcommand",
    "model_kwargs",
    "model_kwargs_from_args",
]


class CLIError(Exception):
    """A problem with the command's input or arguments: printed as one line, exit status 2."""


POOLING_MODES = [
    "mean", "weighted_mean", "eos_token", "last_token", "bos_token", "latent_attention"
]  # fmt: skip
DTYPES = ["float32", "bfloat16", "float16"]


def model_kwargs(options, device=None) -> dict:
    """``LLM2Vec.from_pretrained`` keyword arguments of parsed model options (an
    ``argparse.Namespace``, a job's or a training run's config: the option names of
    :func:`add_model_arguments` and ``dtype``, ``causal``, ``max_length``, ...). The translation
    is :meth:`LoadSpec.from_options <llm2vec_fast.loading.LoadSpec.from_options>`, the one place
    option names become checkpoint-loading settings."""
    from llm2vec_fast.loading import LoadSpec

    return {**LoadSpec.from_options(options).kwargs(), "device": device}


def model_kwargs_from_args(args: argparse.Namespace) -> dict:
    """:func:`model_kwargs` of a parsed command line, on its ``--device``."""
    return model_kwargs(args, getattr(args, "device", None))


def add_subcommand(sub, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand's parser on ``llm2vec-fast``'s subparsers, its description printed as
    written."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that name the encoder to load (``embed`` and ``eval`` share them)."""
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint directory or .gguf file (default: embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--peft",
        action="append",
        default=[],
        metavar="DIR",
        help="a PEFT adapter to merge on top; repeat for several, applied in order",
    )
    parser.add_argument(
        "--base-weights",
        default=None,
        metavar="DIR",
        help="local base checkpoint for an adapter directory that names its base by hub id",
    )
    parser.add_argument(
        "--pooling",
        default=None,
        choices=POOLING_MODES,
        help="pooling mode (default: llm2vec_config.json, else mean); latent_attention needs "
        "a checkpoint trained with that head",
    )


def add_device_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--device`` (one device: cpu, cuda, cuda:1 ...)."""
    parser.add_argument("--device", default=None, help=help)


def add_encoding_arguments(
    parser: argparse.ArgumentParser, *, dtype_help: str, batch_help: str
) -> None:
    """``--dtype``, ``--batch-size`` and ``--causal`` (``embed`` and ``eval`` share them)."""
    parser.add_argument("--dtype", default=None, choices=DTYPES, help=dtype_help)
    parser.add_argument("--batch-size", type=int, default=32, help=batch_help)
    parser.add_argument(
        "--causal", action="store_true", help="causal attention (the paper's baseline)"
    )
