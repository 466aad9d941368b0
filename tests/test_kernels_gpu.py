"""The Triton kernels on a CUDA GPU, at the real shapes, against float64 references.

Every test is marked ``gpu`` and skipped without CUDA (and under ``TRITON_INTERPRET=1``, which
would run the kernels interpreted). Low-precision results follow flash-attention's rule
(:func:`l2vf_support.numerics.assert_close_2x`): the error against the float64 reference may be at
most 2x the error of plain PyTorch in the same dtype, plus a small floor. float32 runs with TF32
disabled (the kernels' float32 dots are IEEE) against the float32/float64 references.

Run on the GPU machine: ``python -m pytest tests/test_kernels_gpu.py -m gpu -q``.
"""

from __future__ import annotations

import math

import pytest
import torch

from l2vf_support.gpu import COMPILED_ON_GPU

pytestmark = COMPILED_ON_GPU

triton = pytest.importorskip("triton")

from l2vf_support.gpu import DEVICE, attention_case, cu_seqlens, randn_heads  # noqa: E402
from l2vf_support.numerics import assert_close_2x  # noqa: E402
from l2vf_support.packed import mixed_lengths  # noqa: E402
from llm2vec_fast.kernels import (  # noqa: E402
    apply_rope,
    flash_varlen_attention,
    gated_act,
    gated_act_ref,
    rms_norm,
    rms_norm_ref,
    rope_ref,
    segment_pool,
    segment_pool_ref,
    varlen_attention_sdpa,
)

# dtype with its floor (atol): the 2x rule carries the real tolerance
LOW = [
    pytest.param(torch.bfloat16, 1e-3, id="bf16"),
    pytest.param(torch.float16, 2e-4, id="fp16"),
]
HEAD_DIMS = [64, 80, 96, 128, 256]
HEADS = [  # (query heads, kv heads): MHA, GQA 4:1, GQA 8:1
    pytest.param(8, 8, id="mha8"),
    pytest.param(16, 4, id="gqa4to1"),
    pytest.param(32, 4, id="gqa8to1"),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 off for every test (float32 references must be float32)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _fwd_bwd(fn, inputs, dout, *args):
    """(output, grads of <output, dout> w.r.t. inputs); fn may return a tuple (dout then too)."""
    leaves = _leaves(*inputs)
    out = fn(*leaves, *args)
    outs = out if isinstance(out, tuple) else (out,)
    douts = dout if isinstance(dout, tuple) else (dout,)
    grads = torch.autograd.grad(outs, leaves, douts)
    return out, grads


# ---- varlen flash attention -----------------------------------------------------------------


def _attention_f64(q, k, v, cu_seqlens, max_seqlen=None, causal=False, scale=None):
    """float64 per-text attention on the GPU (q, k, v already float64)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    groups = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e == s:
            continue
        qs = q[s:e].transpose(0, 1)
        ks = k[s:e].transpose(0, 1).repeat_interleave(groups, 0)
        vs = v[s:e].transpose(0, 1).repeat_interleave(groups, 0)
        w = qs @ ks.transpose(1, 2) * scale
        if causal:
            n = e - s
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            w = w.masked_fill(mask, -math.inf)
        outs.append((w.softmax(-1) @ vs).transpose(0, 1))
    return torch.cat(outs)


def _check_attention(dtype, atol, hq, hkv, d, lengths, causal, seed, ref_fn):
    q, k, v, do, cu, mx = attention_case(dtype, hq, hkv, d, lengths, seed)
    out, grads = _fwd_bwd(flash_varlen_attention, (q, k, v), do, cu, mx, causal)
    # the same function in the same dtype through plain PyTorch: the baseline error
    ref, ref_grads = _fwd_bwd(ref_fn, (q, k, v), do, cu, mx, causal)
    ref64, ref64_grads = _fwd_bwd(
        _attention_f64, tuple(t.double() for t in (q, k, v)), do.double(), cu, mx, causal
    )
    tag = f"D={d} Hq={hq} Hkv={hkv} causal={causal}"
    assert_close_2x(out, ref, ref64, atol=atol, rtol=0, what=f"out {tag}")
    for name, g, r, r64 in zip(("dq", "dk", "dv"), grads, ref_grads, ref64_grads):
        assert torch.isfinite(g).all(), f"{name} {tag}: NaN/inf"
        assert_close_2x(g, r, r64, atol=atol, rtol=0, what=f"{name} {tag}")


@pytest.mark.parametrize("hq, hkv", HEADS)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype, atol", LOW)
def test_flash_varlen_low_precision(dtype, atol, d, hq, hkv):
    _check_attention(
        dtype, atol, hq, hkv, d, mixed_lengths(seed=d + hq), False, d * 7 + hq,
        varlen_attention_sdpa,
    )  # fmt: skip


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype, atol", LOW)
def test_flash_varlen_causal(dtype, atol, d):
    _check_attention(
        dtype, atol, 16, 4, d, mixed_lengths(seed=d, short=24), True, d, varlen_attention_sdpa
    )


@pytest.mark.parametrize("d", [59, 64, 80, 128, 256])
def test_flash_varlen_fp32_no_tf32(d):
    """float32 (IEEE dots) against torch's float32 SDPA per text, TF32 off."""
    _check_attention(
        torch.float32, 1e-5, 8, 2, d, mixed_lengths(seed=d, short=16, long=1), False, d,
        varlen_attention_sdpa,
    )  # fmt: skip


def test_flash_varlen_writes_every_row_and_strided_views():
    """Every output row is written (the output's memory is first poisoned with NaN through the
    caching allocator); views of a fused QKV projection (token stride (Hq + 2 Hkv) D) give the
    same result as contiguous copies."""
    lengths = mixed_lengths(seed=11)
    total, hq, hkv, d = sum(lengths), 32, 8, 128
    qkv = torch.randn(total, hq + 2 * hkv, d, device=DEVICE, dtype=torch.bfloat16)
    q, k, v = qkv.split([hq, hkv, hkv], dim=1)
    cu = cu_seqlens(lengths)
    poison = torch.full((total, hq, d), float("nan"), device=DEVICE, dtype=torch.bfloat16)
    del poison  # the next allocation of this size reuses the NaN-filled block
    out = flash_varlen_attention(q, k, v, cu, max(lengths))
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(
        out, flash_varlen_attention(q.contiguous(), k.contiguous(), v.contiguous(), cu, 512)
    )


def test_custom_op_on_cuda_matches_dispatcher():
    """``ops.varlen_attention`` on bf16 CUDA tensors runs the Triton path: the same output and
    gradients as :func:`flash_varlen_attention`, also inside ``torch.compile(fullgraph=True)``."""
    from llm2vec_fast.kernels import ops

    q, k, v, do, cu, mx = attention_case(torch.bfloat16, 32, 8, 128, mixed_lengths(seed=5), 5)
    out, grads = _fwd_bwd(ops.varlen_attention, (q, k, v), do, cu, mx)
    ref, ref_grads = _fwd_bwd(flash_varlen_attention, (q, k, v), do, cu, mx)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=0, rtol=0)
    compiled = torch.compile(
        lambda q, k, v: ops.varlen_attention(q, k, v, cu, mx), backend="aot_eager", fullgraph=True
    )
    torch.testing.assert_close(compiled(q, k, v), ref, atol=0, rtol=0)


