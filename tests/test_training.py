"""Training: the fused linear cross-entropy, MNTP masking and its loss against HF's causal-LM
loss, the contrastive loss, GradCache, each objective learning on a tiny model, saved adapters
reloading, resume continuing the same loss curve, and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

import llm2vec_fast.training.losses as losses_mod
from l2vf_support.training_data import train_argv, train_config, write_training_dir
from llm2vec_fast import LLM2Vec
from llm2vec_fast.cli import main as cli_main
from llm2vec_fast.loading import build_encoder
from llm2vec_fast.packing import PackedBatch
from llm2vec_fast.training import (
    contrastive_loss,
    linear_cross_entropy,
    mntp_loss,
    mntp_mask,
    train,
)
from llm2vec_fast.training.objectives import Supervised, gradcache_loss
from llm2vec_fast.training.trainer import build_model

# ---------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,vocab,chunk", [(1, 7, 1), (37, 101, 5), (64, 300, 64), (50, 97, 7)])
@pytest.mark.parametrize("train_weight", [False, True])
def test_linear_cross_entropy_matches_torch(dtype, n, vocab, chunk, train_weight):
    g = torch.Generator().manual_seed(n * 1000 + vocab)
    x = torch.randn(n, 24, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(vocab, 24, generator=g, dtype=dtype, requires_grad=train_weight)
    b = torch.randn(vocab, generator=g, dtype=dtype, requires_grad=train_weight)
    y = torch.randint(0, vocab, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.3] = -100
    ours = linear_cross_entropy(x, w, y, b, chunk_size=chunk)
    grads = torch.autograd.grad(ours * 1.7, [x, w, b] if train_weight else [x])
    ref = F.cross_entropy((x @ w.t() + b).float(), y)
    ref_grads = torch.autograd.grad(ref * 1.7, [x, w, b] if train_weight else [x])
    tol = dict(rtol=1e-5, atol=1e-6)
    if (y == -100).all():
        assert float(ours) == 0.0
    else:
        assert_close(ours.double(), ref.double(), **tol)
    for a, r in zip(grads, ref_grads):
        assert_close(a.double(), r.double().nan_to_num(0.0), **tol)


def test_linear_cross_entropy_never_builds_the_full_logits(monkeypatch):
    """A 128k vocabulary: no matmul inside the loss produces more than ``chunk`` rows."""
    shapes = []
    real_linear = F.linear

    def spy(x, w, b=None):
        out = real_linear(x, w, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(losses_mod.F, "linear", spy)
    x = torch.randn(300, 16, requires_grad=True)
    w = torch.randn(128_256, 16)
    y = torch.randint(0, 128_256, (300,))
    loss = linear_cross_entropy(x, w, y, chunk_size=64)
    loss.backward()
    assert shapes and max(s[0] for s in shapes) <= 64 and all(s[1] == 128_256 for s in shapes)
    # the default chunk keeps one float32 block at 256 MiB or less
    assert losses_mod._chunk_rows(128_256, None) * 128_256 * 4 <= 256 << 20


def test_linear_cross_entropy_bad_shapes():
    with pytest.raises(ValueError, match=r"x must be \[N, H\]"):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 3), torch.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="target must be"):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=int))


def _hard_negative_nll_reference(q, d, neg, scale):
    """The official HardNegativeNLLLoss, written out with loops."""
    docs = torch.cat([d, neg]) if neg is not None else d
    total = 0.0
    for i in range(len(q)):
        sims = torch.stack(
            [F.cosine_similarity(q[i], docs[j], dim=0) * scale for j in range(len(docs))]
        )
        total = total - torch.log_softmax(sims, 0)[i]
    return total / len(q)


@pytest.mark.parametrize("with_neg", [False, True])
def test_contrastive_loss_matches_reference(with_neg):
    g = torch.Generator().manual_seed(3)
    q, d = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    neg = torch.randn(12, 8, generator=g) if with_neg else None
    assert_close(
        contrastive_loss(q, d, neg, scale=50.0), _hard_negative_nll_reference(q, d, neg, 50.0)
    )


# ---------------------------------------------------------------------------------- MNTP


def test_mntp_mask_rules():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (20_000,), generator=g)
    ids[::50] = 1  # a special token
    special = torch.tensor([1, 2])
    inputs, labels = mntp_mask(
        ids, special, probability=0.2, mask_token_id=5, vocab_size=1000, generator=g
    )
    sel = labels != -100
    assert not sel[ids == 1].any()  # special tokens are never selected
    assert torch.equal(labels[sel], ids[sel]) and torch.equal(inputs[~sel], ids[~sel])
    share = sel[ids != 1].float().mean()
    assert abs(float(share) - 0.2) < 0.015
    masked = (inputs[sel] == 5).float().mean()
    kept = (inputs[sel] == ids[sel]).float().mean()
    assert abs(float(masked) - 0.8) < 0.03 and abs(float(kept) - 0.1) < 0.03
    inputs, labels = mntp_mask(
        ids, special, probability=0.8, mask_token_id=5, vocab_size=1000, all_mask=True,
        generator=g,
    )  # fmt: skip
    sel = labels != -100
    assert (inputs[sel] == 5).all() and abs(float(sel[ids != 1].float().mean()) - 0.8) < 0.02


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mntp_loss_equals_hf_causal_lm_loss_per_text(seed):
    """Packed MNTP loss over several texts == HF LlamaForCausalLM(labels=...) with a
    bidirectional mask, run on each text alone (token-weighted), so the shift stays inside each
    text and no first position is predicted."""
    cfg = LlamaConfig(
        hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=211, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = build_encoder(cfg, hf.model.state_dict())
    g = torch.Generator().manual_seed(seed)
    lengths = [9, 1, 17, 4, 30][seed:] + [6]
    texts = [torch.randint(3, 211, (n,), generator=g).tolist() for n in lengths]
    packed = PackedBatch.in_order(texts)
    inputs, labels = mntp_mask(
        packed.input_ids, torch.tensor([0, 1, 2]), probability=0.4, mask_token_id=2,
        vocab_size=211, generator=g,
    )  # fmt: skip
    labels[packed.cu_seqlens[:-1].long()] = packed.input_ids[packed.cu_seqlens[:-1].long()]
    with torch.no_grad():
        hidden = ours(inputs, packed.cu_seqlens, packed.position_ids, packed.max_seqlen)
        loss, count = mntp_loss(hidden, hf.lm_head.weight, labels, packed.cu_seqlens)
    total, n_total = 0.0, 0
    cu = packed.cu_seqlens.tolist()
    for a, b in zip(cu[:-1], cu[1:]):
        lab = labels[a:b]
        n = int((lab[1:] != -100).sum())  # HF shifts: position 0 is never predicted
        if n == 0:
            continue
        mask = torch.ones(1, 1, b - a, b - a, dtype=torch.bool)
        with torch.no_grad():
            out = hf(input_ids=inputs[a:b][None], attention_mask=mask, labels=lab[None])
        total += float(out.loss) * n
        n_total += n
    assert count == n_total > 0
    assert abs(float(loss) - total / n_total) < 1e-5


# ---------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_training_dir(tmp_path_factory.mktemp("train"), seed=0)


config = train_config


@pytest.mark.parametrize("objective", ["mntp", "simcse", "supervised"])
def test_each_objective_learns(objective, tiny, tmp_path):
    s = train(config(tiny, objective, tmp_path / objective, max_steps=30))
    first, last = np.mean(s["losses"][:5]), np.mean(s["losses"][-5:])
    assert s["steps"] == 30 and last < 0.9 * first, s["losses"]
    log = [
        json.loads(x) for x in (tmp_path / objective / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 31))
    assert log[-1]["lr"] < log[0]["lr"]  # the linear schedule decays


def test_simcse_without_dropout_gives_the_degenerate_loss(tiny, tmp_path):
    """Dropout off: both views are the same embedding, so the loss is
    mean_i(logsumexp_j(20 cos(e_i, e_j)) - 20), computed here from encode()."""
    cfg = config(tiny, "simcse", tmp_path / "s", attention_dropout=0.0, lora_dropout=0.0)
    enc, _ = build_model(cfg)
    texts = ["the river bank", "money loan fast", "green idea sleeps", "walk slow of the"]
    from llm2vec_fast.training.objectives import SimCSE

    obj = SimCSE(enc, cfg)
    enc.model.train()
    loss = obj.loss(obj.prepare(texts)).detach()
    e = torch.tensor(enc.encode(texts, convert_to_numpy=True, show_progress_bar=False))
    sims = F.normalize(e, dim=1) @ F.normalize(e, dim=1).t() * 20
    expected = (torch.logsumexp(sims, 1) - sims.diagonal()).mean()
    assert abs(float(loss) - float(expected)) < 1e-4
    assert float(loss) > 0.0


def test_gradcache_gives_the_full_batch_gradient(tiny, tmp_path):
    cfg = config(tiny, "supervised", tmp_path / "g", lora_dropout=0.0)
    enc, _ = build_model(cfg)
    for p in enc.model.parameters():  # LoRA B starts at zero: give it values
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    obj = Supervised(enc, cfg)
    obj.forward = lambda pk: enc.model(pk.input_ids, pk.cu_seqlens, pk.position_ids, pk.max_seqlen)
    from llm2vec_fast.training.data import iter_triples

    triples = list(iter_triples(tiny / "triples.jsonl"))[:6]
    enc.model.train()
    params = [p for p in enc.model.parameters() if p.requires_grad]
    full = obj.loss(obj.prepare(triples))
    full_grads = torch.autograd.grad(full, params)
    loss = gradcache_loss(obj, obj.pairs(triples), 4, lambda t: t.backward())
    assert abs(float(loss) - float(full.detach())) < 1e-5
    for p, g in zip(params, full_grads):
        assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------- outputs


def test_saved_adapter_reloads_to_the_same_embeddings(tiny, tmp_path):
    out = tmp_path / "mntp"
    train(config(tiny, "mntp", out, max_steps=6))
    keys = json.loads((out / "adapter_config.json").read_text())
    assert set(keys["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all(n.startswith("base_model.model.layers.") for n in names)
    assert json.loads((out / "llm2vec_config.json").read_text())["pooling_mode"] == "mean"
    # the adapter really changes the model, and reloads to what training left in memory
    texts = ["the river bank", "money loan fast and slow"]
    base = LLM2Vec.from_pretrained(str(tiny / "model"))
    merged = LLM2Vec.from_pretrained(str(tiny / "model"), peft_model_name_or_path=str(out))
    a = base.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    b = merged.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    assert np.abs(a - b).max() > 1e-4
    cfg = config(tiny, "mntp", tmp_path / "again", max_steps=6)
    enc, _ = build_model(cfg)
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(enc.model, load_file(str(out / "adapter_model.safetensors")))
    c = enc.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(b, c, atol=1e-5, rtol=0)
    # SimCSE on top of the merged MNTP model: the published two-adapter layout
    train(config(tiny, "simcse", tmp_path / "simcse", max_steps=3, peft=[str(out)]))
    both = LLM2Vec.from_pretrained(
        str(tiny / "model"), peft_model_name_or_path=[str(out), str(tmp_path / "simcse")]
    )
    assert both.encode(texts, convert_to_numpy=True, show_progress_bar=False).shape == a.shape


@pytest.mark.parametrize("objective", ["mntp", "simcse"])
def test_resume_continues_the_same_loss_curve(objective, tiny, tmp_path):
    full = train(config(tiny, objective, tmp_path / "full", max_steps=10, save_steps=4))
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-4", part / "checkpoint-4")
    resumed = train(config(tiny, objective, part, max_steps=10, save_steps=4, resume=True))
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert resumed["losses"][:4] == full["losses"][:4]  # the log carried over
    np.testing.assert_allclose(resumed["losses"][4:], full["losses"][4:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="settings differ.*learning_rate"):
        train(config(tiny, objective, part, max_steps=10, resume=True, learning_rate=1e-4))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(config(tiny, objective, part, max_steps=10))


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_resume_of_a_finished_run_says_complete_and_changes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "done"
    argv = train_argv(tiny, "mntp", out, 3, "--save-steps", "2")
    assert cli_main(argv) == 0
    assert "trained mntp: 3 steps" in capsys.readouterr().out
    before = _tree(out)
    assert {"checkpoint-2/trainer_state.json", "checkpoint-3/trainer_state.json"} <= set(before)
    final_loss = json.loads((out / "train_summary.json").read_text())["final_loss"]

    assert cli_main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "is complete (3 steps" in printed and "nothing changed" in printed, printed
    assert f"final loss {final_loss:.4f}" in printed and "nan" not in printed.lower()
    assert _tree(out) == before  # every file byte-identical, none rewritten, none added

    same = dict(max_steps=3, save_steps=2, batch_size=4, max_seq_length=16, learning_rate=5e-5)
    s = train(config(tiny, "mntp", out, resume=True, **same))  # the Python API alike
    assert s["already_complete"] and s["steps"] == 3 and len(s["losses"]) == 3
    assert s["final_loss"] == pytest.approx(final_loss)
    assert _tree(out) == before
    # a finished run still refuses changed settings
    with pytest.raises(ValueError, match="settings differ.*learning_rate"):
        train(config(tiny, "mntp", out, resume=True, **{**same, "learning_rate": 1e-4}))


def test_train_command_line(tiny, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = train_argv(tiny, "mntp", out, 3, "--all-mask", "--mlm-probability", "0.5")
    assert cli_main(argv) == 0
    assert "trained mntp: 3 steps" in capsys.readouterr().out
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["tokens_per_second"] > 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["all_mask"] and saved["mlm_probability"] == 0.5
    bad = ["train", "supervised", "--data", str(tiny / "texts.txt"), "--output", str(tmp_path / "b"),
           "--model", str(tiny / "model"), "--max-steps", "1", "-q"]  # fmt: skip
    assert cli_main(bad) == 2
    assert "supervised data must be .jsonl" in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_gradients(tiny, tmp_path):
    grads = []
    for ckpt in (False, True):
        cfg = config(tiny, "mntp", tmp_path / f"c{ckpt}", lora_dropout=0.0, mlm_probability=0.5)
        cfg.gradient_checkpointing = ckpt
        enc, head = build_model(cfg)
        torch.manual_seed(0)
        for p in enc.model.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.05)
        from llm2vec_fast.training.objectives import MNTP

        obj = MNTP(enc, cfg, head, torch.Generator().manual_seed(1))
        enc.model.train()
        texts = ["the river bank of money", "green idea sleeps", "walk"]
        packed = obj.prepare(enc.tokenizer(texts)["input_ids"])
        params = [p for p in enc.model.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(obj.loss(packed), params))
    for a, b in zip(*grads):
        assert_close(a, b, rtol=1e-5, atol=1e-7)


OFFICIAL_PY = Path(__file__).resolve().parents[1] / "bench" / ".venv-official" / "bin" / "python"


@pytest.mark.skipif(
    not OFFICIAL_PY.exists(),
    reason="needs the official llm2vec in bench/.venv-official (bash bench/setup_official_env.sh)",
)
def test_the_official_library_loads_a_trained_adapter(tiny, tmp_path):
    import subprocess

    out = tmp_path / "mntp"
    train(config(tiny, "mntp", out, max_steps=4))
    texts = ["the river bank", "money loan fast and slow", "green idea"]
    job = {
        "model": str(tiny / "model"),
        "peft": str(out),
        "merge_peft": True,
        "cases": [{"name": "plain", "sentences": texts}],
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    runner = Path(__file__).resolve().parents[1] / "bench" / "official_runner.py"
    subprocess.run(
        [str(OFFICIAL_PY), str(runner), str(tmp_path / "job.json"), str(tmp_path / "o.npz")],
        check=True,
        capture_output=True,
    )
    official = np.load(tmp_path / "o.npz", allow_pickle=False)
    key = next(k for k in official.files if k.endswith("embeddings"))
    ours = LLM2Vec.from_pretrained(str(tiny / "model"), peft_model_name_or_path=str(out))
    mine = ours.encode(texts, convert_to_numpy=True, show_progress_bar=False)
    theirs = official[key]
    rel = np.linalg.norm(mine - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    assert rel.max() < 1e-5, rel


def test_data_parallel_training_under_torchrun(tiny, tmp_path):
    """Two CPU ranks (gloo) through torchrun: accelerate's DDP, each rank its own batches, the
    contrastive loss over both ranks' embeddings; one output, written by rank 0."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "-m", "llm2vec_fast.cli", "train", "simcse", "--data", str(tiny / "texts.txt"),
        "--output", str(out), "--model", str(tiny / "model"), "--max-steps", "3",
        "--batch-size", "4", "--max-seq-length", "16", "--device", "cpu", "-q",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained simcse: 3 steps") == 1  # rank 0 only
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("objective", ["mntp", "simcse"])
def test_bf16_autocast_over_float32_weights(objective, tiny, tmp_path):
    """--bf16 with the default float32 base: autocast hands SDPA float32 q/k/v and gets
    bfloat16 back (the attention output takes SDPA's dtype)."""
    s = train(config(tiny, objective, tmp_path / objective, max_steps=3, bf16=True))
    assert s["steps"] == 3 and all(np.isfinite(s["losses"]))
