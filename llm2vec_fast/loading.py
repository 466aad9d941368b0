"""Loading checkpoints: HF safetensors directories (sharded or not), GGUF files, PEFT adapters.

Weights are read with safetensors only; a directory holding only pickled ``*.bin`` weights is
refused. Nothing is downloaded: every path is local.

:class:`LoadSpec` names everything an encoder is loaded from (paths, adapters, dtype, the
encoder settings); :func:`load` turns one into a model and its tokenizer. ``LLM2Vec``, the
worker processes of several devices, the command line, the batch job and training all build
their encoders from a ``LoadSpec``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llm2vec_fast.devices import resolve_dtype
from llm2vec_fast.model import EncoderModel, _rope_tables

SAFE_INDEX = "model.safetensors.index.json"
# Bump when the files gguf_to_safetensors writes change, so stale caches are rebuilt.
GGUF_CACHE_FORMAT = 2
ADAPTER_CONFIG = "adapter_config.json"
LLM2VEC_CONFIG = "llm2vec_config.json"
# The encoder settings llm2vec_config.json holds (and from_pretrained overrides).
ENCODER_ARGS = ("pooling_mode", "max_length", "doc_max_length", "skip_instruction")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or of an unsupported kind."""


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint directory (all shards, index order)."""
    d = Path(path)
    index = d / SAFE_INDEX
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise CheckpointError(f"{d}: shards named in {SAFE_INDEX} are missing: {missing}")
        return [d / s for s in shards]
    files = sorted(p for p in d.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if files:
        return files
    pickled = sorted(p.name for p in d.glob("*.bin")) + sorted(p.name for p in d.glob("*.pt"))
    if pickled:
        raise CheckpointError(
            f"{d} holds only pickled weights ({', '.join(pickled)}); llm2vec-fast loads "
            "safetensors only (pickle can run arbitrary code). Convert them once with "
            "transformers: AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    raise CheckpointError(f"{d} contains no model weights (no *.safetensors file)")


def _hf_name(key: str) -> str | None:
    """Map a checkpoint key to our parameter name, or None to skip it."""
    if key.startswith("lm_head.") or key.endswith("rotary_emb.inv_freq"):
        return None
    if key.startswith("model."):
        key = key[len("model.") :]
    return key


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory under our parameter names (CPU)."""
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    name = _hf_name(key)
                    if name is not None:
                        state[name] = st.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"cannot read {f}: corrupt or truncated safetensors file ({e})"
            ) from e
    return state


def load_hf_config(path: str | os.PathLike):
    """The transformers config of a local checkpoint directory (never remote code)."""
    from transformers import AutoConfig

    d = Path(path)
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d} has no config.json")
    try:
        return AutoConfig.from_pretrained(str(d), trust_remote_code=False)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read {d / 'config.json'}: {e}") from e


def build_encoder(
    hf_config,
    state: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    causal: bool = False,
    source: str = "checkpoint",
) -> EncoderModel:
    """An :class:`EncoderModel` for ``hf_config`` holding ``state`` (cast to ``dtype``)."""
    with torch.device("meta"):
        model = EncoderModel(hf_config, attn_implementation=attn_implementation, causal=causal)
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source} lacks weights: {', '.join(missing[:5])}{more}")
    for name, p in expected.items():
        t = state[name]
        if tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(
                f"{source}: weight {name} has shape {tuple(t.shape)}, the config implies {tuple(p.shape)}"
            )
    model.load_state_dict({k: state[k].to(dtype) for k in expected}, strict=False, assign=True)
    inv_freq, _ = _rope_tables(hf_config)
    model.inv_freq = inv_freq
    return model.eval()


def load_encoder(path: str | os.PathLike, **kwargs) -> EncoderModel:
    """Load a local HF checkpoint directory as an :class:`EncoderModel` (see :func:`build_encoder`)."""
    d = Path(path)
    if not d.exists():
        raise CheckpointError(f"model path {d} does not exist")
    if not d.is_dir():
        raise CheckpointError(f"model path {d} is not a directory")
    return build_encoder(load_hf_config(d), read_state_dict(d), source=str(d), **kwargs)


