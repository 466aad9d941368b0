"""LLM2Vec API: pooling, instructions and truncation against a plain padded reference, the
input forms, batching independence, save/load, PEFT adapters and the published layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from l2vf_support.checkpoints import make_published_layout, make_tiny_lora
from llm2vec_fast import CheckpointError, LLM2Vec
from llm2vec_fast.runner import EncoderRunner
from llm2vec_fast.testing import make_tiny_checkpoint

SEP = "!@#$%^&*()"
PAIRS = [
    ("", "The cat sat on the mat."),
    ("Retrieve a news article about markets", "Stocks fell sharply on Monday as oil prices rose."),
    ("  Find the answer:  ", " a text with a leading space"),
    ("", "x"),
    ("Classify", "word " * 40),  # cut by max_length (and doc_max_length when small)
    ("a very long instruction " * 12, "short text"),  # instruction longer than max_length
]


@pytest.fixture(scope="module")
def llama_dir(tiny_checkpoint):
    return tiny_checkpoint("llama", seed=3)


@pytest.fixture(scope="module")
def bos_dir(tiny_checkpoint):
    return tiny_checkpoint("mistral", seed=4, add_bos=True)


def reference(ckpt, pairs, mode, max_length=512, doc_max_length=400, skip_instruction=True):
    """What the official library computes, written plainly over a left-padded batch and HF's
    own model with a padding-only 4-D mask (bidirectional)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModel.from_pretrained(str(ckpt), dtype=torch.float32).eval()

    def n_tokens(t):
        return len(
            tok(t, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        )

    seqs, pooled_n = [], []
    for instruction, text in pairs:
        n = n_tokens(text)
        while n > doc_max_length:
            words = text.split()
            text = " ".join(words[: int(len(words) * doc_max_length / n)])
            n = n_tokens(text)
        s = f"{instruction.strip()} {SEP}{text}" if instruction else f"{SEP}{text}"
        if mode == "eos_token":
            s = s.strip() + " </s>"
        parts = s.split(SEP)
        ids = tok("".join(parts), truncation=True, max_length=max_length)["input_ids"]
        seqs.append(ids)
        pooled_n.append(n_tokens(parts[1]) if skip_instruction else len(ids))
    L = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), L), tok.eos_token_id)
    valid = torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        input_ids[i, L - len(s) :] = torch.tensor(s)
        valid[i, L - len(s) :] = True
    mask = valid[:, None, None, :].expand(-1, 1, L, L)
    positions = (valid.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        h = model(input_ids, attention_mask=mask, position_ids=positions).last_hidden_state
    out = []
    for i, n in enumerate(pooled_n):
        n = min(n, len(seqs[i]))
        if mode == "mean":
            out.append(h[i, -n:].mean(0) if n else h[i, L - len(seqs[i]) :].mean(0))
        elif mode == "weighted_mean":
            w = torch.arange(1, n + 1, dtype=torch.float32)
            out.append(
                (h[i, L - n :] * (w / w.sum())[:, None]).sum(0) if n else torch.zeros(h.shape[-1])
            )
        elif mode in ("eos_token", "last_token"):
            out.append(h[i, -1])
        elif mode == "bos_token":
            out.append(h[i][input_ids[i] == tok.bos_token_id][0])
    return torch.stack(out), seqs


def _rel_err(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max().item()


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "eos_token", "last_token"])
@pytest.mark.parametrize("skip_instruction", [True, False])
def test_pooling_and_instructions_match_padded_reference(llama_dir, mode, skip_instruction):
    model = LLM2Vec.from_pretrained(
        llama_dir, pooling_mode=mode, max_length=32, skip_instruction=skip_instruction, device="cpu"
    )
    ours = model.encode([list(p) for p in PAIRS], show_progress_bar=False)
    ref, _ = reference(llama_dir, PAIRS, mode, max_length=32, skip_instruction=skip_instruction)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    assert _rel_err(ours, ref) < 1e-5


def test_doc_max_length_cut(llama_dir):
    model = LLM2Vec.from_pretrained(llama_dir, max_length=64, doc_max_length=7, device="cpu")
    ours = model.encode([list(p) for p in PAIRS], show_progress_bar=False)
    ref, _ = reference(llama_dir, PAIRS, "mean", max_length=64, doc_max_length=7)
    assert _rel_err(ours, ref) < 1e-5


