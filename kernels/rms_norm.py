"""RMSNorm over the rows of packed hidden states, HF semantics (Llama and Gemma forms).

    x       [T, H] (or [..., H]) float32 / float16 / bfloat16
    weight  [H]
    returns [T, H]: Llama ``weight * (x_normed cast to x.dtype)`` (dtype promoted from x and
            weight, as torch does); Gemma ``(x_normed * (1 + weight))`` in float32, then cast to
            x.dtype

``x_normed = x * rsqrt(mean(x^2) + eps)`` with the statistics in float32, exactly as
``llm2vec_fast.model.RMSNorm``. The forward saves ``rstd [T]`` float32; the backward gives
``dx`` (float32 math, stored in x.dtype) and ``dweight`` (per-program partial sums in float32
over a slice of rows, then one sum over programs, stored in weight.dtype), as Liger-Kernel does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import torch

from ._aot import SM90_DTYPES, Sm90Config
from ._launch import HAVE_TRITON, contiguous, next_pow2, num_warps_for

if HAVE_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - the PyTorch reference still works
    triton = None

__all__ = [
    "rms_norm_bwd",
    "rms_norm_bwd_torch",
    "rms_norm_fwd",
    "rms_norm_fwd_torch",
    "rms_norm_ref",
]


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> torch.Tensor:
    """PyTorch reference, the same math as ``model.RMSNorm`` (float64 input stays float64);
    differentiable: x ``[..., H]`` -> ``[..., H]``."""
    return rms_norm_fwd_torch(x, weight, eps, gemma)[0]


def _config(n_cols: int) -> dict:
    """Block size and warps for one row of ``n_cols`` elements (forward and backward)."""
    block = next_pow2(n_cols)
    return {"BLOCK": block, "num_warps": num_warps_for(block)}


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_bwd_programs(n_rows: int, device: torch.device) -> int:
    """Programs of the backward (one per SM): each reduces dweight over a slice of rows."""
    if device.type == "cuda":
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:  # the interpreter: few programs, fast
        sms = 4
    return max(1, min(n_rows, sms))


if HAVE_TRITON:

    @triton.jit
    def _rms_norm_fwd_kernel(
        Y,  # [T, H] out
        X,  # [T, H]
        W,  # [H]
        RSTD,  # [T] float32 out
        stride_y,
        stride_x,
        n_cols,
        eps,
        GEMMA: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        tl.store(RSTD + row, rstd)
        n = x * rstd
        if GEMMA:
            y = n * (1.0 + w)
        else:
            y = w * n.to(X.dtype.element_ty).to(tl.float32)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_norm_bwd_kernel(
        DX,  # [T, H] out
        DW_PARTIAL,  # [P, H] float32 out, one row per program
        DY,  # [T, H]
        X,  # [T, H]
        W,  # [H]
        RSTD,  # [T] float32
        stride_dx,
        stride_dy,
        stride_x,
        n_rows,
        n_cols,
        rows_per_program,
        GEMMA: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        row_start = pid * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, n_rows)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if GEMMA:
            w = w + 1.0
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        start = row_start.to(tl.int64)
        x_ptr = X + start * stride_x + cols
        dy_ptr = DY + start * stride_dy + cols
        dx_ptr = DX + start * stride_dx + cols
        rstd_ptr = RSTD + start
        for _ in range(row_start, row_end):
            x = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr)
            n = x * rstd
            if GEMMA:
                dw += dy * n
            else:
                dw += dy * n.to(X.dtype.element_ty).to(tl.float32)
            dn = dy * w
            dx = rstd * (dn - n * (tl.sum(dn * n, axis=0) / n_cols))
            tl.store(dx_ptr, dx.to(DX.dtype.element_ty), mask=mask)
            x_ptr += stride_x
            dy_ptr += stride_dy
            dx_ptr += stride_dx
            rstd_ptr += 1
        tl.store(DW_PARTIAL + pid.to(tl.int64) * n_cols + cols, dw, mask=mask)


def rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward: x ``[T, H]`` -> (y ``[T, H]``, rstd ``[T]`` float32)."""
    (x,) = contiguous(x)
    (weight,) = contiguous(weight)
    n_rows, n_cols = x.shape
    out_dtype = x.dtype if gemma else torch.promote_types(x.dtype, weight.dtype)
    y = torch.empty((n_rows, n_cols), dtype=out_dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows:
        cfg = _config(n_cols)
        _rms_norm_fwd_kernel[(n_rows,)](
            y, x, weight, rstd, y.stride(0), x.stride(0), n_cols, eps,
            GEMMA=gemma, BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"],
        )  # fmt: skip
    return y, rstd


def rms_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    gemma: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton backward: dy ``[T, H]`` -> (dx ``[T, H]`` x.dtype, dweight ``[H]`` weight.dtype)."""
    dy, x, weight = contiguous(dy, x, weight)
    n_rows, n_cols = x.shape
    dx = torch.empty_like(x)
    programs = _num_bwd_programs(n_rows, x.device)
    rows_per_program = triton.cdiv(n_rows, programs) if n_rows else 0
    dw_partial = torch.zeros((programs, n_cols), dtype=torch.float32, device=x.device)
    if n_rows:
        cfg = _config(n_cols)
        _rms_norm_bwd_kernel[(programs,)](
            dx, dw_partial, dy, x, weight, rstd,
            dx.stride(0), dy.stride(0), x.stride(0), n_rows, n_cols, rows_per_program,
            GEMMA=gemma, BLOCK=cfg["BLOCK"], num_warps=cfg["num_warps"],
        )  # fmt: skip
    return dx, dw_partial.sum(0).to(weight.dtype)


def rms_norm_fwd_torch(
    x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch forward: x ``[..., H]`` -> (y ``[..., H]``, rstd ``[...]`` float32, float64 for
    float64 x). Llama: ``weight * (x * rstd).to(x.dtype)``; Gemma: ``(x * rstd * (1 + weight))``
    in float32, then cast."""
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    rstd = torch.rsqrt(h.pow(2).mean(-1) + eps)
    n = h * rstd[..., None]
    if gemma:
        return (n * (1.0 + weight.to(h.dtype))).to(x.dtype), rstd
    return weight * n.to(x.dtype), rstd


def rms_norm_bwd_torch(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    gemma: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch backward from the forward's ``rstd``, the math of the Triton backward:
    (dx ``[T, H]`` x.dtype, dweight ``[H]`` weight.dtype)."""
    ct = rstd.dtype
    n = x.to(ct) * rstd[:, None]
    g = dy.to(ct)
    if gemma:
        dw, dn = (g * n).sum(0), g * (1.0 + weight.to(ct))
    else:
        dw, dn = (g * n.to(x.dtype).to(ct)).sum(0), g * weight.to(ct)
    dx = rstd[:, None] * (dn - n * (dn * n).mean(-1, keepdim=True))
    return dx.to(x.dtype), dw.to(weight.dtype)


def _sm90_configs(
    hidden_sizes: Iterable[int], dtypes: Iterable[str] = SM90_DTYPES
) -> Iterator[Sm90Config]:
    """Each kernel's :data:`~._aot.Sm90Config` rows. dtypes: Triton type names of x (and weight,
    and y)."""
    dtypes = tuple(dtypes)
    for h in hidden_sizes:
        cfg = _config(h)
        options = {"num_warps": cfg["num_warps"]}
        for dt in dtypes:
            for gemma in (False, True):
                const = {"GEMMA": gemma, "BLOCK": cfg["BLOCK"]}
                fwd_sig = {
                    "Y": f"*{dt}", "X": f"*{dt}", "W": f"*{dt}", "RSTD": "*fp32",
                    "stride_y": "i32", "stride_x": "i32", "n_cols": "i32", "eps": "fp32",
                    "GEMMA": "constexpr", "BLOCK": "constexpr",
                }  # fmt: skip
                bwd_sig = {
                    "DX": f"*{dt}", "DW_PARTIAL": "*fp32", "DY": f"*{dt}", "X": f"*{dt}",
                    "W": f"*{dt}", "RSTD": "*fp32", "stride_dx": "i32", "stride_dy": "i32",
                    "stride_x": "i32", "n_rows": "i32", "n_cols": "i32",
                    "rows_per_program": "i32", "GEMMA": "constexpr", "BLOCK": "constexpr",
                }  # fmt: skip
                tag = f"H={h} {dt} gemma={gemma}"
                yield f"rms_norm_fwd {tag}", _rms_norm_fwd_kernel, fwd_sig, const, options
                yield f"rms_norm_bwd {tag}", _rms_norm_bwd_kernel, bwd_sig, const, options