def test_segment_pool_custom_op_on_cuda_matches_dispatcher():
    """``ops.segment_pool`` on CUDA: the Triton kernels' output and gradient, as the package's
    entry point and as the launchers called by hand (forward's aux into the backward)."""
    from llm2vec_fast.kernels import ops
    from llm2vec_fast.kernels.pooling import mask_bytes, segment_pool_bwd, segment_pool_fwd

    lengths = [n for n in mixed_lengths(seed=8) if n]
    cu, total = cu_seqlens(lengths), sum(lengths)
    g = torch.Generator(device=DEVICE).manual_seed(8)
    hidden = torch.randn(total, 4096, device=DEVICE, dtype=torch.bfloat16, generator=g)
    mask = torch.rand(total, device=DEVICE, generator=g) > 0.2
    mask[cu[:-1].long()] = True
    dout = torch.randn(len(lengths), 4096, device=DEVICE, generator=g)
    for mode in ("mean", "weighted_mean", "last_token", "bos_token"):
        out, grads = _fwd_bwd(ops.segment_pool, (hidden,), dout, cu, mask, mode)
        ref, ref_grads = _fwd_bwd(segment_pool, (hidden,), dout, cu, mask, mode)
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
        torch.testing.assert_close(grads[0], ref_grads[0], atol=0, rtol=0)
        mask_u8 = mask_bytes(mask, hidden.device)
        launched, aux = segment_pool_fwd(hidden, cu, mask_u8, mode)
        d_hidden = segment_pool_bwd(dout, aux, cu, mask_u8, mode, total, hidden.dtype)
        torch.testing.assert_close(out, launched, atol=0, rtol=0)
        torch.testing.assert_close(grads[0], d_hidden, atol=0, rtol=0)


