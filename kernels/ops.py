"""The kernels as torch custom ops (``torch.ops.llm2vec_fast.*``): the one differentiable path of
every kernel, which the model, training and ``torch.compile`` all use.

Each kernel is a pair of custom ops at forward/backward granularity, as flash-attention defines
``_flash_attn_varlen_forward`` / ``_backward``. The forward op returns what its backward needs
beside the output; ``register_autograd`` on the forward op, the only autograd registration,
saves it and calls the backward op; ``register_fake`` gives every output's shape and dtype
without running anything::

    forward op                  returns (what the backward needs beside the inputs)
    varlen_attention_forward    out [T, Hq, D], lse [Hq, T] float32 (the dropout seed and offset
                                are options of the op: see below)
    segment_pool_forward        out [n, H] float32, aux [n] int32 (the kernel's per-text counts)
    rms_norm_forward            y, rstd [rows] float32
    apply_rope_forward          (q_out, k_out): the backward is the rotation by -angle
    gated_act_forward           act(gate) * up: the backward needs gate and up
    latent_attention_forward    out [T, H, D], lse [H, T] (defined in :mod:`.latent_ops`)

``<name>_backward`` takes the output gradients and the saved tensors. No backward reruns its
forward: the attention backward recomputes P from the LSE (the flash algorithm) and regenerates
the dropout mask from its seed; RMSNorm's uses ``rstd``, pooling's ``aux``. Gradients flow to the
floating-point tensor inputs; index tensors, options and the auxiliary outputs (lse, aux, rstd)
get none. Double backward is not supported.

Each op runs the Triton kernels for CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``),
the PyTorch code beside each kernel otherwise: :mod:`.attention` (the flash algorithm in PyTorch,
with the LSE), :mod:`.rms_norm` (forward and backward), :mod:`.rope` (the reference, by minus the angles backward), and, for pooling and the
gated activation, ``torch.func.vjp`` of the reference (pooling is linear in hidden; the
activation's derivative needs ``act(gate)``, which the Triton backward recomputes too). Attention
keeps float32 CUDA tensors on the PyTorch path unless asked for the flash kernel
(:func:`flash_varlen_attention`): float32 there is for correctness, not speed.

Dropout: the mask is a function of ``(seed, offset)``, both arguments of the forward op, so the
backward op, given the same, regenerates it. The Python entry points draw a seed per call when
none is given (:func:`llm2vec_fast.kernels.dropout_seeds.draw_dropout_seed`, outside any compiled
graph). The forward op does not draw it itself: the kernels take the seed as a launch argument,
and one read back from a tensor would cost a host synchronisation per call.

Registration is idempotent: an op already in ``torch.ops.llm2vec_fast`` (this file imported under
a second module name) is reused, not defined again (older torch raises on a second definition,
newer torch silently replaces the first). The project imports it only as
``llm2vec_fast.kernels.ops``.
"""

from __future__ import annotations

import torch

from ._launch import INTERPRET, use_triton
from .attention import varlen_attention_bwd_torch, varlen_attention_fwd_torch
from .dropout_seeds import draw_dropout_seed
from .flash_varlen import flash_varlen_bwd, flash_varlen_fwd
from .glu import gated_act_bwd, gated_act_fwd, gated_act_ref
from .op_registry import define_pair, get_op
from .pooling import (
    mask_bytes,
    segment_pool_bwd,
    segment_pool_fwd,
    segment_pool_prepare,
    segment_pool_ref,
)
from .rms_norm import rms_norm_bwd, rms_norm_bwd_torch, rms_norm_fwd, rms_norm_fwd_torch
from .rope import rope_bwd, rope_fwd, rope_ref
from .varlen import SCHEMA as VARLEN_SCHEMA
from .varlen import SIGNATURE as VARLEN_SIGNATURE
from .varlen import Varlen

OPS = ("varlen_attention", "segment_pool", "rms_norm", "apply_rope", "gated_act")

__all__ = ["apply_rope", "flash_varlen_attention", "gated_act", "rms_norm", "segment_pool",
           "varlen_attention"]  # fmt: skip


def _vjp(fn, grads, diff_inputs, *args) -> list[torch.Tensor]:
    """Gradients of ``fn(*diff_inputs, *args)`` for the output gradients ``grads``, by
    ``torch.func.vjp`` (an op body runs below the autograd key, where ``torch.enable_grad()``
    records nothing)."""
    out, vjp_fn = torch.func.vjp(lambda *xs: fn(*xs, *args), *diff_inputs)
    got = vjp_fn(tuple(grads) if isinstance(out, tuple) else grads[0])
    return [g.contiguous() for g in got[: len(diff_inputs)]]


