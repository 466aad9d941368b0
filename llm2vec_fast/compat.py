"""Writing checkpoints that both transformers 5.x (ours) and the official llm2vec stack
(transformers 4.44, tokenizers 0.19) read the same way.

Each rule here was found the hard way:

- config.json: 5.x writes rope settings as ``rope_parameters``; 4.44 reads ``rope_theta`` (and
  ``rope_scaling``) and silently falls back to 10000 without it, so both are written.
  ``_name_or_path``, which the official prompt wrapping keys on, is kept.
- tokenizer.json: tokenizers 0.23 stores BPE merges as pairs; 0.19 reads only ``"a b"`` strings,
  which 0.23 also reads.
- adapter_config.json: peft 0.12 (the official stack) refuses keys that newer peft writes
  (``alora_invocation_tokens`` ...); those holding inert defaults are dropped.
- tokenizer_config.json: 4.44 does not know the ``TokenizersBackend`` class 5.x writes;
  ``PreTrainedTokenizerFast`` works in both, and ``model_input_names`` keeps 4.44 from passing
  ``token_type_ids`` to the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _dump(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def config_dict(hf_config, name_or_path: str | None = None) -> dict:
    """``hf_config`` as a config.json dict readable by transformers 4.44 and 5.x."""
    d = hf_config.to_dict()
    d.pop("transformers_version", None)
    # a GGUF-loaded config says "quantization_config: gguf"; the weights we write are
    # dequantised, and transformers 4.44 refuses the unknown quantisation type
    d.pop("quantization_config", None)
    rope = d.get("rope_parameters") or {}
    if "rope_theta" in rope:
        d["rope_theta"] = rope["rope_theta"]
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" and not d.get("rope_scaling"):
        d["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if name_or_path is None:
        name_or_path = getattr(hf_config, "_name_or_path", "") or ""
    d["_name_or_path"] = name_or_path
    d.setdefault("torch_dtype", "float32")
    return d


def write_config(hf_config, out_dir: str | os.PathLike, name_or_path: str | None = None) -> Path:
    path = Path(out_dir) / "config.json"
    _dump(config_dict(hf_config, name_or_path), path)
    return path


def make_tokenizer_files_compatible(out_dir: str | os.PathLike) -> None:
    """Rewrite a saved tokenizer's files so tokenizers 0.19 / transformers 4.44 read them too."""
    d = Path(out_dir)
    tj = d / "tokenizer.json"
    data = json.loads(tj.read_text(encoding="utf-8"))
    model = data.get("model", {})
    merges = model.get("merges")
    if merges and isinstance(merges[0], list):
        if any(" " in a or " " in b for a, b in merges):
            raise ValueError(
                "a BPE merge contains a space; it cannot be written in the legacy form"
            )
        model["merges"] = [f"{a} {b}" for a, b in merges]
    with open(tj, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    tc = d / "tokenizer_config.json"
    cfg = json.loads(tc.read_text(encoding="utf-8")) if tc.is_file() else {}
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_input_names"] = ["input_ids", "attention_mask"]
    _dump(cfg, tc)


def write_tokenizer(tokenizer, out_dir: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained(out_dir)``, then made readable by the official stack."""
    tokenizer.save_pretrained(str(out_dir))
    make_tokenizer_files_compatible(out_dir)


# LoraConfig fields of peft 0.12.0, the version the official llm2vec 0.2.3 stack runs.
_PEFT_012_LORA_FIELDS = frozenset(
    "alpha_pattern auto_mapping base_model_name_or_path bias fan_in_fan_out inference_mode "
    "init_lora_weights layer_replication layers_pattern layers_to_transform loftq_config "
    "lora_alpha lora_dropout megatron_config megatron_core modules_to_save peft_type r "
    "rank_pattern revision runtime_config target_modules task_type use_dora use_rslora".split()
)


def make_adapter_config_compatible(adapter_dir: str | os.PathLike) -> list[str]:
    """Drop adapter_config.json keys peft 0.12 does not know, when they hold inert defaults
    (None, False, empty, or version metadata). Returns the dropped keys; raises ValueError
    naming any key that carries a setting peft 0.12 cannot honour."""
    path = Path(adapter_dir) / "adapter_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("peft_type") != "LORA":
        return []
    extra = {k: v for k, v in cfg.items() if k not in _PEFT_012_LORA_FIELDS}

    def inert(key, value):
        if value in (None, False, [], {}) or key == "peft_version":
            return True
        return key == "qalora_group_size" and not cfg.get("use_qalora")

    live = {k: v for k, v in extra.items() if not inert(k, v)}
    if live:
        raise ValueError(f"{path}: settings the official stack (peft 0.12) cannot honour: {live}")
    _dump({k: v for k, v in cfg.items() if k in _PEFT_012_LORA_FIELDS}, path)
    return sorted(extra)


def save_checkpoint(model, tokenizer, out_dir: str | os.PathLike, name_or_path: str = "") -> None:
    """Write ``model`` and ``tokenizer`` as a checkpoint directory both libraries load: a
    ``PeftModel`` as its adapter only (as the official library saves it), else config.json
    (``_name_or_path`` kept) and model.safetensors; the tokenizer files either way."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if type(model).__name__.startswith("Peft"):
        model.save_pretrained(str(out), safe_serialization=True)
        make_adapter_config_compatible(out)
    else:
        # a latent-attention head is saved beside the weights, not in them (latent_attention.py)
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in model.state_dict().items()
            if not k.startswith("latent_attention.")
        }
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        write_config(model.config, out, name_or_path=name_or_path)
    write_tokenizer(tokenizer, out)


def save_encoder(model, tokenizer, out_dir, name_or_path, settings: dict | None, *,
                 official_format: bool = True) -> None:  # fmt: skip
    """``LLM2Vec.save``: :func:`save_checkpoint`, then ``llm2vec_config.json`` with ``settings``
    (None: not written). A model with a latent-attention head is refused while
    ``official_format``: the official library cannot read the head. Otherwise the head goes to
    ``latent_attention.safetensors`` and its shape into the config (llm2vec-fast only)."""
    from llm2vec_fast.latent_attention import POOLING_MODE, head_of, save_head

    head = head_of(model)
    if head is not None and official_format:
        raise ValueError(
            "this encoder pools with a latent-attention head, which the official llm2vec "
            "library cannot read (it would load the directory and pool without it); "
            "save(..., official_format=False) writes it for llm2vec-fast only"
        )
    out = Path(out_dir)
    save_checkpoint(model, tokenizer, out, name_or_path)
    if head is not None:
        save_head(head, out)
    if settings is not None:
        config = dict(settings)
        if head is not None:
            config[POOLING_MODE] = head.config.to_json()
        with open(out / "llm2vec_config.json", "w", encoding="utf-8") as f:
            json.dump(config, f, indent=4)
