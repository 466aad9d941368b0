"""The options shared by the command line's subcommands, and the one place where they become
the arguments of ``LLM2Vec.from_pretrained``.

``llm2vec-fast embed``, ``eval`` and ``train`` register their own options and take the shared
groups from here: the model options (:func:`add_model_arguments`), the device option
(:func:`add_device_argument`) and the encoding options (:func:`add_encoding_arguments`). The
command line (:mod:`llm2vec_fast.cli`), the batch job, the evaluation and training all turn
their settings into ``from_pretrained`` keyword arguments with :func:`from_pretrained_kwargs`.
This module imports nothing of llm2vec_fast, so every layer may use it.
"""

from __future__ import annotations

import argparse

__all__ = [
    "CLIError",
    "DTYPES",
    "FROM_PRETRAINED_NAMES",
    "LOAD_SETTINGS",
    "POOLING_MODES",
    "add_device_argument",
    "add_encoding_arguments",
    "add_model_arguments",
    "add_subcommand",
    "from_pretrained_kwargs",
    "load_settings",
    "model_kwargs_from_args",
]


class CLIError(Exception):
    """A problem with the command's input or arguments: printed as one line, exit status 2."""


POOLING_MODES = ["mean", "weighted_mean", "eos_token", "last_token", "bos_token"]
DTYPES = ["float32", "bfloat16", "float16"]


# option name -> LLM2Vec.from_pretrained's argument, for the settings passed through as given
FROM_PRETRAINED_NAMES = {
    "base_weights": "base_weights_path",
    "pooling": "pooling_mode",
    "max_length": "max_length",
    "doc_max_length": "doc_max_length",
    "dtype": "torch_dtype",
    "device": "device",
    "attn_implementation": "attn_implementation",
}
# every setting of from_pretrained_kwargs besides the model, by option name
LOAD_SETTINGS = ("peft", "causal", *FROM_PRETRAINED_NAMES)


def from_pretrained_kwargs(model, *, peft=(), causal: bool = False, **settings) -> dict:
    """The keyword arguments of ``LLM2Vec.from_pretrained`` for a model named by its options:
    ``peft`` adapters merged in order, bidirectional unless ``causal``, and the settings of
    :data:`FROM_PRETRAINED_NAMES` (``base_weights``, ``pooling``, ``max_length``,
    ``doc_max_length``, ``dtype``, ``device``, ``attn_implementation``, default ``"auto"``).
    ``None`` settings take the checkpoint's ``llm2vec_config.json`` (or the library's
    default)."""
    unknown = sorted(set(settings) - set(FROM_PRETRAINED_NAMES))
    if unknown:
        raise TypeError(f"from_pretrained_kwargs: unknown settings {unknown}")
    kwargs = {
        "base_model_name_or_path": model,
        "peft_model_name_or_path": list(peft) or None,
        "merge_peft": True,
        "enable_bidirectional": not causal,
        "attn_implementation": "auto",
    }
    kwargs.update({FROM_PRETRAINED_NAMES[k]: v for k, v in settings.items()})
    return kwargs


def load_settings(obj, names=LOAD_SETTINGS) -> dict:
    """The settings of :func:`from_pretrained_kwargs` that ``obj`` (parsed options, a job's
    config) has under the same names."""
    return {k: getattr(obj, k) for k in names if hasattr(obj, k)}


def model_kwargs_from_args(args: argparse.Namespace) -> dict:
    """:func:`from_pretrained_kwargs` of a parsed command line (the options of
    :func:`add_model_arguments`, ``--device``, ``--dtype``, ``--causal`` and, where the
    subcommand has them, ``--max-length`` and ``--doc-max-length``)."""
    return from_pretrained_kwargs(args.model, **load_settings(args))


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
        help="pooling mode (default: llm2vec_config.json, else mean)",
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