# ---- varlen attention ----------------------------------------------------------------------


def _use_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, flash: bool) -> bool:
    return flash or (use_triton(q, k, v) and (INTERPRET or q.dtype != torch.float32))


def _attention_forward(q, k, v, *options):
    o = Varlen(*options)
    if o.dropout_p > 0.0 and o.seed is None:
        raise ValueError(
            "llm2vec_fast::varlen_attention_forward with dropout_p > 0 needs a seed (the "
            "backward regenerates the mask from it); ops.varlen_attention draws one"
        )
    fwd = flash_varlen_fwd if _use_flash(q, k, v, o.flash) else varlen_attention_fwd_torch
    return fwd(q, k, v, o)


def _attention_forward_fake(q, k, v, *options):
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=lse_dtype)


def _attention_backward(do, q, k, v, out, lse, *options):
    o = Varlen(*options)
    bwd = flash_varlen_bwd if _use_flash(q, k, v, o.flash) else varlen_attention_bwd_torch
    return bwd(do, q, k, v, out, lse, o)


def _attention_backward_fake(do, q, k, v, out, lse, *options):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup(ctx, inputs, output):
    q, k, v, cu_seqlens, *options = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.options = tuple(options)


def _attention_autograd_bwd(ctx, dout, _dlse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout
    grads = get_op("varlen_attention_backward")(dout, q, k, v, out, lse, cu_seqlens, *ctx.options)
    return *grads, *(None,) * len(Varlen._fields)


define_pair(
    "varlen_attention", _attention_forward, _attention_forward_fake, _attention_backward,
    _attention_backward_fake, _attention_setup, _attention_autograd_bwd,
    forward_schema=f"(Tensor q, Tensor k, Tensor v, {VARLEN_SCHEMA}) -> (Tensor, Tensor)",
    backward_schema=(
        f"(Tensor do, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {VARLEN_SCHEMA})"
        " -> (Tensor, Tensor, Tensor)"
    ),
)  # fmt: skip


@torch.compiler.disable
def _draw_seed(device: torch.device) -> int:
    # a graph break under torch.compile: a seed traced into a graph would be a constant
    return draw_dropout_seed(device)


def _attention_entry(flash: bool):
    """The Python entry point over the forward op: ``attention(q, k, v, <Varlen options>)``."""

    def attention(q, k, v, *options, **named):
        o = Varlen(*options, **named).normalized(flash)
        if o.dropout_p > 0.0 and o.seed is None:
            o = o._replace(seed=_draw_seed(q.device))
        return get_op("varlen_attention_forward")(q, k, v, *o)[0]

    attention.__signature__ = VARLEN_SIGNATURE
    return attention


varlen_attention = _attention_entry(flash=False)
varlen_attention.__name__ = varlen_attention.__qualname__ = "varlen_attention"
varlen_attention.__doc__ = """Attention inside each packed text, differentiable:
``varlen_attention(q, k, v, cu_seqlens, max_seqlen=None, causal=False, softmax_scale=None,
dropout_p=0.0, seed=None, offset=0)``; q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` (Hq a multiple of
Hkv), ``cu_seqlens`` int32 ``[n_texts + 1]`` -> ``[T, Hq, D]`` in q's dtype.

``max_seqlen`` is at least the longest text (read from ``cu_seqlens`` when None; pass it under
``torch.compile``); ``causal=False`` is LLM2Vec's bidirectional attention; ``softmax_scale``
defaults to ``D ** -0.5``. float16/bfloat16 CUDA tensors (and any dtype under
``TRITON_INTERPRET=1``) run the Triton flash kernel
(:mod:`llm2vec_fast.kernels.flash_varlen`); float32 on CUDA and CPU tensors run its PyTorch
counterpart (:func:`llm2vec_fast.kernels.attention.varlen_attention_fwd_torch`).

``dropout_p > 0`` (attention-probability dropout, SimCSE training) drops probabilities by a
mask that is a function of ``seed`` (an int) and ``offset`` (an int in [0, 2**32)); with
``seed=None`` a seed is drawn per call from torch's default generator on q's device, so
``torch.manual_seed`` reproduces it and gradient checkpointing replays it (``fullgraph=True``
compiles need an explicit seed). The two paths draw different masks from one seed: the flash
kernel's is :func:`llm2vec_fast.kernels.flash_varlen.flash_varlen_dropout_mask`.
"""

flash_varlen_attention = _attention_entry(flash=True)
flash_varlen_attention.__name__ = flash_varlen_attention.__qualname__ = "flash_varlen_attention"
flash_varlen_attention.__doc__ = """:func:`varlen_attention` always on the Triton flash kernel
(CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``), float32 included (IEEE dots).

q/k/v float16, bfloat16 or float32 with head dim <= 256; the last dim must have stride 1 (copied
otherwise), token and head strides are free (views of a fused QKV projection). dk/dv are summed
over each GQA group inside the kernel. The forward's LSE (``[Hq, T]`` float32, natural log) is
kept for the backward; :func:`llm2vec_fast.kernels.flash_varlen.flash_varlen_fwd` returns it.
"""


# ---- segment_pool --------------------------------------------------------------------------


def _pool_forward(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(hidden):
        cu, mask = segment_pool_prepare(hidden, cu_seqlens, pool_mask, mode)
        return segment_pool_fwd(hidden, cu, mask, mode)
    out = segment_pool_ref(hidden, cu_seqlens, pool_mask, mode).contiguous()
    return out, torch.zeros(cu_seqlens.shape[0] - 1, dtype=torch.int32, device=hidden.device)


def _pool_forward_fake(hidden, cu_seqlens, pool_mask, mode):
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    n = cu_seqlens.shape[0] - 1
    return (
        hidden.new_empty((n, hidden.shape[1]), dtype=dtype),
        hidden.new_empty((n,), dtype=torch.int32),
    )


def _pool_backward(
    grad: torch.Tensor,
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    pool_mask: torch.Tensor,
    aux: torch.Tensor,
    mode: str,
) -> torch.Tensor:
    if use_triton(hidden):
        cu = cu_seqlens.to(device=hidden.device, dtype=torch.int32)
        mask = mask_bytes(pool_mask, hidden.device)
        return segment_pool_bwd(grad, aux, cu, mask, mode, hidden.shape[0], hidden.dtype)
    return _vjp(segment_pool_ref, [grad], [hidden], cu_seqlens, pool_mask, mode)[0]


def _pool_backward_fake(grad, hidden, cu_seqlens, pool_mask, aux, mode):
    return hidden.new_empty(hidden.shape)


def _pool_setup(ctx, inputs, output):
    hidden, cu_seqlens, pool_mask, mode = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(hidden, cu_seqlens, pool_mask, output[1])
    ctx.mode = mode


def _pool_autograd_bwd(ctx, grad, _daux):
    hidden, cu_seqlens, pool_mask, aux = ctx.saved_tensors
    args = (hidden, cu_seqlens, pool_mask, aux, ctx.mode)
    return get_op("segment_pool_backward")(grad, *args), None, None, None


define_pair(
    "segment_pool", _pool_forward, _pool_forward_fake, _pool_backward, _pool_backward_fake,
    _pool_setup, _pool_autograd_bwd,
)  # fmt: skip


def segment_pool(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """Pool each packed text to one vector: hidden ``[T, H]``, cu_seqlens ``[n_texts + 1]`` int32,
    pool_mask ``[T]`` bool -> ``[n_texts, H]`` float32 (float64 for float64 hidden).

    See :mod:`llm2vec_fast.kernels.pooling` for the modes. Differentiable in hidden. One read of
    the hidden states in the Triton kernel (CUDA, or under ``TRITON_INTERPRET=1``)."""
    return get_op("segment_pool_forward")(hidden, cu_seqlens, pool_mask, mode)[0]


# ---- rms_norm ------------------------------------------------------------------------------


def _norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1])
    fwd = rms_norm_fwd if use_triton(x, weight) else rms_norm_fwd_torch
    y, rstd = fwd(x2, weight, eps, gemma)
    return y.reshape(x.shape), rstd


def _norm_forward_fake(x, weight, eps, gemma):
    dtype = x.dtype if gemma else torch.promote_types(x.dtype, weight.dtype)
    rstd_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((rows,), dtype=rstd_dtype)


def _norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, gemma: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    x2 = x.reshape(-1, x.shape[-1])
    bwd = rms_norm_bwd if use_triton(x, weight) else rms_norm_bwd_torch
    dx, dw = bwd(dy.reshape(x2.shape), x2, weight, rstd, gemma)
    return dx.reshape(x.shape), dw


def _norm_backward_fake(dy, x, weight, rstd, gemma):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _norm_setup(ctx, inputs, output):
    x, weight, _eps, gemma = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight, output[1])
    ctx.gemma = gemma


