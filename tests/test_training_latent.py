"""Training with latent-attention pooling: the head trains with the LoRA adapter (the loss falls,
the head's weights move), is saved beside the adapter, reloads and resumes to the same
embeddings, and the settings around it are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from l2vf_support.training_data import train_argv, train_config, write_training_dir
from llm2vec_fast import LLM2Vec
from llm2vec_fast.cli import main as cli_main
from llm2vec_fast.latent_attention import LATENT_ATTENTION_FILE, head_of, read_head
from llm2vec_fast.training import TrainConfig, train
from llm2vec_fast.training.trainer import build_model

HEAD = dict(latent_num_latents=16, latent_heads=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_training_dir(tmp_path_factory.mktemp("train-latent"), seed=1)


def config(tiny: Path, objective: str, out: Path, **kw) -> TrainConfig:
    """A tiny run with a small latent-attention head (16 latents, 2 heads)."""
    return train_config(tiny, objective, out, **{"pooling_mode": "latent_attention", **HEAD, **kw})


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
    head = ["--latent-num-latents", "8", "--latent-heads", "2", "--latent-head-dim", "16"]
    argv = train_argv(tiny, "simcse", out, 2, "--pooling", "latent_attention", *head)
    assert cli_main(argv) == 0
    assert "trained simcse: 2 steps" in capsys.readouterr().out
    cfg = json.loads((out / "llm2vec_config.json").read_text())["latent_attention"]
    assert cfg == {"num_latents": 8, "num_heads": 2, "head_dim": 16, "ff_mult": 4}
    with pytest.raises(SystemExit):
        cli_main(train_argv(tiny, "simcse", out, 2, "--pooling", "latent"))
    assert "invalid choice: 'latent'" in capsys.readouterr().err
