"""Rotary position embedding (RoPE) on packed q/k, HF numerics, cos/sin computed in-kernel.

    q             [T, Hq, D]  float32 / float16 / bfloat16 (last dim contiguous; token and
                              head strides free, so views of a fused QKV output work)
    k             [T, Hkv, D] same dtype as q
    position_ids  [T] int32 / int64, position of each token inside its text
    inv_freq      [D/2] float32
    returns       (q_out [T, Hq, D], k_out [T, Hkv, D]), new contiguous tensors in q's/k's dtype

As ``EncoderModel.rope`` + ``Attention.forward``: ``freqs = float(pos) * inv_freq`` in float32,
``emb = cat(freqs, freqs)``, ``cos = (cos(emb) * attention_scaling).to(x.dtype)`` (sin alike),
``out = x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x2, x1)`` (first half,
second half). The forward rounds each product and the sum to x.dtype as eager PyTorch does, so
it matches the model's own path to the rounding of cos/sin. The backward is the transposed
rotation (by ``-angle``), computed in float32 and rounded once. Out-of-place: the inputs are
never written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ._aot import SM90_DTYPES, Sm90Config
from ._launch import HAVE_TRITON, last_dim_contiguous, next_pow2, num_warps_for

if HAVE_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - the PyTorch reference still works
    triton = None

__all__ = ["rope_bwd", "rope_fwd", "rope_ref"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    attention_scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch reference, the model's own math (cos/sin in float32, cast to q's dtype)."""
    freqs = position_ids.float()[:, None] * inv_freq.float().to(position_ids.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * attention_scaling)[:, None, :]
    sin = (emb.sin() * attention_scaling)[:, None, :]
    cq, sq = cos.to(q.dtype), sin.to(q.dtype)
    ck, sk = cos.to(k.dtype), sin.to(k.dtype)
    return q * cq + _rotate_half(q) * sq, k * ck + _rotate_half(k) * sk


