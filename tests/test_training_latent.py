"""Training with latent-attention pooling: the head trains with the LoRA adapter (the loss falls,
the head's weights move), is saved beside the adapter, reloads and resumes to the same
embeddings, and the settings around it are checked."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llm2vec_fast import LLM2Vec
from llm2vec_fast.cli import main as cli_main
from llm2vec_fast.latent_attention import LATENT_ATTENTION_FILE, head_of, read_head
from llm2vec_fast.testing import make_tiny_checkpoint
from llm2vec_fast.training import TrainConfig, train
from llm2vec_fast.training.trainer import build_model

WORDS = "the of river bank money loan walk fast slow green idea sleeps furiously".split()
HEAD = dict(latent_num_latents=16, latent_heads=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train-latent")
    rng = random.Random(1)
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


def config(tiny: Path, objective: str, out: Path, **kw) -> TrainConfig:
    data = tiny / ("triples.jsonl" if objective == "supervised" else "texts.txt")
    for k, v in dict(batch_size=8, learning_rate=2e-3, max_seq_length=32, save_steps=None,
                     show_progress_bar=False, warmup_steps=0, pooling_mode="latent_attention",
                     **HEAD).items():  # fmt: skip
        kw.setdefault(k, v)
    return TrainConfig(objective, data=str(data), output=str(out), model=str(tiny / "model"), **kw)


TEXTS = ["the river bank", "money loan fast", ["Retrieve a matching text", "green idea"]]


@pytest.mark.parametrize("objective", ["simcse", "supervised"])
def test_training_with_the_head_learns_and_saves_it(objective, tiny, tmp_path):
    torch.manual_seed(42)  # build_model's seed: the head train() starts from
    start = head_of(build_model(config(tiny, objective, tmp_path / "x"))[0].model)
    start = {k: v.clone() for k, v in start.state_dict().items()}
    out = tmp_path / objective
    s = train(config(tiny, objective, out, max_steps=30))
    first, last = np.mean(s["losses"][:5]), np.mean(s["losses"][-5:])
    assert last < 0.9 * first, s["losses"]
    cfg = json.loads((out / "llm2vec_config.json").read_text())
    assert cfg["pooling_mode"] == "latent_attention"
    assert cfg["latent_attention"]["num_latents"] == 16
    trained = read_head(out, start["latents"].shape[1]).state_dict()
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert set(moved) == set(start), f"head tensors that did not train: {set(start) - set(moved)}"
    # the adapter + head load back for encoding, with the head and its pooling mode
    enc = LLM2Vec.from_pretrained(str(tiny / "model"), peft_model_name_or_path=str(out))
    assert enc.pooling_mode == "latent_attention" and head_of(enc.model) is not None
    emb = enc.encode(TEXTS, show_progress_bar=False)
    assert emb.shape == (3, enc.config.hidden_size) and torch.isfinite(emb).all()


def test_resume_restores_the_head(tiny, tmp_path):
    full = train(config(tiny, "simcse", tmp_path / "full", max_steps=8, save_steps=4))
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", part / "checkpoint-4")
    assert (part / "checkpoint-4" / LATENT_ATTENTION_FILE).is_file()
    resumed = train(config(tiny, "simcse", part, max_steps=8, save_steps=4, resume=True))
    np.testing.assert_allclose(resumed["losses"][4:], full["losses"][4:], rtol=1e-5, atol=1e-6)
    a = LLM2Vec.from_pretrained(str(tiny / "model"), peft_model_name_or_path=str(tmp_path / "full"))
    b = LLM2Vec.from_pretrained(str(tiny / "model"), peft_model_name_or_path=str(part))
    ea, eb = (e.encode(TEXTS, show_progress_bar=False) for e in (a, b))
    torch.testing.assert_close(ea, eb, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="settings differ.*latent_heads"):
        train(config(tiny, "simcse", part, max_steps=8, resume=True, latent_heads=4))


def test_settings_are_checked(tiny, tmp_path):
    with pytest.raises(ValueError, match="MNTP trains no pooling"):
        config(tiny, "mntp", tmp_path / "m")
    with pytest.raises(ValueError, match="unknown pooling mode 'latent'"):
        config(tiny, "simcse", tmp_path / "s", pooling_mode="latent")
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        config(tiny, "simcse", tmp_path / "s", latent_heads=0)


def test_train_command_line_with_the_head(tiny, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "train", "simcse", "--data", str(tiny / "texts.txt"), "--output", str(out),
        "--model", str(tiny / "model"), "--max-steps", "2", "--batch-size", "4",
        "--max-seq-length", "16", "--pooling", "latent_attention", "--latent-num-latents", "8",
        "--latent-heads", "2", "--latent-head-dim", "16", "-q",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    assert "trained simcse: 2 steps" in capsys.readouterr().out
    cfg = json.loads((out / "llm2vec_config.json").read_text())["latent_attention"]
    assert cfg == {"num_latents": 8, "num_heads": 2, "head_dim": 16, "ff_mult": 4}
    with pytest.raises(SystemExit):
        cli_main([*argv[:-9], "--pooling", "latent", "-q"])
    assert "invalid choice: 'latent'" in capsys.readouterr().err
