"""Checkpoint files: HF safetensors directories (sharded or not), GGUF files, PEFT adapters.

Weights are read with safetensors only; a directory holding only pickled ``*.bin`` weights is
refused. Nothing is downloaded: every path is local. :mod:`llm2vec_fast.loading` builds an
encoder from these pieces.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from llm2vec_fast.model import EncoderModel, rope_tables

SAFE_INDEX = "model.safetensors.index.json"
# Bump when the files gguf_to_safetensors writes change, so stale caches are rebuilt.
GGUF_CACHE_FORMAT = 2
ADAPTER_CONFIG = "adapter_config.json"
# a latent-attention pooling head saved beside the weights or adapter (never a weight shard)
LATENT_ATTENTION_FILE = "latent_attention.safetensors"


def is_weight_file(path: Path) -> bool:
    """A ``*.safetensors`` file of the model's own weights: not a PEFT adapter's, not a
    latent-attention head's."""
    return not path.name.startswith("adapter_") and path.name != LATENT_ATTENTION_FILE


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
    files = sorted(p for p in d.glob("*.safetensors") if is_weight_file(p))
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
    inv_freq, _ = rope_tables(hf_config)
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
