"""The training loop for MNTP, SimCSE and supervised contrastive training.

One loop serves the three objectives: packed, padding-free batches through our encoder (the
Triton kernels with their backward passes on a GPU when ``attn_implementation="triton"``, the
torch path otherwise), LoRA through PEFT on the encoder's own module names (so the adapter is
what the official library saves and loads), AdamW over the LoRA weights, a linear / cosine /
constant schedule with warmup, gradient accumulation, gradient clipping, bf16 autocast,
gradient checkpointing, and data parallelism through accelerate (launch with ``torchrun`` or
``accelerate launch``; every rank reads its own batches, contrastive losses gather embeddings
across ranks).

Checkpoints (``OUTPUT/checkpoint-STEP/``: the adapter, optimizer and scheduler state, the RNG
states, the data position) are written every ``save_steps`` and at the end; ``resume=True``
continues from the newest one, replaying the data order and the random streams, so the loss
curve continues as if never stopped. Checkpoint tensors are saved with ``torch.save`` and read
with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

The objectives (their batches and losses) are :mod:`.objectives`, the checkpoints
:mod:`.checkpointing`; this module holds the settings, the model and the loop.

The recipes follow the official llm2vec ``experiments/run_mntp.py``, ``run_simcse.py`` and
``run_supervised.py`` with their ``train_configs``: see :class:`TrainConfig` for the defaults.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from llm2vec_fast.latent_attention import (
    LATENT_ATTENTION_FILE,
    LatentAttentionConfig,
    LatentAttentionHead,
    attach_head,
    head_of,
)
from llm2vec_fast.latent_attention import POOLING_MODE as LATENT_POOLING
from llm2vec_fast.loading import LoadSpec
from llm2vec_fast.options import POOLING_MODES
from llm2vec_fast.packing import PackedBatch
from llm2vec_fast.training.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    resume_state,
    save_checkpoint,
)
from llm2vec_fast.training.data import DataError, batches
from llm2vec_fast.training.objectives import OBJECTIVE_CLASSES, count_tokens, gradcache_loss

OBJECTIVES = ("mntp", "simcse", "supervised")
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCHEDULERS = ("linear", "cosine", "constant")

# the official train_configs (Sheared-LLaMA, Llama-2, Llama-3: mntp / simcse / supervised)
_DEFAULTS = {
    "mntp": dict(max_seq_length=512, batch_size=32, learning_rate=5e-5, warmup_steps=0),
    "simcse": dict(max_seq_length=128, batch_size=128, learning_rate=3e-5, warmup_steps=0),
    "supervised": dict(max_seq_length=512, batch_size=64, learning_rate=2e-4, warmup_steps=300),
}


@dataclass
class TrainConfig:
    """A training run. ``None`` fields take the objective's official default (``_DEFAULTS``).

    MNTP: ``mlm_probability`` 0.2 with 80/10/10 replacement (``all_mask``: every selected token
    becomes the mask token; the official Mistral recipe is ``all_mask`` at 0.8), mask token
    ``"_"``, LoRA r=16, alpha=32, dropout 0.05 on all projections. SimCSE: attention dropout
    0.3, in-batch InfoNCE at scale 20, LoRA on the merged MNTP model (``peft=[mntp_dir]``).
    Supervised: scale 50, instructions on queries only, 300 warmup steps.
    """

    objective: str
    data: str
    output: str
    model: str | None = None
    peft: list[str] = field(default_factory=list)
    base_weights: str | None = None
    text_column: str = "text"
    max_seq_length: int | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    warmup_steps: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    lora_modules: list[str] = field(default_factory=lambda: list(LORA_MODULES))
    mlm_probability: float = 0.2
    all_mask: bool = False
    mask_token: str = "_"
    attention_dropout: float | None = None
    loss_scale: float | None = None
    pooling_mode: str = "mean"
    latent_num_latents: int = 512
    latent_heads: int = 8
    latent_head_dim: int | None = None
    bidirectional: bool = True
    dtype: str = "float32"
    bf16: bool = False
    gradient_checkpointing: bool = False
    gradcache_chunk: int | None = None
    attn_implementation: str = "sdpa"
    device: str | None = None
    seed: int = 42
    shuffle_buffer: int = 10_000
    save_steps: int | None = 200
    logging_steps: int = 10
    resume: bool = False
    show_progress_bar: bool = True

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; use {', '.join(OBJECTIVES)}")
        for k, v in _DEFAULTS[self.objective].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_r
        if self.attention_dropout is None:
            self.attention_dropout = 0.3 if self.objective == "simcse" else 0.0
        if self.loss_scale is None:
            self.loss_scale = 20.0 if self.objective == "simcse" else 50.0
        if self.lr_scheduler not in SCHEDULERS:
            raise ValueError(f"unknown lr_scheduler {self.lr_scheduler!r}; use {SCHEDULERS}")
        for name in ("batch_size", "max_seq_length", "gradient_accumulation_steps", "lora_r"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive; got {self.max_steps}")
        if not 0.0 <= self.mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1]; got {self.mlm_probability}")
        if self.pooling_mode not in POOLING_MODES:
            raise ValueError(
                f"unknown pooling mode {self.pooling_mode!r}; use {', '.join(POOLING_MODES)}"
            )
        if self.objective == "mntp" and self.pooling_mode == LATENT_POOLING:
            raise ValueError(
                "MNTP trains no pooling; --pooling latent_attention applies to simcse and "
                "supervised (train the head on top of the MNTP adapter)"
            )
        self.latent_config()  # checks the head's settings now, not after loading the model
        if self.objective == "simcse" and self.batch_size < 2:
            raise ValueError("SimCSE needs at least 2 texts a batch (in-batch negatives)")

    def to_json(self) -> dict:
        return asdict(self)

    def latent_config(self) -> LatentAttentionConfig:
        """The shape of a new latent-attention head (``pooling_mode="latent_attention"``)."""
        return LatentAttentionConfig(
            num_latents=self.latent_num_latents,
            num_heads=self.latent_heads,
            head_dim=self.latent_head_dim,
        )


# ---------------------------------------------------------------------------------- model


def _resolve_model_dir(config: TrainConfig) -> Path:
    from llm2vec_fast.default_model import default_model_path
    from llm2vec_fast.loading import gguf_to_safetensors

    if config.model is None:
        return default_model_path()
    p = Path(config.model)
    if p.suffix == ".gguf":
        return gguf_to_safetensors(p)
    if not p.exists():
        raise DataError(f"model path {p} does not exist")
    return p


def lm_head_weight(model_dir: Path, encoder_model) -> torch.Tensor:
    """The LM head for MNTP: ``lm_head.weight`` from the checkpoint, or the input embeddings
    when they are tied (SmolLM2, Gemma)."""
    from safetensors import safe_open

    from llm2vec_fast.loading import weight_files

    for f in weight_files(model_dir):
        with safe_open(str(f), framework="pt") as fh:
            if "lm_head.weight" in fh.keys():
                w = fh.get_tensor("lm_head.weight")
                emb = encoder_model.embed_tokens.weight
                return w.to(device=emb.device, dtype=emb.dtype)
    return encoder_model.embed_tokens.weight


def build_model(config: TrainConfig):
    """The LLM2Vec encoder (earlier adapters merged) with a fresh trainable LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    from llm2vec_fast.encoder import LLM2Vec

    model_dir = _resolve_model_dir(config)
    # latent-attention pooling: the head the last adapter was trained with, or a new one
    config_dir = Path(config.peft[-1]) if config.peft else model_dir
    new_head = (
        config.pooling_mode == LATENT_POOLING and not (config_dir / LATENT_ATTENTION_FILE).is_file()
    )
    spec = LoadSpec.from_options(
        config,  # peft, base_weights, dtype, attn_implementation
        base_model_name_or_path=str(model_dir),
        pooling_mode="mean" if new_head else config.pooling_mode,
        max_length=config.max_seq_length,
        enable_bidirectional=config.bidirectional,
    )
    enc = LLM2Vec.from_pretrained(**spec.kwargs(), device=config.device)
    if new_head:
        attach_head(enc.model, LatentAttentionHead(enc.config.hidden_size, config.latent_config()))
        enc.pooling_mode = LATENT_POOLING
    base = enc.model
    base.attention_dropout = float(config.attention_dropout)
    base.gradient_checkpointing = bool(config.gradient_checkpointing)
    for p in base.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        target_modules=list(config.lora_modules),
        lora_dropout=config.lora_dropout,
        bias="none",
        task_type=None,
    )
    enc.model = get_peft_model(base, lora)
    pooling_head = head_of(enc.model)
    if pooling_head is not None:  # trained with the adapter (PEFT froze it), in float32 as
        pooling_head.float().requires_grad_(True)  # PEFT keeps LoRA weights over a bf16 base
    head = lm_head_weight(model_dir, base) if config.objective == "mntp" else None
    return enc, head


