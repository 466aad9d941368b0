"""The tiny training run of the training tests: random texts over a small vocabulary, query /
positive / hard-negative triples, a tiny random Llama checkpoint, and a ``TrainConfig`` sized for
them (a few seconds a run on the CPU)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from llm2vec_fast.testing import make_tiny_checkpoint

WORDS = "the of river bank money loan walk fast slow green idea sleeps furiously".split()


def write_training_dir(d: Path, seed: int = 0) -> Path:
    """``d/texts.txt`` (120 lines), ``d/triples.jsonl`` (60, every other one with an
    instruction) and ``d/model`` (a tiny Llama); returns ``d``."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 25))) for _ in range(120)]
    (d / "texts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(d / "triples.jsonl", "w", encoding="utf-8") as f:
        for i in range(60):
            a = " ".join(rng.choices(WORDS[:6], k=rng.randint(2, 8)))
            b = " ".join(rng.choices(WORDS[6:], k=rng.randint(2, 8)))
            rec = {"query": a, "positive": a + " " + WORDS[i % 5], "negative": b}
            if i % 2:
                rec["instruction"] = "Retrieve a matching text"
            f.write(json.dumps(rec) + "\n")
    make_tiny_checkpoint(d / "model", "llama", seed=1)
    return d


def train_config(tiny: Path, objective: str, out: Path, **kw):
    """A ``TrainConfig`` on :func:`write_training_dir`'s files: 8 texts a batch of at most 32
    tokens, lr 2e-3, no warmup, no checkpoints, no progress bar (each overridable)."""
    from llm2vec_fast.training import TrainConfig

    data = tiny / ("triples.jsonl" if objective == "supervised" else "texts.txt")
    defaults = dict(batch_size=8, learning_rate=2e-3, max_seq_length=32, save_steps=None,
                    show_progress_bar=False, warmup_steps=0)  # fmt: skip
    kw = {**defaults, **kw}
    return TrainConfig(objective, data=str(data), output=str(out), model=str(tiny / "model"), **kw)


def train_argv(tiny: Path, objective: str, out: Path, steps: int, *options: str) -> list[str]:
    """``llm2vec-fast train`` arguments on :func:`write_training_dir`'s texts: ``steps`` steps of
    4 texts of at most 16 tokens, quiet, then ``options``."""
    return [
        "train", objective, "--data", str(tiny / "texts.txt"), "--output", str(out),
        "--model", str(tiny / "model"), "--max-steps", str(steps), "--batch-size", "4",
        "--max-seq-length", "16", "-q", *options,
    ]  # fmt: skip
