"""LoadSpec: what every entry point builds an encoder from (from_pretrained's arguments, the
command line's options, the workers of several devices), and the layers' import order."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm2vec_fast import LLM2Vec
from llm2vec_fast.loading import LoadSpec
from llm2vec_fast.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("llama"), "llama", seed=3)


def test_create_resolves_paths_adapters_and_dtype(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = LoadSpec.create("model", "adapter", torch_dtype="bf16", max_length=None, dtype=None)
    assert spec.base_model_name_or_path == str(tmp_path / "model")
    assert spec.peft_model_name_or_path == (str(tmp_path / "adapter"),)
    assert spec.torch_dtype is torch.float32  # transformers 5's dtype= wins, None is float32
    assert LoadSpec.create(None, ["a", "b"]).peft_model_name_or_path == (
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    )
    assert LoadSpec.create(torch_dtype="bf16").torch_dtype is torch.bfloat16
    assert LoadSpec.create().settings == {}
    assert LoadSpec.create(pooling_mode="eos_token").settings == {"pooling_mode": "eos_token"}


def test_create_refuses_what_from_pretrained_refuses():
    with pytest.raises(TypeError, match=r"unexpected arguments: \['bogus'\]"):
        LoadSpec.create(bogus=1)
    with pytest.raises(ValueError, match="trust_remote_code is not supported"):
        LoadSpec.create(trust_remote_code=True)
    with pytest.raises(ValueError, match="unknown dtype"):
        LoadSpec.create(torch_dtype="int3")
    assert LoadSpec.create(low_cpu_mem_usage=True) == LoadSpec()


def test_from_options_reads_the_command_line_model_options(tmp_path):
    from llm2vec_fast.options import add_model_arguments

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    parser.add_argument("--dtype")
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args(
        ["--model", str(tmp_path), "--peft", "a", "--peft", "b", "--pooling", "eos_token"]
        + ["--dtype", "float16", "--causal"]
    )
    spec = LoadSpec.from_options(args)
    assert spec.base_model_name_or_path == str(tmp_path.resolve())
    assert [Path(p).name for p in spec.peft_model_name_or_path] == ["a", "b"]
    assert spec.merge_peft and not spec.enable_bidirectional
    assert spec.torch_dtype is torch.float16 and spec.pooling_mode == "eos_token"
    assert spec.attn_implementation == "auto" and spec.max_length is None
    assert LoadSpec.from_options(args, max_length=64).max_length == 64
    assert LoadSpec.create(**spec.kwargs()) == spec  # kwargs() round-trips


def test_the_encoder_keeps_its_resolved_spec(ckpt):
    model = LLM2Vec.from_pretrained(ckpt, max_length=40, device="cpu")
    spec = model.load_spec
    assert spec.base_model_name_or_path == str(Path(ckpt).resolve())
    assert spec.max_length == 40 and spec.attn_implementation == "auto"
    again = LLM2Vec.from_spec(spec, device="cpu")
    texts = ["one text", "another, longer text"]
    assert torch.equal(
        again.encode(texts, show_progress_bar=False), model.encode(texts, show_progress_bar=False)
    )
    assert LLM2Vec(model.model, model.tokenizer).load_spec is None


def test_attributes_reach_the_text_processor_and_the_runner(ckpt):
    model = LLM2Vec.from_pretrained(ckpt, device="cpu")
    model.pooling_mode = "last_token"
    model.max_length = 17
    assert model.text.pooling_mode == model.runner.pooling_mode == "last_token"
    assert model.text.max_length == 17
    wrapped = torch.nn.Sequential()  # any module: the runner follows a replaced model
    wrapped.config = model.model.config
    model.model = wrapped
    assert model.runner.model is wrapped


def test_core_modules_do_not_load_the_encoder():
    """Importing the packer, the text processor or the runtime does not import the api layer
    (llm2vec_fast/__init__ imports its names on first use)."""
    code = (
        "import sys, llm2vec_fast.packing, llm2vec_fast.text, llm2vec_fast.loading, "
        "llm2vec_fast.runner, llm2vec_fast.pipeline, llm2vec_fast.multi_device; "
        "print('llm2vec_fast.encoder' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