def test_bos_token_pooling(bos_dir, llama_dir):
    model = LLM2Vec.from_pretrained(bos_dir, pooling_mode="bos_token", device="cpu")
    ours = model.encode([list(p) for p in PAIRS[:4]], show_progress_bar=False)
    ref, seqs = reference(bos_dir, PAIRS[:4], "bos_token")
    assert all(s[0] == model.tokenizer.bos_token_id for s in seqs)
    assert _rel_err(ours, ref) < 1e-5
    no_bos = LLM2Vec.from_pretrained(llama_dir, pooling_mode="bos_token", device="cpu")
    with pytest.raises(ValueError, match="contains no BOS token"):
        no_bos.encode(["hello"], show_progress_bar=False)


def test_token_ids_and_embed_mask_match_official_tokenize(llama_dir):
    model = LLM2Vec.from_pretrained(llama_dir, max_length=32, device="cpu")
    joined = model.text.joined(PAIRS)
    feats = model.tokenize(joined)
    ids, pool_lengths = model.text.token_ids(joined)
    for i, seq in enumerate(ids):
        row = feats["input_ids"][i][feats["attention_mask"][i].bool()].tolist()
        assert row == seq
        assert int(feats["embed_mask"][i].sum()) == pool_lengths[i]
    # forward() on the padded dict gives encode()'s embeddings
    assert_close(
        model.forward(feats),
        model.encode([list(p) for p in PAIRS], show_progress_bar=False),
        atol=1e-5,
        rtol=1e-5,
    )


def test_batching_does_not_change_results(llama_dir):
    model = LLM2Vec.from_pretrained(llama_dir, max_length=48, device="cpu")
    texts = [("", "tiny"), *PAIRS] * 3
    texts = [list(t) for t in texts]
    a = model.encode(texts, batch_size=1, show_progress_bar=False)
    b = model.encode(texts, batch_size=64, show_progress_bar=False)
    c = model.encode(texts, batch_size=64, max_tokens_per_batch=50, show_progress_bar=False)
    assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_input_forms(llama_dir):
    model = LLM2Vec.from_pretrained(llama_dir, device="cpu")
    many = model.encode(["alpha beta", "gamma"], show_progress_bar=False)
    one = model.encode("alpha beta", show_progress_bar=False)
    assert one.shape == (model.config.hidden_size,)  # one vector, not one per character
    assert_close(one, many[0])
    mixed = model.encode(["gamma", ["Instr", "alpha beta"]], show_progress_bar=False)
    assert_close(mixed[0], many[1])  # a plain string after no pair is a text without instruction
    mixed2 = model.encode([["Instr", "alpha beta"], "gamma"], show_progress_bar=False)
    assert_close(mixed2[1], many[1])  # ... and after a pair too (the official bug is not copied)
    medi = model.encode(["Instr", "alpha beta", 0], show_progress_bar=False)
    assert medi.shape == (1, model.config.hidden_size)
    assert_close(medi[0], mixed[1])
    arr = model.encode(
        np.array(["alpha beta", "gamma"]), convert_to_numpy=True, show_progress_bar=False
    )
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    np.testing.assert_allclose(arr, many.numpy(), atol=1e-6)
    normed = model.encode(["alpha beta"], normalize_embeddings=True, show_progress_bar=False)
    assert_close(normed.norm(dim=1), torch.ones(1))