def _norm_autograd_bwd(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = get_op("rms_norm_backward")(dy, x, weight, rstd, ctx.gemma)
    return dx, dw, None, None


define_pair(
    "rms_norm", _norm_forward, _norm_forward_fake, _norm_backward, _norm_backward_fake,
    _norm_setup, _norm_autograd_bwd,
)  # fmt: skip


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> torch.Tensor:
    """RMSNorm of each row: x ``[..., H]``, weight ``[H]`` -> ``[..., H]`` (see
    :mod:`llm2vec_fast.kernels.rms_norm`). Differentiable in x and weight."""
    return get_op("rms_norm_forward")(x, weight, float(eps), bool(gemma))[0]


# ---- apply_rope ----------------------------------------------------------------------------


def _rotation(triton_fn, sign: float):
    """The body of both RoPE ops, new contiguous tensors: the forward rotates by the positions'
    angles (``sign`` 1), the backward by minus them (``sign`` -1: the transposed rotation; on
    the PyTorch path the reference with negated frequencies, which negates sin only)."""

    def rotate(
        a: torch.Tensor,
        b: torch.Tensor,
        position_ids: torch.Tensor,
        inv_freq: torch.Tensor,
        attention_scaling: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if use_triton(a, b):
            a, b = triton_fn(a, b, position_ids, inv_freq, attention_scaling)
        else:
            a, b = rope_ref(a, b, position_ids, inv_freq * sign, attention_scaling)
        return a.contiguous(), b.contiguous()

    return rotate


def _rope_fake(a, b, position_ids, inv_freq, attention_scaling):
    return a.new_empty(a.shape), b.new_empty(b.shape)


def _rope_setup(ctx, inputs, output):
    q, k, position_ids, inv_freq, attention_scaling = inputs
    ctx.save_for_backward(position_ids, inv_freq)
    ctx.scaling = attention_scaling


def _rope_autograd_bwd(ctx, dqo, dko):
    position_ids, inv_freq = ctx.saved_tensors
    # an output that took no part in the loss arrives as None
    dqo = torch.zeros_like(dko) if dqo is None else dqo
    dko = torch.zeros_like(dqo) if dko is None else dko
    dq, dk = get_op("apply_rope_backward")(dqo, dko, position_ids, inv_freq, ctx.scaling)
    return dq, dk, None, None, None


define_pair(
    "apply_rope", _rotation(rope_fwd, 1.0), _rope_fake, _rotation(rope_bwd, -1.0),
    _rope_fake, _rope_setup, _rope_autograd_bwd,
)  # fmt: skip


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q ``[T, Hq, D]`` and k ``[T, Hkv, D]`` by their tokens' positions (``[T]`` int);
    inv_freq ``[D/2]`` float32. Returns new contiguous (q_out, k_out) in q's and k's dtypes.
    Differentiable in q and k."""
    op = get_op("apply_rope_forward")
    return op(q, k, position_ids, inv_freq, float(attention_scaling))


# ---- gated_act -----------------------------------------------------------------------------


def _act_forward(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    fwd = gated_act_fwd if use_triton(gate, up) else gated_act_ref
    return fwd(gate, up, activation).contiguous()


def _act_forward_fake(gate, up, activation):
    return gate.new_empty(gate.shape)


def _act_backward(
    dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if use_triton(gate, up):
        return gated_act_bwd(dy, gate, up, activation)
    dg, du = _vjp(gated_act_ref, [dy], [gate, up], activation)
    return dg, du


def _act_backward_fake(dy, gate, up, activation):
    return gate.new_empty(gate.shape), up.new_empty(up.shape)


def _act_setup(ctx, inputs, output):
    gate, up, activation = inputs
    ctx.save_for_backward(gate, up)
    ctx.activation = activation


def _act_autograd_bwd(ctx, dy):
    gate, up = ctx.saved_tensors
    dg, du = get_op("gated_act_backward")(dy, gate, up, ctx.activation)
    return dg, du, None


define_pair(
    "gated_act", _act_forward, _act_forward_fake, _act_backward, _act_backward_fake,
    _act_setup, _act_autograd_bwd,
)  # fmt: skip


def gated_act(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """``act(gate) * up`` for gate, up ``[..., I]`` -> ``[..., I]``; activation ``"silu"`` or
    ``"gelu_tanh"`` (see :mod:`llm2vec_fast.kernels.glu`). Differentiable in gate and up."""
    return get_op("gated_act_forward")(gate, up, activation)
