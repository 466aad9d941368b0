"""The public kernels as torch custom ops (``torch.ops.llm2vec_fast.*``), for ``torch.compile``.

Each op's body calls the plain dispatcher of :mod:`llm2vec_fast.kernels` (so CUDA tensors run
the Triton kernels, CPU tensors the PyTorch references); ``register_fake`` gives the output's
shape and dtype without running anything; ``register_autograd`` wires the backward through a
second op, ``<name>_backward``, as flash-attention registers its varlen functions.

    op                                     returns
    varlen_attention(q, k, v, cu_seqlens,  [T, Hq, D] q.dtype, contiguous
        max_seqlen, causal, softmax_scale,
        dropout_p, seed, offset)
    segment_pool(hidden, cu_seqlens,       [n_texts, H] float32 (float64 for float64 hidden),
        pool_mask, mode)                   n_texts = cu_seqlens.shape[0] - 1
    rms_norm(x, weight, eps, gemma)        x.shape; promote(x, weight) dtype (Llama form),
                                           x.dtype (Gemma form)
    apply_rope(q, k, position_ids,         (q.shape q.dtype, k.shape k.dtype), contiguous
        inv_freq, attention_scaling)
    gated_act(gate, up, activation)        gate.shape, gate.dtype, contiguous

Backward: every ``<name>_backward`` op takes the saved inputs. On the Triton path it calls the
kernels' bwd launchers directly: ``rope_bwd`` and ``gated_act_bwd`` need nothing more;
``rms_norm`` reruns its forward for ``rstd``, ``segment_pool`` for its per-text counts (one read
of the hidden states each); ``varlen_attention`` reruns the flash forward for ``o`` and the LSE
(the public op returns ``o`` only), about 30% on top of fwd+bwd, under the same dropout mask
(the op takes the mask's seed as an argument). On the PyTorch path it takes
``torch.func.vjp`` of the reference (an op body runs below the autograd key, where
``torch.enable_grad()`` records nothing). Gradients flow to the floating-point tensor inputs;
index tensors and options get None. Double backward is not supported.

Registration is idempotent: an op already in ``torch.ops.llm2vec_fast`` (this file imported under
a second module name) is reused, not defined again (older torch raises on a second definition,
newer torch silently replaces the first). The project imports it only as
``llm2vec_fast.kernels.ops``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._launch import INTERPRET, use_triton
from .flash_varlen import draw_dropout_seed, flash_varlen_bwd, flash_varlen_fwd
from .glu import gated_act_bwd
from .pooling import _mask_bytes, segment_pool_bwd, segment_pool_fwd
from .rms_norm import rms_norm_bwd, rms_norm_fwd
from .rope import rope_bwd

NAMESPACE = "llm2vec_fast"

__all__ = ["apply_rope", "gated_act", "rms_norm", "segment_pool", "varlen_attention"]


def _registered(name: str) -> bool:
    """Whether ``llm2vec_fast::<name>`` is already a torch op (defined by an earlier import)."""
    try:
        getattr(getattr(torch.ops, NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _dispatchers():
    # imported lazily: llm2vec_fast/kernels.py imports this module at its end
    from llm2vec_fast import kernels

    return kernels


def _vjp(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    grads: Sequence[torch.Tensor],
    diff_inputs: Sequence[torch.Tensor],
    *args,
) -> list[torch.Tensor]:
    """Gradients of ``fn(*diff_inputs, *args)`` w.r.t. ``diff_inputs`` for the output gradients
    ``grads`` (one per output), by ``torch.func.vjp`` over the PyTorch path.

    ``torch.func`` because an op body runs below the autograd dispatch key, where
    ``torch.enable_grad()`` records nothing; the Triton autograd.Functions (old-style ``forward(ctx,
    ...)``) are not torch.func-transformable, so the Triton branches call the bwd launchers.
    """
    n = len(diff_inputs)
    out, vjp_fn = torch.func.vjp(lambda *xs: fn(*xs, *args), *diff_inputs)
    cot = tuple(grads) if isinstance(out, tuple) else grads[0]
    got = vjp_fn(cot)
    return [g.contiguous() for g in got[:n]]


# --------------------------------------------------------------------------------------------
# varlen_attention
# --------------------------------------------------------------------------------------------

if not _registered("varlen_attention"):

    @torch.library.custom_op(f"{NAMESPACE}::varlen_attention", mutates_args=())
    def _varlen_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int | None = None,
        causal: bool = False,
        softmax_scale: float | None = None,
        dropout_p: float = 0.0,
        seed: int | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        if dropout_p > 0.0 and seed is None:
            raise ValueError(
                "llm2vec_fast::varlen_attention with dropout_p > 0 needs a seed (the backward "
                "regenerates the mask from it); ops.varlen_attention draws one"
            )
        out = _dispatchers().varlen_attention(
            q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, dropout_p, seed, offset
        )
        return out.contiguous()

    @_varlen_attention.register_fake
    def _(
        q, k, v, cu_seqlens, max_seqlen=None, causal=False, softmax_scale=None, dropout_p=0.0,
        seed=None, offset=0,
    ):  # fmt: skip
        return q.new_empty(q.shape)

    @torch.library.custom_op(f"{NAMESPACE}::varlen_attention_backward", mutates_args=())
    def _varlen_attention_backward(
        do: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int | None,
        causal: bool,
        softmax_scale: float | None,
        dropout_p: float = 0.0,
        seed: int | None = None,
        offset: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if use_triton(q, k, v) and (INTERPRET or q.dtype != torch.float32):
            # the dispatcher's flash path: recompute (o, lse) under the same dropout mask,
            # then the bwd launcher
            if max_seqlen is None:
                max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            drop = dict(dropout_p=dropout_p, seed=seed, offset=offset)
            o, lse = flash_varlen_fwd(
                q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, **drop
            )
            return flash_varlen_bwd(
                do, q, k, v, o, lse, cu_seqlens, max_seqlen, causal, softmax_scale, **drop
            )
        # the SDPA path under its seeded generator: the same mask as the forward
        dq, dk, dv = _vjp(
            _dispatchers().varlen_attention, [do], [q, k, v],
            cu_seqlens, max_seqlen, causal, softmax_scale, dropout_p, seed, offset,
        )  # fmt: skip
        return dq, dk, dv

    @_varlen_attention_backward.register_fake
    def _(
        do, q, k, v, cu_seqlens, max_seqlen, causal, softmax_scale, dropout_p=0.0, seed=None,
        offset=0,
    ):  # fmt: skip
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def _varlen_attention_setup(ctx, inputs, output):
        q, k, v, cu_seqlens, *args = inputs
        ctx.save_for_backward(q, k, v, cu_seqlens)
        ctx.args = tuple(args)  # max_seqlen, causal, softmax_scale, dropout_p, seed, offset

    def _varlen_attention_bwd(ctx, do):
        q, k, v, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = torch.ops.llm2vec_fast.varlen_attention_backward(
            do, q, k, v, cu_seqlens, *ctx.args
        )
        return dq, dk, dv, None, None, None, None, None, None, None

    _varlen_attention.register_autograd(
        _varlen_attention_bwd, setup_context=_varlen_attention_setup
    )


# --------------------------------------------------------------------------------------------
# segment_pool
# --------------------------------------------------------------------------------------------

if not _registered("segment_pool"):

    @torch.library.custom_op(f"{NAMESPACE}::segment_pool", mutates_args=())
    def _segment_pool(
        hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor, mode: str
    ) -> torch.Tensor:
        return _dispatchers().segment_pool(hidden, cu_seqlens, pool_mask, mode).contiguous()

    @_segment_pool.register_fake
    def _(hidden, cu_seqlens, pool_mask, mode):
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        return hidden.new_empty((cu_seqlens.shape[0] - 1, hidden.shape[1]), dtype=dtype)

    @torch.library.custom_op(f"{NAMESPACE}::segment_pool_backward", mutates_args=())
    def _segment_pool_backward(
        grad: torch.Tensor,
        hidden: torch.Tensor,
        cu_seqlens: torch.Tensor,
        pool_mask: torch.Tensor,
        mode: str,
    ) -> torch.Tensor:
        if use_triton(hidden):
            # the dispatcher's Triton path: recompute aux (one read of hidden), then the bwd
            cu = cu_seqlens.to(device=hidden.device, dtype=torch.int32)
            mask = _mask_bytes(pool_mask, hidden.device)
            _, aux = segment_pool_fwd(hidden, cu, mask, mode)
            return segment_pool_bwd(grad, aux, cu, mask, mode, hidden.shape[0], hidden.dtype)
        (dh,) = _vjp(_dispatchers().segment_pool, [grad], [hidden], cu_seqlens, pool_mask, mode)
        return dh

    @_segment_pool_backward.register_fake
    def _(grad, hidden, cu_seqlens, pool_mask, mode):
        return hidden.new_empty(hidden.shape)

    def _segment_pool_setup(ctx, inputs, output):
        hidden, cu_seqlens, pool_mask, mode = inputs
        ctx.save_for_backward(hidden, cu_seqlens, pool_mask)
        ctx.mode = mode

    def _segment_pool_bwd(ctx, grad):
        hidden, cu_seqlens, pool_mask = ctx.saved_tensors
        dh = torch.ops.llm2vec_fast.segment_pool_backward(
            grad, hidden, cu_seqlens, pool_mask, ctx.mode
        )
        return dh, None, None, None

    _segment_pool.register_autograd(_segment_pool_bwd, setup_context=_segment_pool_setup)


# --------------------------------------------------------------------------------------------
# rms_norm
# --------------------------------------------------------------------------------------------

if not _registered("rms_norm"):

    @torch.library.custom_op(f"{NAMESPACE}::rms_norm", mutates_args=())
    def _rms_norm(
        x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
    ) -> torch.Tensor:
        return _dispatchers().rms_norm(x, weight, eps, gemma).contiguous()

    @_rms_norm.register_fake
    def _(x, weight, eps, gemma=False):
        dtype = x.dtype if gemma else torch.promote_types(x.dtype, weight.dtype)
        return x.new_empty(x.shape, dtype=dtype)

    @torch.library.custom_op(f"{NAMESPACE}::rms_norm_backward", mutates_args=())
    def _rms_norm_backward(
        dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if use_triton(x, weight):
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            _, rstd = rms_norm_fwd(x2, weight, eps, gemma)
            dx, dw = rms_norm_bwd(dy.reshape(x2.shape), x2, weight, rstd, gemma)
            return dx.reshape(shape), dw
        dx, dw = _vjp(_dispatchers().rms_norm, [dy], [x, weight], eps, gemma)
        return dx, dw

    @_rms_norm_backward.register_fake
    def _(dy, x, weight, eps, gemma):
        return x.new_empty(x.shape), weight.new_empty(weight.shape)

    def _rms_norm_setup(ctx, inputs, output):
        x, weight, eps, gemma = inputs
        ctx.save_for_backward(x, weight)
        ctx.args = (eps, gemma)

    def _rms_norm_bwd(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dw = torch.ops.llm2vec_fast.rms_norm_backward(dy, x, weight, *ctx.args)
        return dx, dw, None, None

    _rms_norm.register_autograd(_rms_norm_bwd, setup_context=_rms_norm_setup)


# --------------------------------------------------------------------------------------------
# apply_rope
# --------------------------------------------------------------------------------------------

if not _registered("apply_rope"):

    @torch.library.custom_op(f"{NAMESPACE}::apply_rope", mutates_args=())
    def _apply_rope(
        q: torch.Tensor,
        k: torch.Tensor,
        position_ids: torch.Tensor,
        inv_freq: torch.Tensor,
        attention_scaling: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        qo, ko = _dispatchers().apply_rope(q, k, position_ids, inv_freq, attention_scaling)
        return qo.contiguous(), ko.contiguous()

    @_apply_rope.register_fake
    def _(q, k, position_ids, inv_freq, attention_scaling=1.0):
        return q.new_empty(q.shape), k.new_empty(k.shape)

    @torch.library.custom_op(f"{NAMESPACE}::apply_rope_backward", mutates_args=())
    def _apply_rope_backward(
        dqo: torch.Tensor,
        dko: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        position_ids: torch.Tensor,
        inv_freq: torch.Tensor,
        attention_scaling: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if use_triton(q, k):
            return rope_bwd(dqo, dko, position_ids, inv_freq, attention_scaling)
        dq, dk = _vjp(
            _dispatchers().apply_rope, [dqo, dko], [q, k], position_ids, inv_freq,
            attention_scaling,
        )  # fmt: skip
        return dq, dk

    @_apply_rope_backward.register_fake
    def _(dqo, dko, q, k, position_ids, inv_freq, attention_scaling):
        return q.new_empty(q.shape), k.new_empty(k.shape)

    def _apply_rope_setup(ctx, inputs, output):
        q, k, position_ids, inv_freq, attention_scaling = inputs
        ctx.save_for_backward(q, k, position_ids, inv_freq)
        ctx.attention_scaling = attention_scaling

    def _apply_rope_bwd(ctx, dqo, dko):
        q, k, position_ids, inv_freq = ctx.saved_tensors
        # an output that took no part in the loss arrives as None
        dqo = torch.zeros_like(q) if dqo is None else dqo
        dko = torch.zeros_like(k) if dko is None else dko
        dq, dk = torch.ops.llm2vec_fast.apply_rope_backward(
            dqo, dko, q, k, position_ids, inv_freq, ctx.attention_scaling
        )
        return dq, dk, None, None, None

    _apply_rope.register_autograd(_apply_rope_bwd, setup_context=_apply_rope_setup)


# --------------------------------------------------------------------------------------------
# gated_act
# --------------------------------------------------------------------------------------------

if not _registered("gated_act"):

    @torch.library.custom_op(f"{NAMESPACE}::gated_act", mutates_args=())
    def _gated_act(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
        return _dispatchers().gated_act(gate, up, activation).contiguous()

    @_gated_act.register_fake
    def _(gate, up, activation="silu"):
        return gate.new_empty(gate.shape)

    @torch.library.custom_op(f"{NAMESPACE}::gated_act_backward", mutates_args=())
    def _gated_act_backward(
        dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if use_triton(gate, up):
            return gated_act_bwd(dy, gate, up, activation)
        dg, du = _vjp(_dispatchers().gated_act, [dy], [gate, up], activation)
        return dg, du

    @_gated_act_backward.register_fake
    def _(dy, gate, up, activation):
        return gate.new_empty(gate.shape), up.new_empty(up.shape)

    def _gated_act_setup(ctx, inputs, output):
        gate, up, activation = inputs
        ctx.save_for_backward(gate, up)
        ctx.activation = activation

    def _gated_act_bwd(ctx, dy):
        gate, up = ctx.saved_tensors
        dg, du = torch.ops.llm2vec_fast.gated_act_backward(dy, gate, up, ctx.activation)
        return dg, du, None

    _gated_act.register_autograd(_gated_act_bwd, setup_context=_gated_act_setup)


# --------------------------------------------------------------------------------------------
# Python entry points (same signatures as the dispatchers)
# --------------------------------------------------------------------------------------------


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """``torch.ops.llm2vec_fast.varlen_attention``: q ``[T, Hq, D]``, k/v ``[T, Hkv, D]``,
    cu_seqlens int32 ``[n_texts + 1]`` -> ``[T, Hq, D]`` in q's dtype (contiguous). As
    :func:`llm2vec_fast.kernels.varlen_attention`; under ``torch.compile`` pass ``max_seqlen``
    (deriving it reads a tensor value).

    ``dropout_p > 0``: the op takes the mask's ``seed`` (an int64) and ``offset`` as arguments, so
    its backward regenerates the forward's mask. With ``seed=None`` this function draws one per
    call from torch's default generator on q's device (outside any compiled graph:
    ``fullgraph=True`` needs an explicit seed)."""
    if dropout_p > 0.0 and seed is None:
        seed = _draw_seed(q.device)
    return torch.ops.llm2vec_fast.varlen_attention(
        q, k, v, cu_seqlens, None if max_seqlen is None else int(max_seqlen), bool(causal),
        None if softmax_scale is None else float(softmax_scale), float(dropout_p),
        None if seed is None else int(seed), int(offset),
    )  # fmt: skip


@torch.compiler.disable
def _draw_seed(device: torch.device) -> int:
    # a graph break under torch.compile: a seed traced into a graph would be a constant
    return draw_dropout_seed(device)


def segment_pool(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, pool_mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """``torch.ops.llm2vec_fast.segment_pool``: hidden ``[T, H]``, cu_seqlens ``[n_texts + 1]``
    int32, pool_mask ``[T]`` bool -> ``[n_texts, H]`` float32 (float64 for float64 hidden)."""
    return torch.ops.llm2vec_fast.segment_pool(hidden, cu_seqlens, pool_mask, mode)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> torch.Tensor:
    """``torch.ops.llm2vec_fast.rms_norm``: x ``[..., H]``, weight ``[H]`` -> ``[..., H]``."""
    return torch.ops.llm2vec_fast.rms_norm(x, weight, float(eps), bool(gemma))


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.llm2vec_fast.apply_rope``: q ``[T, Hq, D]``, k ``[T, Hkv, D]``, position_ids
    ``[T]`` int, inv_freq ``[D/2]`` float32 -> (q_out, k_out), new contiguous tensors."""
    return torch.ops.llm2vec_fast.apply_rope(q, k, position_ids, inv_freq, float(attention_scaling))


def gated_act(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """``torch.ops.llm2vec_fast.gated_act``: gate, up ``[..., I]`` -> ``act(gate) * up``."""
    return torch.ops.llm2vec_fast.gated_act(gate, up, activation)