def test_empty_text_is_defined_and_batch_independent(llama_dir):
    mean = LLM2Vec.from_pretrained(llama_dir, device="cpu")
    # an instruction with an empty text: nothing to pool -> the whole sequence (instruction)
    alone = mean.encode([["Represent this", ""]], show_progress_bar=False)
    with_others = mean.encode(
        [["Represent this", ""], "a much longer neighbour text " * 5], show_progress_bar=False
    )
    assert_close(alone[0], with_others[0], atol=1e-5, rtol=1e-5)
    ref, _ = reference(llama_dir, [("Represent this", "")], "mean", skip_instruction=False)
    assert _rel_err(alone, ref) < 1e-5
    wm = LLM2Vec.from_pretrained(llama_dir, pooling_mode="weighted_mean", device="cpu")
    assert torch.count_nonzero(wm.encode([["Represent this", ""]], show_progress_bar=False)) == 0
    # an empty string with no special tokens has no tokens at all: a zero vector
    assert torch.count_nonzero(mean.encode([""], show_progress_bar=False)) == 0


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (None, TypeError, "got None"),
        ([], ValueError, "empty list"),
        (["ok", None], TypeError, "sentence 1 is None"),
        (["ok", 3.5], TypeError, "sentence 1 is float"),
        ([["instr", 7]], TypeError, "sentence 0 is list"),
        (b"bytes", TypeError, "bytes"),
        (42, TypeError, "got int"),
    ],
)
def test_bad_input_is_a_clear_error(llama_dir, bad, exc, match):
    model = LLM2Vec.from_pretrained(llama_dir, device="cpu")
    with pytest.raises(exc, match=match):
        model.encode(bad, show_progress_bar=False)


@pytest.mark.parametrize(
    "bad, match",
    [
        (["a", 3], r"^sentence 1 is int; expected a string"),
        (["a", None, 3], r"^sentence 1 is None; expected a string"),
    ],
)
def test_flat_list_with_a_number_names_the_bad_item(llama_dir, bad, match):
    """A flat list ending in a number is not one MEDI item ([instruction, text, ..., int] needs two
    strings first): the error names the bad item, whether the list goes to encode(), to
    encode_iter(), or arrives as a stream (a generator is never a MEDI item)."""
    model = LLM2Vec.from_pretrained(llama_dir, device="cpu")
    with pytest.raises(TypeError, match=match):
        model.encode(bad, show_progress_bar=False)
    with pytest.raises(TypeError, match=match):
        list(model.encode_iter(bad))
    with pytest.raises(TypeError, match=match):
        list(model.encode_iter(iter(bad)))
    # the real MEDI item and a bad pair keep their forms and messages
    assert model.encode(["Instr", "alpha beta", 0], show_progress_bar=False).shape[0] == 1
    with pytest.raises(TypeError, match=r"sentence 0 is list of \['str', 'int'\]"):
        model.encode([["instr", 7]], show_progress_bar=False)


