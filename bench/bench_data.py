"""The benchmarks' shared inputs: texts (gensim's corpora: news articles, their sentences,
MNTP pieces) and random-weight checkpoints of the preset shapes over a real tokenizer."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

PRESETS = {
    # princeton-nlp/Sheared-LLaMA-1.3B
    "sheared-llama-1.3b": {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 128,
        "intermediate_size": 5504,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    # mistralai/Mistral-7B-Instruct-v0.2's shape (GQA 32/8, MLP 14336)
    "mistral-7b": {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    },
    # the embedded default's shape (SmolLM2-135M), random weights
    "smollm2-135m": {},
}


# ---------------------------------------------------------------------------------- data


def gensim_data() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this benchmark needs gensim (pip install gensim) for its texts")
    return Path(spec.submodule_search_locations[0]) / "test" / "test_data"


def read_articles(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_sentences(articles: list[str]) -> list[str]:
    out = []
    for a in articles:
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", a) if s.strip()]
    return out


def mntp_pieces(articles: list[str], tokenizer, max_len: int) -> list[str]:
    """The articles joined into one text (as ``group_texts`` joins them) and cut at token
    boundaries into pieces of ``max_len`` tokens, each as it re-tokenizes on its own (a cut
    that re-tokenizes longer is moved back a token), so a piece is one official block."""
    corpus = " ".join(articles)
    offsets = tokenizer(corpus, return_offsets_mapping=True, add_special_tokens=False)[
        "offset_mapping"
    ]
    pieces, start = [], 0
    while start < len(offsets):
        end = min(start + max_len, len(offsets))
        while True:
            text = corpus[offsets[start][0] : offsets[end - 1][1]].strip()
            n = len(tokenizer(text)["input_ids"]) if text else 0
            if n <= max_len or end - start <= 1:
                break
            end -= 1
        if text:
            pieces.append(text)
        start = end
    return pieces


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(s.replace("\n", " ") + "\n" for s in lines), encoding="utf-8")
    return path


def tokenizer_and_articles(assets: str | None, model: str | None = None) -> tuple[Path, Path]:
    """The tokenizer's directory and the articles file: from a folder written by
    ``bench_training.py --export-assets``, else ``model`` (default: the embedded SmolLM2-135M)
    and gensim's lee_background.cor."""
    if assets:
        return Path(assets) / "tokenizer", Path(assets) / "lee_background.cor"
    from llm2vec_fast.default_model import default_model_path

    tok_dir = Path(model) if model else default_model_path()
    return tok_dir, gensim_data() / "lee_background.cor"


# ---------------------------------------------------------------------------------- models


def truncated_tokenizer_files(src: Path, out: Path, vocab_size: int) -> None:
    """Copy a byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json) to ``out``,
    keeping only the ids below ``vocab_size`` and the merges that stay inside them."""
    out.mkdir(parents=True, exist_ok=True)
    data = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if len(model["vocab"]) > vocab_size:
        if model.get("type") != "BPE":
            raise SystemExit(f"cannot cut a {model.get('type')} tokenizer to {vocab_size} ids")
        vocab = {t: i for t, i in model["vocab"].items() if i < vocab_size}
        merges = []
        for m in model["merges"]:
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            if a in vocab and b in vocab and a + b in vocab:
                merges.append(f"{a} {b}")
        model["vocab"], model["merges"] = vocab, merges
        data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < vocab_size]
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)


def random_checkpoint(spec: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A random-weight checkpoint (bfloat16 safetensors) of a preset shape or of a JSON file
    of config.json keys over the tokenizer directory's config.json, readable by transformers
    4.44 and 5.x (both rope keys written)."""
    import torch
    from safetensors.torch import save_file

    overrides = (
        PRESETS[spec] if spec in PRESETS else json.loads(Path(spec).read_text(encoding="utf-8"))
    )
    base = json.loads((tokenizer_dir / "config.json").read_text(encoding="utf-8"))
    cfg = {**base, **overrides}
    cfg["head_dim"] = overrides.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    theta = float(cfg.get("rope_theta", 10000.0))
    cfg["rope_theta"] = theta
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    cfg["rope_scaling"] = None
    cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"
    cfg["_name_or_path"] = f"random-{spec if spec in PRESETS else Path(spec).stem}"
    cfg.setdefault("architectures", ["LlamaForCausalLM"])
    if not cfg.get("architectures"):
        cfg["architectures"] = ["LlamaForCausalLM"]
    h, i, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (nq, h),
            p + "self_attn.k_proj.weight": (nkv, h),
            p + "self_attn.v_proj.weight": (nkv, h),
            p + "self_attn.o_proj.weight": (h, nq),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=gen)
            weights[name] = t.to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    truncated_tokenizer_files(tokenizer_dir, out, int(cfg["vocab_size"]))
    return out
