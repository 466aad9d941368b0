"""Checkpoint helpers of the golden fixtures and the README test: a random LoRA adapter, the
published LLM2Vec layout (adapter beside the base's config and tokenizer), tensor hashes."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil


def make_tiny_lora(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int,
    target_modules: tuple[str, ...] | list[str] = ("q_proj", "v_proj", "gate_proj", "down_proj"),
    *,
    r: int = 4,
    lora_alpha: int = 8,
    scale: float = 0.1,
    base_model_name_or_path: str | None = None,
) -> pathlib.Path:
    """Write a PEFT LoRA adapter with random A and B (B is zero at PEFT's init) for the
    checkpoint ``model_dir`` into ``out_dir``; return ``out_dir``.

    Made with peft on llm2vec-fast's encoder (module names as HF's base models, so the
    official stack loads it onto its ``*BiModel`` too). The LoRA tensors are drawn from
    ``torch.Generator().manual_seed(seed)`` (``N(0, scale^2)``) in sorted parameter-name
    order, so the tensors depend only on the arguments. ``base_model_name_or_path``
    overrides what adapter_config.json names as the base (default: ``model_dir``).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from llm2vec_fast import LLM2Vec

    enc = LLM2Vec.from_pretrained(model_dir, device="cpu").model
    cfg = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules))
    peft_model = get_peft_model(enc, cfg)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in peft_model.named_parameters() if "lora_" in n):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * scale)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    acfg_path = out / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text(encoding="utf-8"))
    acfg["base_model_name_or_path"] = (
        str(model_dir) if base_model_name_or_path is None else base_model_name_or_path
    )
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def tensors_sha256(path: str | os.PathLike) -> str:
    """A hash of a safetensors file's tensors (names, dtypes, shapes, bytes), not of its
    metadata: peft versions differ in what they write there."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def make_published_layout(
    adapter_dir: str | os.PathLike, base_dir: str | os.PathLike, name_or_path: str
) -> pathlib.Path:
    """Turn a LoRA adapter directory into the published LLM2Vec layout: the base checkpoint's
    config.json (with ``_name_or_path`` set, which the official prompt wrapping keys on) and its
    tokenizer files beside the adapter, no weights. Returns the directory."""
    d, base = pathlib.Path(adapter_dir), pathlib.Path(base_dir)
    cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
    cfg["_name_or_path"] = name_or_path
    (d / "config.json").write_text(
        json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(base / f, d / f)
    return d
