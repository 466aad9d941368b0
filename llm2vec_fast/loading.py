"""Loading an encoder: :class:`LoadSpec` names everything it is loaded from (paths, adapters,
dtype, the encoder settings); :func:`load` turns one into a model and its tokenizer.
``LLM2Vec``, the worker processes of several devices, the command line, the batch job and
training all build their encoders from a ``LoadSpec``.

The checkpoint files themselves (safetensors, GGUF, PEFT adapters) are read by
:mod:`llm2vec_fast.checkpoint`, whose public names are importable from here too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from llm2vec_fast.checkpoint import (
    ADAPTER_CONFIG,
    GGUF_CACHE_FORMAT,
    SAFE_INDEX,
    CheckpointError,
    apply_adapter,
    build_encoder,
    cache_dir,
    gguf_to_safetensors,
    is_adapter_dir,
    is_weight_file,
    load_encoder,
    load_hf_config,
    read_json,
    read_state_dict,
    weight_files,
)
from llm2vec_fast.devices import resolve_dtype
from llm2vec_fast.latent_attention import LATENT_ATTENTION_FILE, attach_head, read_head
from llm2vec_fast.latent_attention import POOLING_MODE as LATENT_POOLING
from llm2vec_fast.model import base_model, is_peft

__all__ = [
    "ADAPTER_CONFIG",
    "ENCODER_ARGS",
    "GGUF_CACHE_FORMAT",
    "LLM2VEC_CONFIG",
    "SAFE_INDEX",
    "CheckpointError",
    "LoadSpec",
    "Loaded",
    "apply_adapter",
    "base_model",
    "build_encoder",
    "cache_dir",
    "gguf_to_safetensors",
    "is_adapter_dir",
    "is_peft",
    "load",
    "load_base",
    "load_encoder",
    "load_hf_config",
    "load_pooling_head",
    "load_tokenizer",
    "read_json",
    "read_state_dict",
    "resolve_base_dir",
    "weight_files",
]

LLM2VEC_CONFIG = "llm2vec_config.json"
# The encoder settings llm2vec_config.json holds (and from_pretrained overrides).
ENCODER_ARGS = ("pooling_mode", "max_length", "doc_max_length", "skip_instruction")

# ----------------------------------------------------------------------------- LoadSpec


@dataclass(frozen=True)
class LoadSpec:
    """What an encoder is loaded from: ``LLM2Vec.from_pretrained``'s arguments, checked.

    Paths are absolute (a worker process in another directory loads the same files); None as
    ``base_model_name_or_path`` is the embedded default model. The encoder settings
    (``pooling_mode`` ... ``skip_instruction``) override ``llm2vec_config.json`` where not None;
    the spec :func:`load` returns has them resolved.
    """

    base_model_name_or_path: str | None = None
    peft_model_name_or_path: tuple[str, ...] = ()
    merge_peft: bool = False
    enable_bidirectional: bool = True
    base_weights_path: str | None = None
    torch_dtype: torch.dtype = torch.float32
    attn_implementation: str = "auto"
    pooling_mode: str | None = None
    max_length: int | None = None
    doc_max_length: int | None = None
    skip_instruction: bool | None = None

    @classmethod
    def create(
        cls,
        base_model_name_or_path=None,
        peft_model_name_or_path: str | os.PathLike | Sequence | None = None,
        *,
        base_weights_path=None,
        torch_dtype=None,
        **options: Any,
    ) -> LoadSpec:
        """A spec from ``LLM2Vec.from_pretrained``'s arguments: one adapter or a list,
        relative paths, a dtype or its name (also as transformers 5's ``dtype``); encoder
        settings given as None fall back to the config file. ``low_cpu_mem_usage`` is
        ignored, ``trust_remote_code`` and unknown arguments are refused."""
        for k in ENCODER_ARGS:
            if options.get(k, 0) is None:
                del options[k]
        if options.pop("trust_remote_code", False):
            raise ValueError(
                "llm2vec-fast runs its own model code; trust_remote_code is not supported"
            )
        if "dtype" in options:  # transformers 5's name for torch_dtype
            torch_dtype = options.pop("dtype")
        options.pop("low_cpu_mem_usage", None)
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"from_pretrained() got unexpected arguments: {sorted(unknown)}")
        if peft_model_name_or_path is None:
            adapters: list = []
        elif isinstance(peft_model_name_or_path, (str, os.PathLike)):
            adapters = [peft_model_name_or_path]
        else:
            adapters = list(peft_model_name_or_path)
        return cls(
            base_model_name_or_path=_abspath(base_model_name_or_path),
            peft_model_name_or_path=tuple(_abspath(a) for a in adapters),
            base_weights_path=_abspath(base_weights_path),
            torch_dtype=resolve_dtype(torch_dtype),
            **options,
        )

    @classmethod
    def from_options(cls, options: Any, **overrides: Any) -> LoadSpec:
        """A spec from parsed command-line model options (an ``argparse.Namespace`` or a config
        object with the same names): ``model``, ``peft`` (adapters, merged), ``base_weights``,
        ``pooling``, ``max_length``, ``doc_max_length``, ``dtype``, ``causal`` and
        ``attn_implementation``, each optional; ``overrides`` are :meth:`create`'s arguments
        and win over the options."""
        get = functools.partial(getattr, options)
        args: dict[str, Any] = {
            "base_model_name_or_path": get("model", None),
            "peft_model_name_or_path": list(get("peft", None) or []) or None,
            "merge_peft": True,
            "base_weights_path": get("base_weights", None),
            "pooling_mode": get("pooling", None),
            "max_length": get("max_length", None),
            "doc_max_length": get("doc_max_length", None),
            "torch_dtype": get("dtype", None),
            "enable_bidirectional": not get("causal", False),
            "attn_implementation": get("attn_implementation", None) or "auto",
        }
        args.update(overrides)
        return cls.create(**args)

    @property
    def settings(self) -> dict[str, Any]:
        """The encoder settings that are set (``pooling_mode`` ... ``skip_instruction``)."""
        return {k: getattr(self, k) for k in ENCODER_ARGS if getattr(self, k) is not None}

    def kwargs(self) -> dict[str, Any]:
        """The spec as ``LLM2Vec.from_pretrained`` keyword arguments."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["peft_model_name_or_path"] = list(self.peft_model_name_or_path) or None
        return out


@dataclass
class Loaded:
    """What :func:`load` returns: the model to run (a ``PeftModel`` around the encoder when an
    adapter stays unmerged), its tokenizer, the checkpoint's ``_name_or_path`` and the spec
    with the encoder settings resolved (from ``llm2vec_config.json`` and the overrides)."""

    model: torch.nn.Module
    tokenizer: Any
    name_or_path: str
    spec: LoadSpec
    settings: dict = field(default_factory=dict)


def load(spec: LoadSpec) -> Loaded:
    """Load ``spec``'s base checkpoint, its adapters (all but the last merged; the last too when
    ``merge_peft``), its tokenizer and its ``llm2vec_config.json``. The model is on the CPU;
    with ``attn_implementation="auto"`` it runs torch's path until kernels are selected."""
    base_dir = resolve_base_dir(spec.base_model_name_or_path)
    auto = spec.attn_implementation == "auto"
    model, name_or_path = load_base(
        base_dir,
        spec.base_weights_path,
        dtype=spec.torch_dtype,
        attn_implementation="sdpa" if auto else spec.attn_implementation,
        causal=not spec.enable_bidirectional,
    )
    adapters = spec.peft_model_name_or_path
    for i, adapter in enumerate(adapters):
        model = apply_adapter(model, adapter, merge=spec.merge_peft or i < len(adapters) - 1)
    config_dir = Path(adapters[-1]) if adapters else base_dir
    settings: dict = {}
    if (config_dir / LLM2VEC_CONFIG).is_file():
        settings.update(read_json(config_dir / LLM2VEC_CONFIG))
    settings = {k: v for k, v in settings.items() if k in ENCODER_ARGS}
    settings.update(spec.settings)
    load_pooling_head(model, config_dir, settings.get("pooling_mode"))
    tokenizer = load_tokenizer(base_dir, spec.base_weights_path)
    return Loaded(model, tokenizer, name_or_path, replace(spec, **settings), settings)


def load_pooling_head(model, config_dir: Path, pooling_mode: str | None) -> None:
    """Attach the latent-attention head saved in ``config_dir`` when ``pooling_mode`` is
    ``latent_attention``. A checkpoint that holds a head loaded with another pooling mode is
    refused: its embeddings were trained through the head, and dropping it would give other
    vectors without a word."""
    if pooling_mode == LATENT_POOLING:
        attach_head(model, read_head(config_dir, base_model(model).config.hidden_size))
    elif (config_dir / LATENT_ATTENTION_FILE).is_file():
        raise CheckpointError(
            f"{config_dir} was trained with latent-attention pooling (its head is "
            f"{LATENT_ATTENTION_FILE}); loading it with pooling_mode={pooling_mode or 'mean'!r} "
            "would drop the trained head: load it without pooling_mode, or with "
            "pooling_mode='latent_attention'"
        )


def resolve_base_dir(path: str | os.PathLike | None) -> Path:
    """The checkpoint directory of ``base_model_name_or_path``: the embedded default for None,
    a cached safetensors conversion for a ``.gguf`` file, else the directory itself."""
    if path is None:
        from llm2vec_fast.default_model import default_model_path

        return default_model_path()
    base_dir = Path(path)
    if not base_dir.exists():
        raise CheckpointError(
            f"model path {base_dir} does not exist (llm2vec-fast loads local paths only; "
            "there is no model hub here)"
        )
    if base_dir.is_file():
        if base_dir.suffix.lower() != ".gguf":
            raise CheckpointError(
                f"{base_dir} is a file; expected a checkpoint directory or a .gguf file"
            )
        base_dir = gguf_to_safetensors(base_dir)
    return base_dir


def load_tokenizer(base_dir: Path, base_weights_path=None):
    """The fast HF tokenizer of ``base_dir`` (else of ``base_weights_path``), padding on the
    left with the EOS token, as the official library sets it."""
    from transformers import AutoTokenizer

    for d in (base_dir, Path(base_weights_path) if base_weights_path else None):
        if d is not None and (
            (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()
        ):
            tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
            break
    else:
        raise CheckpointError(f"no tokenizer files (tokenizer.json) in {base_dir}")
    if not getattr(tok, "is_fast", False):
        raise CheckpointError(f"{d}: a fast (tokenizers) tokenizer is required")
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_base(base_dir: Path, base_weights_path, **kwargs):
    """The base encoder of a checkpoint directory, and its ``_name_or_path``.

    In the published LLM2Vec layout (config.json + an MNTP adapter, no weights) the adapter's
    base is loaded, from ``base_weights_path`` or a local ``base_model_name_or_path``, and the
    adapter is merged into it, as the official library does.
    """
    raw = read_json(base_dir / "config.json") if (base_dir / "config.json").is_file() else {}
    name_or_path = raw.get("_name_or_path", "")
    has_weights = any(is_weight_file(p) for p in base_dir.glob("*.safetensors"))
    if is_adapter_dir(base_dir) and not has_weights:
        adapter_cfg = read_json(base_dir / "adapter_config.json")
        base = base_weights_path or adapter_cfg.get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise CheckpointError(
                f"{base_dir} is an adapter whose base model is {adapter_cfg.get('base_model_name_or_path')!r}, "
                "which is not a local directory; pass base_weights_path= (the local base checkpoint)"
            )
        hf_config = load_hf_config(base_dir if raw else base)
        model = build_encoder(hf_config, read_state_dict(base), source=str(base), **kwargs)
        model = apply_adapter(model, base_dir, merge=True)
        return model, name_or_path
    return load_encoder(base_dir, **kwargs), name_or_path


def _abspath(path) -> str | None:
    return None if path is None else str(Path(path).resolve())
