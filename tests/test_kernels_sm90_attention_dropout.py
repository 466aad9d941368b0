"""Ahead-of-time sm_90 compiles of the varlen flash-attention kernels with dropout (``DROPOUT``).

The companion of test_kernels_sm90_attention.py (which compiles the kernels without dropout): no
GPU needed, triton compiles for the H100 on the CPU. Each kernel is compiled at its real tile
sizes (``flash_varlen_tiles(D, dtype, dropout)``) with ``DROPOUT=True`` and ``DROPOUT=False``, specialised as triton's JIT specialises it for
ordinary tensors (pointers and strides divisible by 16), through
:func:`llm2vec_fast.kernels._aot.compile_sm90` (cached in-process by kernel source, signature and
constants; triton's own cache keeps the cubins on disk by source hash). Each row printed gives
registers, stack (where ptxas spills), LOCAL and shared memory with dropout, and the registers
without it.

The default run compiles fwd, dK/dV and dQ at (bf16, D=128) and (fp16, D=64), the mask helper,
and checks that ``DROPOUT=False`` compiles no Philox code; the full matrix (both dtypes, D in 64,
80, 96, 128, 256, causal and not) is marked slow and runs with ``-m slow`` (or
``LLM2VEC_RUN_SLOW=1``).
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("AOT compilation needs the compiler, not the interpreter", allow_module_level=True)
pytest.importorskip("triton")

from l2vf_support.sm90 import attention_matrix, skip_unless_slow  # noqa: E402
from llm2vec_fast.kernels import _aot  # noqa: E402
from llm2vec_fast.kernels import flash_varlen as fv  # noqa: E402
from llm2vec_fast.kernels import flash_varlen_kernels as fk  # noqa: E402

H100_SHARED_BYTES = 227 * 1024
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Philox-4x32's first round multiplier (0xD2511F53) as PTX writes an immediate: only dropout
# code contains it
_PHILOX_ROUND_A = (str(0xD2511F53), str(0xD2511F53 - (1 << 32)), "0dD2511F53")


def _signature(kernel: str, dt: str, head_dim: int, causal: bool, dropout: bool):
    """(fn, signature, constexprs, options) as the launchers pass them (every argument typed from
    its name: Q/K/V/O/DO/DQ/DK/DV in ``dt``, LSE/DELTA float32, CU int32, the seed int64, scales
    and dropout_p float32, the rest int32)."""
    t = fv.flash_varlen_tiles(head_dim, _TORCH_DTYPES[dt], dropout)
    if kernel == "fwd":
        fn = fk.flash_varlen_fwd_kernel
        consts = dict(BLOCK_M=t.BLOCK_M, BLOCK_N=t.BLOCK_N)
        opts = dict(num_warps=t.fwd_warps, num_stages=t.fwd_stages)
    elif kernel == "dkdv":
        fn = fk.flash_varlen_bwd_dkdv_kernel
        consts = dict(BLOCK_M1=t.BLOCK_M1, BLOCK_N1=t.BLOCK_N1)
        opts = dict(num_warps=t.dkdv_warps, num_stages=t.bwd_stages)
    else:
        fn = fk.flash_varlen_bwd_dq_kernel
        consts = dict(BLOCK_M2=t.BLOCK_M2, BLOCK_N2=t.BLOCK_N2)
        opts = dict(num_warps=t.dq_warps, num_stages=t.bwd_stages)
    consts = dict(HEAD_DIM=head_dim, BLOCK_D=t.BLOCK_D) | consts
    consts |= dict(CAUSAL=causal, DROPOUT=dropout, DOT_PREC="ieee")
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("LSE", "DELTA"):
            sig[name] = "*fp32"
        elif name == "CU":
            sig[name] = "*i32"
        elif name.isupper():
            sig[name] = "*" + dt
        elif name in ("qk_scale", "sm_scale", "dropout_p"):
            sig[name] = "fp32"
        elif name == "seed":
            sig[name] = "i64"
        else:
            sig[name] = "i32"
    assert set(consts) <= set(sig), f"{kernel}: constants out of step with the kernel"
    return fn, sig, consts, opts


def _compile(kernel, dt, head_dim, causal, dropout) -> _aot.Compiled:
    fn, sig, consts, opts = _signature(kernel, dt, head_dim, causal, dropout)
    c = _aot.compile_sm90(fn, sig, consts, aligned=True, **opts)
    assert c.shared_bytes <= H100_SHARED_BYTES, f"{kernel} {dt} D={head_dim}: {c.shared_bytes} B"
    return c


def _check(kernel: str, dt: str, head_dim: int, causal: bool = False) -> dict:
    on = _compile(kernel, dt, head_dim, causal, True)
    if on.stack_bytes is None:
        pytest.skip("cuobjdump not shipped with this triton")
    off = _compile(kernel, dt, head_dim, causal, False)
    row = dict(
        kernel=kernel, dtype=dt, D=head_dim, causal=causal, warps=on.num_warps,
        regs=on.registers, stack=on.stack_bytes, local=on.spill_bytes, shared=on.shared_bytes,
        regs_no_dropout=off.registers, stack_no_dropout=off.stack_bytes,
        shared_no_dropout=off.shared_bytes,
    )  # fmt: skip
    print(row)
    return row


# ---- default run ---------------------------------------------------------------------------


@pytest.mark.parametrize("dt, head_dim", [("bf16", 128), ("fp16", 64)])
@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
def test_compile_dropout_default(kernel, dt, head_dim):
    row = _check(kernel, dt, head_dim)
    assert row["stack"] == 0 and row["local"] == 0, f"dropout variant spills: {row}"


def test_no_dropout_variant_has_no_philox():
    """``DROPOUT=False`` compiles without any of the dropout code (no extra cost at p = 0);
    ``DROPOUT=True`` contains the Philox rounds."""
    for kernel in ("fwd", "dkdv", "dq"):
        off = _compile(kernel, "bf16", 128, False, False)
        on = _compile(kernel, "bf16", 128, False, True)
        assert not any(c in off.ptx for c in _PHILOX_ROUND_A), f"{kernel}: Philox without dropout"
        assert any(c in on.ptx for c in _PHILOX_ROUND_A), f"{kernel}: no Philox with dropout"


def test_compile_dropout_mask_kernel():
    fn = fk.dropout_mask_kernel
    consts = dict(BLOCK_M=32, BLOCK_N=32)
    sig = {"MASK": "*i8", "CU": "*i32", "total_tokens": "i32", "max_seqlen": "i32"}
    sig |= {"dropout_p": "fp32", "seed": "i64", "offset": "i32"}
    sig |= {n: "constexpr" for n in consts}
    assert list(sig) == fn.arg_names
    c = _aot.compile_sm90(fn, sig, consts, aligned=False, num_warps=4, num_stages=1)
    assert c.spill_bytes in (0, None) and c.stack_bytes in (0, None)


# ---- full matrix (slow) ----------------------------------------------------------------------


@attention_matrix
def test_compile_dropout_matrix(request, kernel, dt, head_dim, causal):
    skip_unless_slow(request)
    row = _check(kernel, dt, head_dim, causal)
    assert row["stack"] == 0 and row["local"] == 0, f"dropout variant spills: {row}"
