"""Ahead-of-time compilation of Triton kernels for the H100 (sm_90) on a machine without a GPU.

The interpreter does not check what only the GPU compiler checks (``tl.dot`` block dims >= 16,
shared-memory limits, register pressure). Tests compile every kernel at its real block sizes
with :func:`compile_sm90`; :func:`resource_usage` reads registers and spills from the cubin.
Results are cached per (kernel source, signature, constants) in-process.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SM90 = ("cuda", 90, 32)
SM90_DTYPES = ("bf16", "fp16", "fp32")  # the Triton type names a kernel module compiles for

# (label, kernel, signature, constexprs, options): one variant of a kernel at the block sizes its
# launcher uses, ready for :func:`compile_sm90`. Each kernel module's ``_sm90_configs`` yields
# them for the shapes of real models.
Sm90Config = tuple[str, object, dict, dict, dict]


@dataclass(frozen=True)
class Compiled:
    name: str
    num_warps: int
    num_stages: int
    shared_bytes: int
    registers: int | None
    spill_bytes: int | None  # LOCAL in cuobjdump's resource usage
    stack_bytes: int | None  # STACK: where ptxas puts register spills on sm_90
    ptx: str
    cubin: bytes


_cache: dict[str, Compiled] = {}


def _key(fn, signature: dict, constexprs: dict, options: dict) -> str:
    src = getattr(fn, "src", None) or getattr(getattr(fn, "fn", None), "__code__", None)
    h = hashlib.sha256(str(src).encode())
    h.update(repr(sorted(signature.items())).encode())
    h.update(repr(sorted(constexprs.items())).encode())
    h.update(repr(sorted(options.items())).encode())
    return h.hexdigest()


def compile_sm90(
    fn, signature: dict, constexprs: dict, *, aligned: bool = True, **options
) -> Compiled:
    """Compile ``fn`` (a ``@triton.jit`` function) for sm_90.

    signature: every argument name -> a Triton type string (``"*bf16"``, ``"i32"``,
    ``"fp32"``, ``"constexpr"``); constexprs: the constexpr values; options: ``num_warps``,
    ``num_stages``. ``aligned``: mark pointers and ``stride*`` arguments divisible by 16, the
    specialisation Triton's JIT makes at run time for ordinary tensors (without it loads are not
    vectorised and register counts are not the ones that run).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    key = _key(fn, signature, constexprs, {**options, "aligned": aligned})
    if key in _cache:
        return _cache[key]
    attrs = None
    if aligned:
        names = list(signature)
        attrs = {
            (names.index(n),): [["tt.divisibility", 16]]
            for n, ty in signature.items()
            if ty.startswith("*") or n.startswith("stride")
        }
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    k = triton.compile(src, target=GPUTarget(*SM90), options=options or None)
    regs, spills, stack = resource_usage(k.asm["cubin"])
    out = Compiled(
        name=k.metadata.name,
        num_warps=k.metadata.num_warps,
        num_stages=k.metadata.num_stages,
        shared_bytes=k.metadata.shared,
        registers=regs,
        spill_bytes=spills,
        stack_bytes=stack,
        ptx=k.asm["ptx"],
        cubin=k.asm["cubin"],
    )
    _cache[key] = out
    return out


def _cuobjdump() -> Path | None:
    import triton

    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return p if p.is_file() and os.access(p, os.X_OK) else None


def cuobjdump(cubin: bytes, flag: str) -> str | None:
    """What triton's ``cuobjdump <flag>`` prints for ``cubin`` (``--dump-resource-usage``,
    ``-sass``); None when the wheel has no such tool."""
    tool = _cuobjdump()
    if tool is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run(
            [str(tool), flag, f.name], capture_output=True, text=True, check=False
        ).stdout


def resource_usage(cubin: bytes) -> tuple[int | None, int | None, int | None]:
    """(registers per thread, LOCAL bytes, STACK bytes) from ``cuobjdump --dump-resource-usage``;
    Nones when the tool is unavailable."""
    out = cuobjdump(cubin, "--dump-resource-usage")
    if out is None:
        return None, None, None
    found = [re.search(rf"{name}:(\d+)", out) for name in ("REG", "LOCAL", "STACK")]
    return tuple(int(m.group(1)) if m else None for m in found)