def _config(n_q_heads: int, n_kv_heads: int, head_dim: int) -> dict:
    """Blocks and warps of one program (one token: all its q and k heads)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim; got {head_dim}")
    block_half = next_pow2(head_dim // 2)
    block_qh, block_kh = next_pow2(n_q_heads), next_pow2(n_kv_heads)
    return {
        "HALF": head_dim // 2,
        "BLOCK_QH": block_qh,
        "BLOCK_KH": block_kh,
        "BLOCK_HALF": block_half,
        "num_warps": num_warps_for(block_qh * block_half),
    }


if HAVE_TRITON:

    @triton.jit
    def _rope_cos_sin(POS, INV_FREQ, token, scaling, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
        """cos, sin [1, BLOCK_HALF] float32 of one token (already scaled, not yet rounded)."""
        d = tl.arange(0, BLOCK_HALF)
        inv = tl.load(INV_FREQ + d, mask=d < HALF, other=0.0)
        ang = tl.load(POS + token).to(tl.float32) * inv
        return (tl.cos(ang) * scaling)[None, :], (tl.sin(ang) * scaling)[None, :]

    @triton.jit
    def _rope_rotate(
        X, Y, token, stride_xt, stride_xh, stride_yt, stride_yh, n_heads, cos, sin,
        HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
        EAGER_ROUNDING: tl.constexpr,
    ):  # fmt: skip
        """Y = X * cos + rotate_half(X) * sin for all heads of one token. With
        EAGER_ROUNDING each product and the sum are rounded to X's dtype (eager PyTorch);
        cos/sin are rounded to X's dtype either way."""
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (h < n_heads) & (d < HALF)
        dt = X.dtype.element_ty
        c = cos.to(dt).to(tl.float32)
        s = sin.to(dt).to(tl.float32)
        x_ptr = X + token * stride_xt + h * stride_xh + d
        x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
        if EAGER_ROUNDING:
            y1 = (x1 * c).to(dt).to(tl.float32) - (x2 * s).to(dt).to(tl.float32)
            y2 = (x2 * c).to(dt).to(tl.float32) + (x1 * s).to(dt).to(tl.float32)
        else:
            y1 = x1 * c - x2 * s
            y2 = x2 * c + x1 * s
        y_ptr = Y + token * stride_yt + h * stride_yh + d
        tl.store(y_ptr, y1.to(Y.dtype.element_ty), mask=mask)
        tl.store(y_ptr + HALF, y2.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_fwd_kernel(
        Q, K, QO, KO, POS, INV_FREQ,
        stride_qt, stride_qh, stride_kt, stride_kh,
        stride_qot, stride_qoh, stride_kot, stride_koh,
        n_q_heads, n_kv_heads, scaling,
        HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
        BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        token = tl.program_id(0).to(tl.int64)
        cos, sin = _rope_cos_sin(POS, INV_FREQ, token, scaling, HALF, BLOCK_HALF)
        _rope_rotate(Q, QO, token, stride_qt, stride_qh, stride_qot, stride_qoh, n_q_heads,
                     cos, sin, HALF, BLOCK_QH, BLOCK_HALF, True)  # fmt: skip
        _rope_rotate(K, KO, token, stride_kt, stride_kh, stride_kot, stride_koh, n_kv_heads,
                     cos, sin, HALF, BLOCK_KH, BLOCK_HALF, True)  # fmt: skip

    @triton.jit
    def _rope_bwd_kernel(
        DQO, DKO, DQ, DK, POS, INV_FREQ,
        stride_dqot, stride_dqoh, stride_dkot, stride_dkoh,
        stride_dqt, stride_dqh, stride_dkt, stride_dkh,
        n_q_heads, n_kv_heads, scaling,
        HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
        BLOCK_HALF: tl.constexpr,
    ):  # fmt: skip
        token = tl.program_id(0).to(tl.int64)
        cos, sin = _rope_cos_sin(POS, INV_FREQ, token, scaling, HALF, BLOCK_HALF)
        # the transposed rotation: rotate by -angle
        _rope_rotate(DQO, DQ, token, stride_dqot, stride_dqoh, stride_dqt, stride_dqh,
                     n_q_heads, cos, -sin, HALF, BLOCK_QH, BLOCK_HALF, False)  # fmt: skip
        _rope_rotate(DKO, DK, token, stride_dkot, stride_dkoh, stride_dkt, stride_dkh,
                     n_kv_heads, cos, -sin, HALF, BLOCK_KH, BLOCK_HALF, False)  # fmt: skip


def _launch(kernel, a, b, position_ids, inv_freq, scaling):
    """Run the fwd or bwd kernel on a ``[T, Hq, D]``, b ``[T, Hkv, D]``; new outputs."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        raise ValueError(
            f"expected q [T, Hq, D], k [T, Hkv, D]; got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a, b = last_dim_contiguous(a, b)
    n_tokens, n_q_heads, head_dim = a.shape
    n_kv_heads = b.shape[1]
    if position_ids.shape != (n_tokens,):
        raise ValueError(f"position_ids must be [{n_tokens}]; got {tuple(position_ids.shape)}")
    inv_freq = inv_freq.to(device=a.device, dtype=torch.float32).contiguous()
    position_ids = position_ids.to(a.device).contiguous()
    ao, bo = (
        torch.empty_like(a, memory_format=torch.contiguous_format),
        torch.empty_like(b, memory_format=torch.contiguous_format),
    )
    if n_tokens:
        cfg = _config(n_q_heads, n_kv_heads, head_dim)
        kernel[(n_tokens,)](
            a, b, ao, bo, position_ids, inv_freq,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1),
            ao.stride(0), ao.stride(1), bo.stride(0), bo.stride(1),
            n_q_heads, n_kv_heads, float(scaling),
            HALF=cfg["HALF"], BLOCK_QH=cfg["BLOCK_QH"], BLOCK_KH=cfg["BLOCK_KH"],
            BLOCK_HALF=cfg["BLOCK_HALF"], num_warps=cfg["num_warps"],
        )  # fmt: skip
    return ao, bo


def rope_fwd(q, k, position_ids, inv_freq, attention_scaling=1.0):
    """Triton forward: (q ``[T, Hq, D]``, k ``[T, Hkv, D]``) -> rotated (q_out, k_out)."""
    return _launch(_rope_fwd_kernel, q, k, position_ids, inv_freq, attention_scaling)


def rope_bwd(dq_out, dk_out, position_ids, inv_freq, attention_scaling=1.0):
    """Triton backward: (dq_out, dk_out) -> (dq, dk), the rotation by ``-angle``."""
    return _launch(_rope_bwd_kernel, dq_out, dk_out, position_ids, inv_freq, attention_scaling)


def _sm90_configs(
    shapes: Iterable[tuple[int, int, int]], dtypes: Iterable[str] = SM90_DTYPES
) -> Iterator[Sm90Config]:
    """Each kernel's :data:`~._aot.Sm90Config` rows. shapes: (n_q_heads, n_kv_heads, head_dim);
    dtypes: Triton type names of q and k."""
    dtypes = tuple(dtypes)
    for hq, hkv, d in shapes:
        cfg = _config(hq, hkv, d)
        options = {"num_warps": cfg.pop("num_warps")}
        for dt in dtypes:
            sig = {name: f"*{dt}" for name in ("Q", "K", "QO", "KO")}
            sig.update({"POS": "*i32", "INV_FREQ": "*fp32"})
            sig.update({f"s{i}": "i32" for i in range(8)})
            sig.update({"n_q_heads": "i32", "n_kv_heads": "i32", "scaling": "fp32"})
            sig.update({name: "constexpr" for name in cfg})
            for name, kernel in (("rope_fwd", _rope_fwd_kernel), ("rope_bwd", _rope_bwd_kernel)):
                typed = dict(zip(kernel.arg_names, sig.values()))  # same order, kernel's names
                label = f"{name} Hq={hq} Hkv={hkv} D={d} {dt}"
                yield label, kernel, typed, dict(cfg), options
