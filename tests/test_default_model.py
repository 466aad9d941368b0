"""The embedded default model, SmolLM2-135M-Instruct, end to end (the README's main job)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm2vec_fast import LLM2Vec
from llm2vec_fast.cli import main
from llm2vec_fast.default_model import DEFAULT_MODEL_NAME, default_model_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("LLM2VEC_FAST_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def model(cache):
    return LLM2Vec.from_pretrained(device="cpu")


def test_default_checkpoint_is_cached_once(model, cache):
    d = default_model_path()
    assert d.parent == cache
    config = json.loads((d / "config.json").read_text())
    assert config["_name_or_path"] == DEFAULT_MODEL_NAME
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (
        30,
        576,
        3,
    )
    assert default_model_path() == d  # second call finds the cache
    assert model.model.cfg.family == "llama"


def test_real_model_embeddings_make_sense(model):
    texts = [
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "The central bank raised interest rates.",
        "Interest rates were increased by the central bank.",
    ]
    e = model.encode(texts, normalize_embeddings=True, show_progress_bar=False).numpy()
    sim = e @ e.T
    assert np.isfinite(e).all()
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]
    assert sim[2, 3] > sim[2, 0] and sim[2, 3] > sim[2, 1]


def test_readme_main_job(model, tmp_path, capsys):
    """`llm2vec-fast embed examples/sample.txt -o out/sample.npy` with the default model."""
    sample = ROOT / "examples" / "sample.txt"
    out = tmp_path / "out" / "sample.npy"
    assert main(["embed", str(sample), "-o", str(out), "-q"]) == 0
    emb = np.load(out)
    lines = sample.read_text(encoding="utf-8").splitlines()
    assert emb.shape == (len(lines), 576) and emb.dtype == np.float32
    assert json.loads(out.with_suffix(".ids.json").read_text()) == list(range(len(lines)))
    np.testing.assert_allclose(
        emb[:3], model.encode(lines[:3], convert_to_numpy=True, show_progress_bar=False), atol=1e-5
    )
    assert "embedded 40 texts" in capsys.readouterr().out
