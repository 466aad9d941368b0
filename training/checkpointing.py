"""Training checkpoints: ``OUTPUT/checkpoint-STEP/`` with the adapter, the optimizer and
scheduler states, the random states and ``trainer_state.json``; resuming checks that the
settings and the data are those of the run. Tensors are saved with ``torch.save`` and read
with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm2vec_fast.latent_attention import head_of, read_head
from llm2vec_fast.shard_files import write_json_atomic
from llm2vec_fast.training.data import DataError, data_fingerprint


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete ``checkpoint-STEP`` directory under ``output`` (None if none)."""
    cks = sorted(
        (p for p in output.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return cks[-1] if cks else None


def rng_state(generator) -> dict[str, torch.Tensor]:
    """The random states a resumed run restores: torch's, the data generator's, CUDA's."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def save_checkpoint(accelerator, path: Path, enc, optimizer, scheduler, generator, step,
                     tokens, log_rows, config) -> None:  # fmt: skip
    """Write ``path``: the adapter, optimizer, scheduler and random states, and
    ``trainer_state.json`` (step, tokens, loss log, settings, data fingerprint) last."""
    path.mkdir(parents=True, exist_ok=True)
    enc.save(str(path), official_format=False)  # with a latent-attention head, if any
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    torch.save(rng_state(generator), path / "rng.pt")
    state = {
        "step": step,
        "tokens": tokens,
        "log": log_rows,
        "config": config.to_json(),
        "data": data_fingerprint(config.data),
    }
    write_json_atomic(path / "trainer_state.json", state)


RESUME_KEYS = (
    "objective", "model", "peft", "base_weights", "max_seq_length", "batch_size",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "warmup_steps", "max_steps",
    "lora_r", "lora_alpha", "lora_dropout", "lora_modules", "mlm_probability", "all_mask",
    "mask_token", "attention_dropout", "loss_scale", "pooling_mode", "latent_num_latents",
    "latent_heads", "latent_head_dim", "bidirectional", "seed", "shuffle_buffer",
)  # fmt: skip


def resume_state(path: Path, config) -> dict:
    """A checkpoint's ``trainer_state.json``, after checking that ``config`` may resume from it
    (the same settings and data)."""
    state = json.loads((path / "trainer_state.json").read_text())
    old = state["config"]
    diffs = [k for k in RESUME_KEYS if old.get(k) != getattr(config, k)]
    if diffs:
        raise DataError(
            f"cannot resume from {path}: settings differ ({', '.join(diffs)}); use the same "
            "settings, or a new output directory"
        )
    if state["data"] != data_fingerprint(config.data):
        raise DataError(f"cannot resume from {path}: the training data changed")
    return state


def load_checkpoint(path: Path, config, model, optimizer, scheduler, generator):
    """Restore a checkpoint into the run; returns its (step, tokens, loss log)."""
    from safetensors.torch import load_file

    state = resume_state(path, config)
    adapter = load_file(str(path / "adapter_model.safetensors"))
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, adapter)
    head = head_of(model)
    if head is not None:  # the latent-attention head as trained so far
        head.load_state_dict(read_head(path, head.hidden_size).state_dict())
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["generator"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return state["step"], state["tokens"], state["log"]
