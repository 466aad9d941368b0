"""Loading GGUF files: a tiny Llama GGUF written here with the ``gguf`` package (F32 tensors,
random weights, a small byte-level BPE tokenizer in the metadata, the llama.cpp layout) is
converted once into a cached safetensors checkpoint and must embed exactly like transformers'
own model loaded from the same file.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from llm2vec_fast import CheckpointError, LLM2Vec

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 128
VOCAB = 300
CONTEXT = 128
RMS_EPS = 1e-5
ROPE_THETA = 10000.0
BOS, EOS = "<|bos|>", "<|eos|>"

TRAIN_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Embeddings map text to vectors, and similar texts land close together.",
    "Packed sequences need no padding at all!",
    "Llamas and alpacas graze on the high plains of the Andes.",
]

TEXTS = [
    "The lazy dog sleeps.",
    "Vectors of text: embeddings!",
    "A single step, then a thousand more over the plains of the Andes.",
    "zebra xylophone qwerty 12345",  # mostly bytes the BPE merges never saw
]


# ----------------------------------------------------------------------------- the tiny GGUF


def _byte_level_bpe() -> tuple[list[str], list[str]]:
    """A byte-level BPE trained on a few sentences: tokens by id (byte-alphabet spelling, the two
    special tokens first) and merges as ``"a b"`` strings, as llama.cpp's convert script writes them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_SENTENCES * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    assert len(tokens) == VOCAB and None not in tokens, (
        "BPE training gave a different vocabulary size"
    )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def _permute_for_gguf(w: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py): HF's rotate-half q/k rows to
    GGML's interleaved RoPE layout; transformers undoes it on load."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def make_tiny_llama_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights, HF Llama names, tied embeddings (no lm_head)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.08):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def norm():
        return 1.0 + rnd(HIDDEN, std=0.1)

    sd = {"model.embed_tokens.weight": rnd(VOCAB, HIDDEN, std=1.0)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm()
        sd[p + "self_attn.q_proj.weight"] = rnd(HEADS * HEAD_DIM, HIDDEN, std=0.25)
        sd[p + "self_attn.k_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN, std=0.25)
        sd[p + "self_attn.v_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN)
        sd[p + "self_attn.o_proj.weight"] = rnd(HIDDEN, HEADS * HEAD_DIM)
        sd[p + "post_attention_layernorm.weight"] = norm()
        sd[p + "mlp.gate_proj.weight"] = rnd(INTERMEDIATE, HIDDEN)
        sd[p + "mlp.up_proj.weight"] = rnd(INTERMEDIATE, HIDDEN)
        sd[p + "mlp.down_proj.weight"] = rnd(HIDDEN, INTERMEDIATE)
    sd["model.norm.weight"] = norm()
    return sd


_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    module = rest[: -len(".weight")]
    return f"blk.{layer}.{_GGUF_NAMES[module]}.weight"


def write_tiny_llama_gguf(path: str | os.PathLike, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a tiny Llama GGUF (F32, llama.cpp layout) to ``path``; return the HF state dict it
    holds (what transformers must read back, q/k un-permuted)."""
    sd = make_tiny_llama_state_dict(seed)
    tokens, merges = _byte_level_bpe()
    token_types = [
        gguf.TokenType.CONTROL if t in (BOS, EOS) else gguf.TokenType.NORMAL for t in tokens
    ]

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny-llama")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(INTERMEDIATE)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_vocab_size(VOCAB)
    # tokenizer, the way llama.cpp's convert script writes a byte-level BPE ("gpt2") vocabulary
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(BOS))
    w.add_eos_token_id(tokens.index(EOS))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    for name, t in sd.items():
        if name.endswith("q_proj.weight"):
            t = _permute_for_gguf(t, HEADS, HEADS)
        elif name.endswith("k_proj.weight"):
            t = _permute_for_gguf(t, HEADS, KV_HEADS)
        w.add_tensor(_gguf_name(name), t.contiguous().numpy())

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sd


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    sd = write_tiny_llama_gguf(path, seed=0)
    return path, sd


@pytest.fixture(scope="module")
def hf_reference(tiny_gguf):
    """transformers' own model and tokenizer, loaded from the GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, _ = tiny_gguf
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model, tok


def _reference_embeddings(model, tok, texts: list[str]) -> torch.Tensor:
    """Each text alone, bidirectional attention (a 4-D all-True bool mask disables causal masking
    in transformers 5.x), mean over the text's own tokens (the last n, as the official llm2vec
    pools: n counted without special tokens, so a BOS the tokenizer adds is attended, not pooled)."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"]
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            L = ids.shape[1]
            mask = torch.ones(1, 1, L, L, dtype=torch.bool)
            h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[0]
            out.append(h[L - n :].mean(dim=0))
    return torch.stack(out)


def _converted_dirs(cache: Path) -> list[Path]:
    return sorted(p.parent for p in cache.glob("*/model.safetensors"))


# ----------------------------------------------------------------------------- tests


def test_tiny_gguf_reads_back_as_written(tiny_gguf, hf_reference):
    """The writer is right: transformers un-permutes q/k and gets exactly the intended weights,
    and the tokenizer is the byte-level BPE we stored (BOS added, specials kept whole)."""
    _, sd = tiny_gguf
    model, tok = hf_reference
    cfg = model.config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers) == ("llama", HIDDEN, LAYERS)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (HEADS, KV_HEADS)
    assert (cfg.intermediate_size, cfg.vocab_size) == (INTERMEDIATE, VOCAB)
    assert cfg.tie_word_embeddings

    got = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
    assert sorted(got) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k

    bos_id = tok.convert_tokens_to_ids(BOS)
    ids = tok("The lazy dog.")["input_ids"]
    assert ids[0] == bos_id and bos_id not in ids[1:]
    assert tok.decode(ids, skip_special_tokens=True) == "The lazy dog."
    assert tok(f"a{EOS}b", add_special_tokens=False)["input_ids"][1] == tok.convert_tokens_to_ids(
        EOS
    )


def test_gguf_embeddings_match_transformers(tiny_gguf, hf_reference, monkeypatch, tmp_path):
    path, _ = tiny_gguf
    monkeypatch.setenv("LLM2VEC_FAST_CACHE", str(tmp_path / "cache"))
    enc = LLM2Vec.from_pretrained(path, pooling_mode="mean", device="cpu")
    got = enc.encode(TEXTS, batch_size=8, show_progress_bar=False)
    got = torch.as_tensor(np.asarray(got) if not torch.is_tensor(got) else got)
    assert got.shape == (len(TEXTS), HIDDEN) and got.dtype == torch.float32

    ref = _reference_embeddings(*hf_reference, TEXTS)
    diff = (got - ref).abs().max().item()
    assert diff < 1e-4, f"max abs diff {diff}"

    # the reference really is bidirectional: a causal run differs
    model, tok = hf_reference
    with torch.no_grad():
        ids = tok(TEXTS[2], return_tensors="pt")["input_ids"]
        causal = model.model(input_ids=ids).last_hidden_state[0, 1:].mean(0)
    assert (causal - ref[2]).abs().max().item() > 1e-3

    assert len(_converted_dirs(tmp_path / "cache")) == 1


def test_gguf_cache_is_reused(tiny_gguf, monkeypatch, tmp_path):
    path, _ = tiny_gguf
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLM2VEC_FAST_CACHE", str(cache))

    first = LLM2Vec.from_pretrained(path, pooling_mode="mean", device="cpu")
    (conv,) = _converted_dirs(cache)
    st = (conv / "model.safetensors").stat()
    # the cache is a plain float checkpoint the official stack (transformers 4.44) also reads:
    # no "gguf" quantization_config, rope_theta written beside rope_parameters
    config = json.loads((conv / "config.json").read_text())
    assert "quantization_config" not in config
    assert "rope_theta" in config
    a = first.encode(TEXTS[:2], show_progress_bar=False)

    second = LLM2Vec.from_pretrained(path, pooling_mode="mean", device="cpu")
    assert _converted_dirs(cache) == [conv]
    st2 = (conv / "model.safetensors").stat()
    assert (st2.st_mtime_ns, st2.st_ino) == (st.st_mtime_ns, st.st_ino)
    # nothing half-built left beside it
    assert [p.name for p in cache.iterdir()] == [conv.name]
    b = second.encode(TEXTS[:2], show_progress_bar=False)
    assert torch.equal(torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b)))


def test_missing_gguf_raises_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM2VEC_FAST_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "nowhere" / "absent.gguf"
    with pytest.raises(CheckpointError) as ei:
        LLM2Vec.from_pretrained(missing, pooling_mode="mean")
    assert str(missing) in str(ei.value)


@pytest.mark.parametrize("kind", ["random", "gguf-magic", "truncated"])
def test_corrupt_gguf_raises_checkpoint_error(kind, tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLM2VEC_FAST_CACHE", str(cache))
    bad = tmp_path / f"corrupt-{kind}.gguf"
    rng = np.random.default_rng(123)
    noise = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    if kind == "random":
        data = noise
    elif kind == "gguf-magic":  # a valid magic and version, then garbage
        data = b"GGUF" + (3).to_bytes(4, "little") + noise
    else:  # a real file cut in half: header fine, tensor data missing
        good = tiny_gguf[0].read_bytes()
        data = good[: len(good) // 2]
    bad.write_bytes(data)

    with pytest.raises(CheckpointError) as ei:
        LLM2Vec.from_pretrained(bad, pooling_mode="mean")
    assert bad.name in str(ei.value)
    # a failed conversion leaves nothing in the cache
    assert not cache.exists() or not any(cache.iterdir())


_TRANSFORMERS_MAJOR = int(importlib.metadata.version("transformers").split(".")[0])


def test_cli_quiet_hides_transformers_progress_bars(tiny_gguf, tmp_path, monkeypatch, capfd):
    """``embed -q`` on a GGUF model: none of transformers' bars (its GGUF de-quantisation bar
    is plain tqdm, outside transformers' own switch; its weight-loading bar); without -q they
    show. The switch is the command's only: transformers' state is restored after it."""
    from transformers.utils import logging as hf_logging

    from llm2vec_fast.cli import main

    path, _ = tiny_gguf
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    bars = ("Converting and de-quantizing GGUF tensors", "Loading weights")
    was_on = hf_logging.is_progress_bar_enabled()
    for quiet in (True, False):
        monkeypatch.setenv("LLM2VEC_FAST_CACHE", str(tmp_path / f"cache-{quiet}"))  # converts
        argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / f"e{quiet}.npy")]
        assert main([*argv, "--model", str(path), *(["-q"] if quiet else [])]) == 0
        err = capfd.readouterr().err
        assert len(_converted_dirs(tmp_path / f"cache-{quiet}")) == 1
        if quiet:
            assert not any(b in err for b in bars), err
            assert "Encoding" not in err
        else:  # (transformers draws the "Loading weights" bar from version 5 on)
            shown = bars if _TRANSFORMERS_MAJOR >= 5 else bars[:1]
            assert all(b in err for b in shown) and "Encoding" in err, err
        assert hf_logging.is_progress_bar_enabled() == was_on