def test_bad_arguments(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown pooling_mode 'max'"):
        LLM2Vec.from_pretrained(llama_dir, pooling_mode="max", device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        LLM2Vec.from_pretrained(tmp_path / "nope", device="cpu")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((llama_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="contains no model weights"):
        LLM2Vec.from_pretrained(tmp_path / "empty", device="cpu")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in llama_dir.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        LLM2Vec.from_pretrained(corrupt, device="cpu")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((llama_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickled weights"):
        LLM2Vec.from_pretrained(pickled, device="cpu")
    model = LLM2Vec.from_pretrained(llama_dir, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["a"], batch_size=0)


def test_long_text_is_truncated_not_an_error(llama_dir):
    model = LLM2Vec.from_pretrained(llama_dir, max_length=16, device="cpu")
    long = "many words here " * 500
    ids, _ = model.text.token_ids(model.text.joined([("", long)]))
    assert len(ids[0]) == 16
    assert torch.isfinite(model.encode([long], show_progress_bar=False)).all()


def test_llm2vec_config_and_overrides(llama_dir, tmp_path):
    d = make_tiny_checkpoint(tmp_path / "cfg", "llama", seed=3)
    (d / "llm2vec_config.json").write_text(
        json.dumps({"pooling_mode": "weighted_mean", "max_length": 20, "skip_instruction": False})
    )
    m = LLM2Vec.from_pretrained(d, device="cpu")
    assert (m.pooling_mode, m.max_length, m.skip_instruction, m.doc_max_length) == (
        "weighted_mean",
        20,
        False,
        400,
    )
    m = LLM2Vec.from_pretrained(d, pooling_mode="mean", device="cpu")
    assert m.pooling_mode == "mean" and m.max_length == 20


def test_save_and_reload(llama_dir, tmp_path):
    model = LLM2Vec.from_pretrained(
        llama_dir, pooling_mode="weighted_mean", max_length=40, device="cpu"
    )
    model.name_or_path = "meta-llama/Llama-2-7b-chat-hf"  # keeps its prompt wrapping across save
    before = model.encode([list(p) for p in PAIRS], show_progress_bar=False)
    model.save(tmp_path / "saved")
    cfg = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert cfg["_name_or_path"] == "meta-llama/Llama-2-7b-chat-hf"
    assert "rope_theta" in cfg
    again = LLM2Vec.from_pretrained(tmp_path / "saved", device="cpu")
    assert again.pooling_mode == "weighted_mean" and again.max_length == 40
    assert again.prepare_for_tokenization("hi") == "[INST] hi [/INST]"
    assert_close(again.encode([list(p) for p in PAIRS], show_progress_bar=False), before)


def test_peft_merged_equals_unmerged(llama_dir, tmp_path):
    adapter = make_tiny_lora(llama_dir, tmp_path / "lora", seed=1)
    texts = [list(p) for p in PAIRS]
    merged = LLM2Vec.from_pretrained(llama_dir, adapter, merge_peft=True, device="cpu")
    kept = LLM2Vec.from_pretrained(llama_dir, adapter, merge_peft=False, device="cpu")
    base = LLM2Vec.from_pretrained(llama_dir, device="cpu")
    a = merged.encode(texts, show_progress_bar=False)
    b = kept.encode(texts, show_progress_bar=False)
    assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (
        a - base.encode(texts, show_progress_bar=False)
    ).abs().max() > 1e-3  # the adapter matters


def test_published_layout_with_local_base(llama_dir, tmp_path):
    """config.json + an MNTP adapter naming its base by hub id; a second adapter on top."""
    mntp = make_tiny_lora(
        llama_dir, tmp_path / "mntp", seed=2, base_model_name_or_path="org/some-hub-model"
    )
    make_published_layout(mntp, llama_dir, "org/some-hub-model")
    simcse = make_tiny_lora(llama_dir, tmp_path / "simcse", seed=3)
    with pytest.raises(CheckpointError, match="base_weights_path"):
        LLM2Vec.from_pretrained(mntp, device="cpu")
    model = LLM2Vec.from_pretrained(mntp, simcse, base_weights_path=llama_dir, device="cpu")
    assert model.name_or_path == "org/some-hub-model"
    # the same as merging both adapters by hand, in order
    by_hand = LLM2Vec.from_pretrained(llama_dir, [mntp, simcse], merge_peft=True, device="cpu")
    texts = [list(p) for p in PAIRS]
    assert_close(
        model.encode(texts, show_progress_bar=False),
        by_hand.encode(texts, show_progress_bar=False),
        atol=1e-5,
        rtol=1e-4,
    )


def test_save_unmerged_adapter_writes_an_adapter_old_peft_reads(llama_dir, tmp_path):
    adapter = make_tiny_lora(llama_dir, tmp_path / "lora", seed=5)
    model = LLM2Vec.from_pretrained(llama_dir, adapter, merge_peft=False, device="cpu")
    model.save(tmp_path / "saved")
    saved = tmp_path / "saved"
    assert (saved / "adapter_model.safetensors").is_file() and not (
        saved / "model.safetensors"
    ).exists()
    cfg = json.loads((saved / "adapter_config.json").read_text())
    from llm2vec_fast.compat import _PEFT_012_LORA_FIELDS

    assert set(cfg) <= _PEFT_012_LORA_FIELDS  # peft 0.12 (official stack) accepts every key
    again = LLM2Vec.from_pretrained(llama_dir, saved, device="cpu")
    texts = [list(p) for p in PAIRS]
    assert_close(
        again.encode(texts, show_progress_bar=False), model.encode(texts, show_progress_bar=False)
    )


def test_bad_device_is_a_clear_error(llama_dir):
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        LLM2Vec.from_pretrained(llama_dir, device="gpu0")
    if not torch.cuda.is_available():
        model = LLM2Vec.from_pretrained(llama_dir, device="cpu")
        with pytest.raises(ValueError, match="no CUDA device is available"):
            model.encode(["a"], device="cuda", show_progress_bar=False)


def test_sharded_checkpoint(llama_dir, tmp_path):
    """A checkpoint split over two safetensors shards with an index loads like the single file."""
    from safetensors.torch import load_file, save_file

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for f in llama_dir.iterdir():
        if f.name != "model.safetensors":
            (sharded / f.name).write_bytes(f.read_bytes())
    state = load_file(str(llama_dir / "model.safetensors"))
    names = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(sharded / shard))
        weight_map.update(dict.fromkeys(keys, shard))
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    texts = [list(p) for p in PAIRS]
    a = LLM2Vec.from_pretrained(sharded, device="cpu").encode(texts, show_progress_bar=False)
    b = LLM2Vec.from_pretrained(llama_dir, device="cpu").encode(texts, show_progress_bar=False)
    assert torch.equal(a, b)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match="shards named in model.safetensors.index.json are missing"
    ):
        LLM2Vec.from_pretrained(sharded, device="cpu")


@pytest.mark.parametrize("skip_instruction", [True, False])
def test_token_embeddings_are_the_hidden_states(llama_dir, skip_instruction):
    """output_value="token_embeddings": each text's hidden states over its pooled tokens."""
    model = LLM2Vec.from_pretrained(
        llama_dir, max_length=32, skip_instruction=skip_instruction, device="cpu"
    )
    texts = [list(p) for p in PAIRS]
    toks = model.encode(
        texts, output_value="token_embeddings", batch_size=2, show_progress_bar=False
    )
    ids, pool_lengths = model.text.token_ids(model.text.joined(PAIRS))
    assert len(toks) == len(PAIRS)
    for seq, n, t in zip(ids, pool_lengths, toks):
        n = min(n, len(seq))
        cu = torch.tensor([0, len(seq)], dtype=torch.int32)
        with torch.no_grad():
            h = model.model(torch.tensor(seq), cu, torch.arange(len(seq)), len(seq))
        assert t.dtype == torch.float32 and t.shape == (n, model.config.hidden_size)
        assert_close(t, h[len(seq) - n :], atol=1e-5, rtol=1e-5)
    # mean pooling is the mean of the token embeddings (texts with a non-empty pooled span)
    sent = model.encode(texts, show_progress_bar=False)
    for i, t in enumerate(toks):
        if len(t):
            assert_close(sent[i], t.mean(0), atol=1e-5, rtol=1e-5)
    one = model.encode(
        "alpha beta",
        output_value="token_embeddings",
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    assert isinstance(one, np.ndarray) and one.ndim == 2
    with pytest.raises(ValueError, match="unknown output_value"):
        model.encode(["a"], output_value="logits")
    with pytest.raises(ValueError, match="sentence embeddings only"):
        model.encode(["a"], output_value="token_embeddings", normalize_embeddings=True)


def test_auto_kernels_keep_torch_on_the_cpu(llama_dir, monkeypatch):
    """attn_implementation="auto" (the default) runs the Triton kernel check on a CUDA device
    in half precision only (tests/interpret/test_kernel_check.py runs the check itself); on the
    CPU, or with LLM2VEC_FAST_KERNELS=torch, torch's path is kept without checking."""
    calls = []
    monkeypatch.setattr(EncoderRunner, "check_kernels", lambda self, *a: calls.append(1))
    model = LLM2Vec.from_pretrained(llama_dir, device="cpu", torch_dtype="bfloat16")
    assert model.model.attn_implementation == "sdpa" and not calls
    assert model.load_spec.attn_implementation == "auto"
    model.to("cpu")  # a move chooses again (cached per device and dtype)
    assert model.model.attn_implementation == "sdpa" and not calls
    assert model.select_kernels(check_on_cpu=True) == "triton" and calls == [1]  # None: passed
    monkeypatch.setenv("LLM2VEC_FAST_KERNELS", "torch")
    assert model.select_kernels(check_on_cpu=True) == "sdpa" and calls == [1]
    explicit = LLM2Vec.from_pretrained(llama_dir, device="cpu", attn_implementation="eager")
    assert explicit.model.attn_implementation == "eager"
    explicit.to("cpu")
    assert explicit.model.attn_implementation == "eager"