# ---------------------------------------------------------------------------------- the loop


def _schedule(optimizer, name: str, warmup: int, total: int):
    from transformers import get_scheduler

    kind = {"constant": "constant_with_warmup"}.get(name, name)
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=max(total, 1))


def train(config: TrainConfig) -> dict:
    """Run (or resume) a training run; returns a summary (steps, final loss, tokens/s, peak
    memory, output directory). The trained adapter, ``llm2vec_config.json`` and the tokenizer
    are written to ``config.output``; ``train_log.jsonl`` there holds the loss curve. Resuming a
    finished run (its newest checkpoint at the last step) trains nothing and writes nothing: the
    summary then has ``already_complete`` set and the finished run's steps and losses."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    output = Path(config.output)
    # accelerate's state is one per process: no per-run settings (precision, device) go into it,
    # so train() can run several times in one process; bf16 autocast is applied here
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun / accelerate launch
    cpu_ranks = launched and (config.device == "cpu" or not torch.cuda.is_available())
    accelerator = Accelerator(cpu=True) if cpu_ranks else Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    if world > 1:
        config.device = str(accelerator.device)
    torch.manual_seed(config.seed + rank)
    enc, head = build_model(config)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    objective = OBJECTIVE_CLASSES[config.objective](enc, config, head, generator)
    model = enc.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    accum = config.gradient_accumulation_steps
    if config.max_steps is not None:
        total_steps = config.max_steps
    else:
        n_items = sum(1 for _ in objective.items())
        if n_items == 0:
            raise DataError(f"{config.data} holds no usable examples")
        per_epoch = math.ceil(n_items / config.batch_size / world / accum)
        total_steps = max(1, math.ceil(per_epoch * (config.epochs or 1.0)))
    scheduler = _schedule(optimizer, config.lr_scheduler, config.warmup_steps, total_steps)

    step, tokens_done, log_rows = 0, 0, []
    ck = latest_checkpoint(output) if config.resume else None
    if config.resume and ck is None and output.exists() and any(output.iterdir()):
        raise DataError(f"--resume: {output} holds no checkpoint-* directory to resume from")
    if not config.resume and output.exists() and latest_checkpoint(output) is not None:
        raise DataError(
            f"{output} already holds checkpoints; pass --resume to continue, or use a new "
            "output directory"
        )
    if ck is not None:
        state = resume_state(ck, config)  # refuses changed settings or data
        if state["step"] >= total_steps:
            # a finished run (its last checkpoint is the final step): nothing to train, and
            # nothing is written, so a rerun with --resume leaves the output as it was
            log = state["log"]
            return {
                "output": str(output),
                "steps": state["step"],
                "final_loss": log[-1]["loss"] if log else float("nan"),
                "losses": [r["loss"] for r in log],
                "tokens_this_run": 0,
                "seconds_this_run": 0.0,
                "tokens_per_second": 0.0,
                "peak_memory_bytes": None,
                "resumed_from": str(ck),
                "already_complete": True,
                "world_size": world,
                "is_main_process": accelerator.is_main_process,
            }
        step, tokens_done, log_rows = load_checkpoint(
            ck, config, model, optimizer, scheduler, generator
        )
    # the scheduler is stepped here once per optimizer step (accelerate's wrapper would step it
    # once per process)
    if world > 1:  # DDP; one process trains on the device the model was built on
        model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    enc.model = accelerator.unwrap_model(model)
    objective.enc = enc
    runner = _ModelRunner(model)
    objective.forward = runner.bind(objective)

    stream = batches(
        objective.items,
        config.batch_size,
        seed=config.seed,
        shuffle_buffer=config.shuffle_buffer,
        rank=rank,
        world_size=world,
        skip=step * accum,
        drop_last=world > 1,
    )
    device = enc.runner.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    output.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (output / "train_config.json").write_text(json.dumps(config.to_json(), indent=1) + "\n")
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc=f"train {config.objective}",
        disable=not (config.show_progress_bar and accelerator.is_main_process),
    )
    t0, tokens_run, last_loss = time.perf_counter(), 0, float("nan")
    while step < total_steps:
        step_loss, step_tokens = 0.0, 0
        for micro in range(accum):
            epoch, items = next(stream)
            if config.gradcache_chunk and config.objective != "mntp":
                pairs = objective.pairs(items)
                with autocast:
                    loss = gradcache_loss(
                        objective,
                        pairs,
                        config.gradcache_chunk,
                        lambda t: accelerator.backward(t / accum),
                    )
                step_tokens += count_tokens(objective, pairs)
            else:
                packed = objective.prepare(items).to(device, non_blocking=True)
                # gradients are all-reduced on the last micro-batch only
                sync = micro == accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    with autocast:
                        loss = objective.loss(packed)
                    accelerator.backward(loss / accum)
                step_tokens += packed.n_tokens
            step_loss += float(loss.detach()) / accum
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_run += step_tokens * world
        tokens_done += step_tokens * world
        last_loss = step_loss
        elapsed = time.perf_counter() - t0
        row = {
            "step": step,
            "epoch": epoch,
            "loss": step_loss,
            "lr": scheduler.get_last_lr()[0],
            "tokens": tokens_done,
        }
        log_rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_run / max(elapsed, 1e-9):,.0f}")
        if accelerator.is_main_process:
            with open(output / "train_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        if config.save_steps and step % config.save_steps == 0 and step < total_steps:
            save_checkpoint(
                accelerator, output / f"checkpoint-{step}", enc, optimizer, scheduler, generator,
                step, tokens_done, log_rows, config,
            )  # fmt: skip
    bar.close()
    seconds = time.perf_counter() - t0
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(
            accelerator, output / f"checkpoint-{step}", enc, optimizer, scheduler, generator,
            step, tokens_done, log_rows, config,
        )  # fmt: skip
        enc.save(str(output), official_format=False)  # only a latent-attention head needs it
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "output": str(output),
        "steps": step,
        "final_loss": last_loss,
        "losses": [r["loss"] for r in log_rows],
        "tokens_this_run": tokens_run,
        "seconds_this_run": seconds,
        "tokens_per_second": tokens_run / max(seconds, 1e-9),
        "peak_memory_bytes": peak,
        "resumed_from": str(ck) if ck else None,
        "already_complete": False,
        "world_size": world,
        "is_main_process": accelerator.is_main_process,
    }


class _ModelRunner:
    """Calls the model (DDP-wrapped by accelerate on several ranks)
    for an objective's forward pass."""

    def __init__(self, model):
        self.model = model

    def bind(self, objective):
        def forward(packed: PackedBatch) -> torch.Tensor:
            return self.model(
                packed.input_ids, packed.cu_seqlens, packed.position_ids, packed.max_seqlen
            )

        return forward


def config_fields() -> list[str]:
    return [f.name for f in fields(TrainConfig)]
