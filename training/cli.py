"""``llm2vec-fast train mntp|simcse|supervised``: the command line of :mod:`.trainer`
(imported lazily by ``llm2vec_fast.cli``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm2vec_fast.options import POOLING_MODES, add_subcommand

TRAIN_HELP = """\
Train an LLM2Vec encoder with LoRA: MNTP (masked next token prediction), SimCSE (unsupervised
contrastive, the same text under two dropout masks), or supervised contrastive training on
(query, positive, hard negatives) triples.

The recipe of the paper on the default model:
  llm2vec-fast train mntp --data corpus.txt --output out/mntp --max-steps 1000
  llm2vec-fast train simcse --data corpus.txt --output out/simcse --peft out/mntp
  llm2vec-fast embed texts.txt -o emb.npy --peft out/mntp --peft out/simcse

Unset options take the official recipe's value (run_mntp.py / run_simcse.py /
run_supervised.py train_configs): MNTP 32 x 512 tokens, lr 5e-5, mask probability 0.2 with
80/10/10 replacement, mask token "_"; SimCSE 128 x 128, lr 3e-5, attention dropout 0.3, scale
20; supervised 64 x 512, lr 2e-4, 300 warmup steps, scale 50. LoRA r=16, alpha=32, dropout
0.05 on q,k,v,o,gate,up,down. Several GPUs: torchrun --nproc-per-node N -m llm2vec_fast.cli
train ... (or accelerate launch).
"""

# (flag, TrainConfig field, type, help)
_OPTIONS = [
    ("--text-column", "text_column", str, 'the text field of .jsonl data (default "text")'),
    ("--max-seq-length", "max_seq_length", int, "tokens per text (default: the recipe's)"),
    ("--batch-size", "batch_size", int, "texts (MNTP, SimCSE) or triples a batch"),
    ("--gradient-accumulation-steps", "gradient_accumulation_steps", int, "batches a step"),
    ("--learning-rate", "learning_rate", float, "peak learning rate"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (default 0)"),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps"),
    ("--max-steps", "max_steps", int, "optimizer steps (the official stop_after_n_steps)"),
    ("--epochs", "epochs", float, "passes over the data when --max-steps is not given"),
    ("--max-grad-norm", "max_grad_norm", float, "gradient clipping (default 1.0; 0: off)"),
    ("--lora-r", "lora_r", int, "LoRA rank (default 16)"),
    ("--lora-alpha", "lora_alpha", int, "LoRA alpha (default 2 x r)"),
    ("--lora-dropout", "lora_dropout", float, "LoRA dropout (default 0.05)"),
    ("--mlm-probability", "mlm_probability", float, "MNTP: share of tokens masked (0.2)"),
    ("--mask-token", "mask_token", str, 'MNTP: the mask token when the tokenizer has none ("_")'),
    ("--attention-dropout", "attention_dropout", float, "attention-probability dropout"),
    ("--loss-scale", "loss_scale", float, "contrastive scale (1 / temperature)"),
    ("--gradcache-chunk", "gradcache_chunk", int, "contrastive: GradCache chunk of texts"),
    ("--dtype", "dtype", str, "base weights: float32 (default) or bfloat16"),
    ("--attn-implementation", "attn_implementation", str, "sdpa (default), eager or triton"),
    ("--device", "device", str, "cpu, cuda, cuda:1 ... (default: accelerate's choice)"),
    ("--seed", "seed", int, "seed of the data order, masking, dropout (default 42)"),
    ("--shuffle-buffer", "shuffle_buffer", int, "shuffle buffer in items (default 10000)"),
    ("--save-steps", "save_steps", int, "checkpoint every N steps (default 200)"),
    ("--base-weights", "base_weights", str, "local base for a published adapter layout"),
    ("--latent-num-latents", "latent_num_latents", int, "latent_attention: latents (512)"),
    ("--latent-heads", "latent_heads", int, "latent_attention: heads (8)"),
    ("--latent-head-dim", "latent_head_dim", int, "latent_attention: head width (hidden size)"),
]


def add_train_parser(sub) -> None:
    p = add_subcommand(
        sub,
        "train",
        "train an encoder: MNTP, SimCSE or supervised contrastive (LoRA)",
        TRAIN_HELP,
    )
    p.add_argument("objective", choices=["mntp", "simcse", "supervised"])
    p.add_argument("--data", required=True, help=".txt/.jsonl texts, or .jsonl triples")
    p.add_argument("--output", required=True, help="output directory (adapter + checkpoints)")
    p.add_argument("--model", default=None, help="base checkpoint dir or .gguf (default SmolLM2)")
    p.add_argument(
        "--peft",
        action="append",
        default=[],
        metavar="DIR",
        help="adapters merged into the base first (SimCSE: the MNTP output); repeatable",
    )
    for flag, _, typ, help_ in _OPTIONS:
        p.add_argument(flag, type=typ, default=None, help=help_)
    p.add_argument("--lr-scheduler", choices=["linear", "cosine", "constant"], default="linear")
    p.add_argument(
        "--pooling",
        default="mean",
        choices=POOLING_MODES,
        help="pooling of the contrastive objectives (default mean); latent_attention trains "
        "NV-Embed's latent-attention head with the adapter",
    )
    p.add_argument("--all-mask", action="store_true", help="MNTP: every selected token masked")
    p.add_argument("--causal", action="store_true", help="train the causal model (baseline)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from llm2vec_fast.training.trainer import TrainConfig, train

    kwargs = {
        field: getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag, field, _, _ in _OPTIONS
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None
    }
    config = TrainConfig(
        objective=args.objective,
        data=args.data,
        output=args.output,
        model=args.model,
        peft=list(args.peft),
        lr_scheduler=args.lr_scheduler,
        pooling_mode=args.pooling,
        all_mask=args.all_mask,
        bidirectional=not args.causal,
        bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        resume=args.resume,
        show_progress_bar=not args.quiet,
        **kwargs,
    )
    s = train(config)
    if not s["is_main_process"]:
        return 0
    if s["already_complete"]:  # --resume on a finished run: say so, write nothing
        print(
            f"{config.objective} run in {s['output']} is complete ({s['steps']} steps, final loss "
            f"{s['final_loss']:.4f}; {s['resumed_from']}): nothing to resume, nothing changed"
        )
        return 0
    print(
        f"trained {config.objective}: {s['steps']} steps, final loss {s['final_loss']:.4f}, "
        f"{s['tokens_per_second']:,.0f} tokens/s this run -> {s['output']}"
        + (f" (resumed from {s['resumed_from']})" if s["resumed_from"] else "")
    )
    summary = {k: v for k, v in s.items() if k != "losses"}
    (Path(s["output"]) / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0