# ---- RMSNorm --------------------------------------------------------------------------------


@pytest.mark.parametrize("h", [576, 4096, 5120])
@pytest.mark.parametrize("gemma", [False, True])
@pytest.mark.parametrize("dtype, atol", LOW)
def test_rms_norm_low_precision(dtype, atol, gemma, h):
    g = torch.Generator(device=DEVICE).manual_seed(h)
    rows = 1037  # odd
    x = torch.randn(rows, h, device=DEVICE, dtype=dtype, generator=g) * 3
    w = (torch.rand(h, device=DEVICE, generator=g) + 0.5).to(dtype)
    dy = torch.randn(rows, h, device=DEVICE, dtype=dtype, generator=g)
    out, grads = _fwd_bwd(rms_norm, (x, w), dy, 1e-6, gemma)
    ref, ref_grads = _fwd_bwd(rms_norm_ref, (x, w), dy, 1e-6, gemma)
    ref64, ref64_grads = _fwd_bwd(rms_norm_ref, (x.double(), w.double()), dy.double(), 1e-6, gemma)
    assert out.dtype == ref.dtype
    assert_close_2x(out, ref, ref64, atol=atol, rtol=0, what="y")
    # dweight sums 1037 rows: a relative floor
    for name, gr, r, r64 in zip(("dx", "dweight"), grads, ref_grads, ref64_grads):
        assert_close_2x(gr, r, r64, atol=atol, rtol=1e-2, what=name)


def test_rms_norm_fp32_no_tf32():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(513, 4096, device=DEVICE, generator=g)
    w = torch.rand(4096, device=DEVICE, generator=g) + 0.5
    dy = torch.randn(513, 4096, device=DEVICE, generator=g)
    out, grads = _fwd_bwd(rms_norm, (x, w), dy, 1e-5)
    ref64, ref64_grads = _fwd_bwd(rms_norm_ref, (x.double(), w.double()), dy.double(), 1e-5)
    torch.testing.assert_close(out.double(), ref64, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0].double(), ref64_grads[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1].double(), ref64_grads[1], atol=1e-3, rtol=1e-4)


# ---- RoPE -----------------------------------------------------------------------------------


def _rope_case(dtype, hq, hkv, d, theta, seed):
    lengths = mixed_lengths(seed=seed)
    q, k, dq, dk = randn_heads(sum(lengths), (hq, hkv, hq, hkv), d, dtype, seed)
    pos = torch.cat([torch.arange(n) for n in lengths]).to(DEVICE)
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=DEVICE) / d))
    return q, k, dq, dk, pos, inv_freq


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype, atol", LOW)
def test_rope_low_precision(dtype, atol, d):
    q, k, dq, dk, pos, inv_freq = _rope_case(dtype, 32, 8, d, 10000.0, d)
    out, grads = _fwd_bwd(apply_rope, (q, k), (dq, dk), pos, inv_freq, 1.0)
    ref, ref_grads = _fwd_bwd(rope_ref, (q, k), (dq, dk), pos, inv_freq, 1.0)
    ref64, ref64_grads = _fwd_bwd(
        rope_ref, (q.double(), k.double()), (dq.double(), dk.double()), pos, inv_freq, 1.0
    )
    for name, o, r, r64 in zip(
        ("q_out", "k_out", "dq", "dk"), (*out, *grads), (*ref, *ref_grads), (*ref64, *ref64_grads)
    ):
        assert o.dtype == r.dtype, name
        assert_close_2x(o, r, r64, atol=atol, rtol=0, what=f"{name} D={d}")


def test_rope_fp32_no_tf32():
    q, k, dq, dk, pos, inv_freq = _rope_case(torch.float32, 9, 3, 64, 100000.0, 1)
    out, grads = _fwd_bwd(apply_rope, (q, k), (dq, dk), pos, inv_freq, 1.0)
    ref, ref_grads = _fwd_bwd(rope_ref, (q, k), (dq, dk), pos, inv_freq, 1.0)
    for o, r in zip((*out, *grads), (*ref, *ref_grads)):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)


# ---- gated activation -----------------------------------------------------------------------


