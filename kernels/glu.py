"""Gated activation of the MLP: ``act(gate) * up`` (SwiGLU with silu, GeGLU with tanh-gelu).

    gate     [T, I] (or [..., I]) float32 / float16 / bfloat16; the last dim contiguous, the row
             stride free (so the halves of a fused gate_up output ``[T, 2I]`` work as views)
    up       same shape and dtype as gate
    returns  [T, I] in gate's dtype, contiguous

activation: ``"silu"`` (Llama, Mistral, Qwen2) or ``"gelu_tanh"`` (Gemma's
``gelu_pytorch_tanh``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``). Math in float32;
``act(gate)`` is rounded to the dtype before the multiply, as the model's eager
``self.act(gate) * up`` does. The backward gives (dgate, dup) in float32 math, stored in the
inputs' dtypes; it recomputes ``act(gate)`` instead of saving it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from ._aot import SM90_DTYPES, Sm90Config
from ._launch import HAVE_TRITON, next_pow2

if HAVE_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - the PyTorch reference still works
    triton = None

__all__ = ["ACTIVATIONS", "gated_act_bwd", "gated_act_fwd", "gated_act_ref"]

ACTIVATIONS = ("silu", "gelu_tanh")
_ACT_ID = {name: i for i, name in enumerate(ACTIVATIONS)}
_MAX_BLOCK = 1024  # columns per program: 8 elements a thread at 4 warps (16-byte bf16 accesses)


def _act_ref(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "silu":
        return F.silu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def gated_act_ref(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """PyTorch reference: ``act(gate) * up``, as ``model.MLP`` computes it."""
    return _act_ref(gate, activation) * up


def _config(n_cols: int) -> dict:
    """Columns per program and warps for rows of ``n_cols`` elements."""
    return {"BLOCK": min(next_pow2(n_cols), _MAX_BLOCK), "num_warps": 4}


if HAVE_TRITON:
    _SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
    _GELU_CUBIC = tl.constexpr(0.044715)

    @triton.jit
    def _tanh(x):
        # (1 - e) / (1 + e) with e = exp(-2|x|) <= 1: no overflow, exact limits +-1; libdevice's
        # tanh is not available under the interpreter
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(x < 0, -t, t)

    @triton.jit
    def _act_and_grad(g, ACT: tl.constexpr):
        """(act(g), act'(g)) in float32; ACT 0 = silu, 1 = tanh-gelu."""
        if ACT == 0:
            s = tl.sigmoid(g)
            a = g * s
            da = s * (1.0 + g * (1.0 - s))
        else:
            k = _SQRT_2_OVER_PI
            c = _GELU_CUBIC
            t = _tanh(k * (g + c * g * g * g))
            a = 0.5 * g * (1.0 + t)
            da = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * k * (1.0 + 3.0 * c * g * g)
        return a, da

    @triton.jit
    def _row_block(n_cols, BLOCK: tl.constexpr):
        """This program's row (int64), its block of columns and the mask of those < n_cols."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        return row, cols, cols < n_cols

    @triton.jit
    def _load_f32(P, row, stride, cols, mask):
        """``P[row, cols]`` as float32, zeros where masked."""
        return tl.load(P + row * stride + cols, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _gated_act_fwd_kernel(
        Y, G, U, stride_y, stride_g, stride_u, n_cols,
        ACT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row, cols, mask = _row_block(n_cols, BLOCK)
        g = _load_f32(G, row, stride_g, cols, mask)
        u = _load_f32(U, row, stride_u, cols, mask)
        a, _ = _act_and_grad(g, ACT)
        y = a.to(G.dtype.element_ty).to(tl.float32) * u
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _gated_act_bwd_kernel(
        DG, DU, DY, G, U, stride_dg, stride_du, stride_dy, stride_g, stride_u, n_cols,
        ACT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row, cols, mask = _row_block(n_cols, BLOCK)
        dy = _load_f32(DY, row, stride_dy, cols, mask)
        g = _load_f32(G, row, stride_g, cols, mask)
        u = _load_f32(U, row, stride_u, cols, mask)
        a, da = _act_and_grad(g, ACT)
        du = dy * a.to(G.dtype.element_ty).to(tl.float32)
        dg = dy * u * da
        tl.store(DG + row * stride_dg + cols, dg.to(DG.dtype.element_ty), mask=mask)
        tl.store(DU + row * stride_du + cols, du.to(DU.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as ``[rows, cols]`` with a unit column stride (a view where possible)."""
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _check(gate: torch.Tensor, up: torch.Tensor, activation: str) -> int:
    if activation not in _ACT_ID:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    if gate.shape != up.shape:
        raise ValueError(
            f"gate and up must have one shape; got {tuple(gate.shape)}, {tuple(up.shape)}"
        )
    return _ACT_ID[activation]


def gated_act_fwd(gate: torch.Tensor, up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """Triton forward: gate, up ``[..., I]`` -> ``act(gate) * up`` ``[..., I]`` (gate's dtype)."""
    act = _check(gate, up, activation)
    shape = gate.shape
    g, u = _rows(gate), _rows(up)
    n_rows, n_cols = g.shape
    y = torch.empty((n_rows, n_cols), dtype=gate.dtype, device=gate.device)
    if y.numel():
        cfg = _config(n_cols)
        grid = (n_rows, triton.cdiv(n_cols, cfg["BLOCK"]))
        _gated_act_fwd_kernel[grid](
            y, g, u, y.stride(0), g.stride(0), u.stride(0), n_cols,
            ACT=act, BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"],
        )  # fmt: skip
    return y.reshape(shape)


def gated_act_bwd(
    dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, activation: str = "silu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton backward: dy, gate, up ``[..., I]`` -> (dgate, dup), new tensors in gate's and
    up's dtypes."""
    act = _check(gate, up, activation)
    shape = gate.shape
    d, g, u = _rows(dy), _rows(gate), _rows(up)
    n_rows, n_cols = g.shape
    dg = torch.empty((n_rows, n_cols), dtype=gate.dtype, device=gate.device)
    du = torch.empty((n_rows, n_cols), dtype=up.dtype, device=up.device)
    if dg.numel():
        cfg = _config(n_cols)
        grid = (n_rows, triton.cdiv(n_cols, cfg["BLOCK"]))
        _gated_act_bwd_kernel[grid](
            dg, du, d, g, u, dg.stride(0), du.stride(0), d.stride(0), g.stride(0), u.stride(0),
            n_cols, ACT=act, BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"],
        )  # fmt: skip
    return dg.reshape(shape), du.reshape(shape)


def _sm90_configs(
    intermediate_sizes: Iterable[int],
    dtypes: Iterable[str] = SM90_DTYPES,
    activations: Iterable[str] = ACTIVATIONS,
) -> Iterator[Sm90Config]:
    """Each kernel's :data:`~._aot.Sm90Config` rows. dtypes: Triton type names of gate, up and
    the outputs."""
    tail = {"n_cols": "i32", "ACT": "constexpr", "BLOCK": "constexpr"}
    for i, dt, activation in itertools.product(intermediate_sizes, dtypes, activations):
        cfg = _config(i)
        options = {"num_warps": cfg["num_warps"]}
        const = {"ACT": _ACT_ID[activation], "BLOCK": cfg["BLOCK"]}
        fwd_sig = {"Y": f"*{dt}", "G": f"*{dt}", "U": f"*{dt}"}
        fwd_sig.update({f"stride_{n}": "i32" for n in ("y", "g", "u")}, **tail)
        bwd_sig = {n: f"*{dt}" for n in ("DG", "DU", "DY", "G", "U")}
        bwd_sig.update({f"stride_{n}": "i32" for n in ("dg", "du", "dy", "g", "u")}, **tail)
        tag = f"I={i} {dt} {activation}"
        yield f"gated_act_fwd {tag}", _gated_act_fwd_kernel, fwd_sig, const, options
        yield f"gated_act_bwd {tag}", _gated_act_bwd_kernel, bwd_sig, const, options