# ----------------------------------------------------------------------------- PEFT adapters


def apply_adapter(model: torch.nn.Module, adapter_dir: str | os.PathLike, merge: bool):
    """Load a PEFT LoRA adapter onto ``model``; merged into the weights when ``merge``.

    Returns the model to run: the merged base model, or the ``PeftModel`` wrapper.
    """
    from peft import PeftModel

    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{d} is not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    if not (d / "adapter_model.safetensors").is_file():
        if (d / "adapter_model.bin").is_file():
            raise CheckpointError(
                f"{d} holds a pickled adapter (adapter_model.bin); only safetensors adapters are loaded"
            )
        raise CheckpointError(f"{d} has no adapter_model.safetensors")
    try:
        with safe_open(str(d / "adapter_model.safetensors"), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {d / 'adapter_model.safetensors'}: {e}") from e
    peft_model = PeftModel.from_pretrained(model, str(d), is_trainable=False)
    if merge:
        return peft_model.merge_and_unload()
    return peft_model


# ----------------------------------------------------------------------------- GGUF


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$LLM2VEC_FAST_CACHE``, else ``~/.cache/llm2vec_fast``."""
    env = os.environ.get("LLM2VEC_FAST_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llm2vec_fast"


def gguf_to_safetensors(gguf_file: str | os.PathLike, name_or_path: str | None = None) -> Path:
    """Dequantise a GGUF file once into a cached safetensors checkpoint directory; return it.

    The cache key is the file's absolute path, size and modification time (and the cache format),
    so a changed file is converted again. The directory is built under a temporary name and renamed when complete.
    """
    src = Path(gguf_file)
    if not src.is_file():
        raise CheckpointError(f"GGUF file {src} does not exist")
    st = src.stat()
    ident = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{GGUF_CACHE_FORMAT}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:12]
    out = cache_dir() / f"{src.stem}-{key}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{src.stem}-", dir=out.parent))
    try:
        _convert_gguf(src, tmp, name_or_path)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def _gguf_bar_follows_transformers():
    """transformers draws its "Converting and de-quantizing GGUF tensors..." bar with plain
    tqdm, outside its own switch (``transformers.utils.logging.disable_progress_bar()``, which
    ``llm2vec-fast -q`` sets); while that switch is off, the bar is off too."""
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    if hf_logging.is_progress_bar_enabled() or not hasattr(gguf_utils, "tqdm"):
        yield
        return
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _convert_gguf(src: Path, out: Path, name_or_path: str | None) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm2vec_fast.compat import write_config, write_tokenizer

    try:
        with _gguf_bar_follows_transformers():
            hf = AutoModelForCausalLM.from_pretrained(
                str(src.parent), gguf_file=src.name, dtype=torch.float32
            )
            tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as e:  # gguf raises a zoo of types on bad files
        raise CheckpointError(f"cannot read GGUF file {src}: {type(e).__name__}: {e}") from e
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    state = {
        k: v.contiguous()
        for k, v in hf.state_dict().items()
        if not (tied and k.startswith("lm_head."))
    }
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_config(hf.config, out, name_or_path=name_or_path or src.stem)
    write_tokenizer(tok, out)


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
    tokenizer = load_tokenizer(base_dir, spec.base_weights_path)
    return Loaded(model, tokenizer, name_or_path, replace(spec, **settings), settings)


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
    has_weights = any(base_dir.glob("*.safetensors")) and not all(
        p.name.startswith("adapter_") for p in base_dir.glob("*.safetensors")
    )
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


def is_peft(model) -> bool:
    """True for a PEFT wrapper (``PeftModel``) around the encoder."""
    return type(model).__name__.startswith("Peft")


def base_model(model):
    """The encoder inside a PEFT wrapper, or the model itself."""
    return model.get_base_model() if is_peft(model) else model


def _abspath(path) -> str | None:
    return None if path is None else str(Path(path).resolve())