@pytest.mark.parametrize("i", [1536, 11008, 14336])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype, atol", LOW)
def test_gated_act_low_precision(dtype, atol, activation, i):
    g = torch.Generator(device=DEVICE).manual_seed(i)
    rows = 517
    gate = torch.randn(rows, i, device=DEVICE, dtype=dtype, generator=g) * 2
    up = torch.randn(rows, i, device=DEVICE, dtype=dtype, generator=g)
    dy = torch.randn(rows, i, device=DEVICE, dtype=dtype, generator=g)
    out, grads = _fwd_bwd(gated_act, (gate, up), dy, activation)
    ref, ref_grads = _fwd_bwd(gated_act_ref, (gate, up), dy, activation)
    ref64, ref64_grads = _fwd_bwd(
        gated_act_ref, (gate.double(), up.double()), dy.double(), activation
    )
    assert_close_2x(out, ref, ref64, atol=atol, rtol=0, what="y")
    for name, gr, r, r64 in zip(("dgate", "dup"), grads, ref_grads, ref64_grads):
        assert_close_2x(gr, r, r64, atol=atol, rtol=0, what=name)


def test_gated_act_fused_halves_and_fp32():
    """Views of a fused gate_up output ``[T, 2I]`` (row stride 2I); float32 against torch."""
    g = torch.Generator(device=DEVICE).manual_seed(3)
    gu = torch.randn(301, 2 * 11008, device=DEVICE, generator=g)
    gate, up = gu.chunk(2, dim=-1)
    torch.testing.assert_close(gated_act(gate, up), gated_act_ref(gate, up), atol=1e-6, rtol=1e-5)
    dy = torch.randn(301, 11008, device=DEVICE, generator=g)
    _, grads = _fwd_bwd(gated_act, (gate, up), dy, "silu")
    _, ref_grads = _fwd_bwd(gated_act_ref, (gate, up), dy, "silu")
    for gr, r in zip(grads, ref_grads):
        torch.testing.assert_close(gr, r, atol=1e-5, rtol=1e-5)


# ---- segment pooling ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "last_token", "bos_token"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_segment_pool_cuda(dtype, mode):
    """Pooling accumulates in float32 whatever the input dtype: float32-accurate output, and a
    gradient off the float64 one by the rounding to the input dtype only."""
    lengths = [n for n in mixed_lengths(seed=2) if n]  # last_token/bos_token need tokens
    cu = cu_seqlens(lengths)
    total = sum(lengths)
    g = torch.Generator(device=DEVICE).manual_seed(2)
    hidden = torch.randn(total, 4096, device=DEVICE, dtype=dtype, generator=g)
    mask = torch.rand(total, device=DEVICE, generator=g) > 0.2
    mask[cu[:-1].long()] = True
    dout = torch.randn(len(lengths), 4096, device=DEVICE, generator=g)
    out, (gr,) = _fwd_bwd(segment_pool, (hidden,), dout, cu, mask, mode)
    assert out.dtype == torch.float32 and out.shape == (len(lengths), 4096)
    ref64, (r64,) = _fwd_bwd(segment_pool_ref, (hidden.double(),), dout.double(), cu, mask, mode)
    torch.testing.assert_close(out.double(), ref64, atol=1e-5, rtol=1e-5)
    assert gr.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(gr.double(), r64, atol=1e-6, rtol=eps)


# ---- the whole encoder ----------------------------------------------------------------------

TEXTS = [
    "a",
    "The capital of France is Paris.",
    "Packed attention never computes a padded position " * 12,
    "short",
    "LLM2Vec turns a decoder-only language model into a text encoder " * 6,
    "bidirectional attention, masked next-token prediction and SimCSE",
]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma"])
def test_encoder_triton_matches_sdpa_bf16(tmp_path, family):
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.testing import make_tiny_checkpoint

    heads, kv = (8, 2) if family != "gemma" else (4, 1)
    path = make_tiny_checkpoint(
        tmp_path / family, family, seed=7, hidden_size=512, num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=512 // heads, intermediate_size=1376,
        num_hidden_layers=3,
    )  # fmt: skip

    def embed(impl, dtype):
        model = LLM2Vec.from_pretrained(
            path, device="cuda", torch_dtype=dtype, attn_implementation=impl
        )
        return model.encode(TEXTS, show_progress_bar=False, convert_to_tensor=True).float()

    ours = embed("triton", torch.bfloat16)
    base = embed("sdpa", torch.bfloat16)
    truth = embed("sdpa", torch.float32)  # TF32 off: the float32 model as the reference
    assert torch.isfinite(ours).all()
    assert_close_2x(ours, base, truth.double(), atol=2e-3, rtol=0, what=f"{family} embeddings")
    cos = torch.nn.functional.cosine_similarity(ours, truth, dim=-1)
    assert cos.min() > 0.999, cos
