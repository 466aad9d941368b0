"""The latent-attention kernels (kernels/latent_attention.py) compile for the H100 (sm_90).

Compiled ahead of time on the CPU with ``kernels._aot.compile_sm90`` at the tile sizes the
launchers use (:func:`latent_attention_tiles`), pointers and strides marked 16-aligned as the
JIT specialises them for contiguous tensors. Every variant must compile without spilling
(cuobjdump's LOCAL and STACK both 0) and fit the H100's shared memory. The default run compiles
forward, dQ and dK/dV at (bf16, D=128) and (fp16, D=64); the full matrix (bf16, fp16; D 64, 72,
80, 96, 128, 256) is marked slow and runs with ``-m slow`` (or ``LLM2VEC_RUN_SLOW=1``). float32
is not compiled: float32 CUDA tensors take the PyTorch path (``uses_triton``).
"""

from __future__ import annotations

import importlib
import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("AOT compilation needs the compiler, not the interpreter", allow_module_level=True)
pytest.importorskip("triton")

from l2vf_support.sm90 import compile_without_spills, params, quick_and_full  # noqa: E402

la = importlib.import_module("llm2vec_fast.kernels.latent_attention")

H100_SHARED_BYTES = 227 * 1024
HEAD_DIMS = (64, 72, 80, 96, 128, 256)

QUICK = params([*la._sm90_configs([128], ["bf16"]), *la._sm90_configs([64], ["fp16"])])
FULL = params(la._sm90_configs(HEAD_DIMS, ["bf16", "fp16"]))


def _compile_and_check(kernel, sig, const, opts):
    c = compile_without_spills(kernel, sig, const, opts)
    assert c.shared_bytes <= H100_SHARED_BYTES, f"{c.name}: {c.shared_bytes} bytes shared"
    return c


test_latent_attention_compiles_for_sm90, test_latent_attention_compiles_for_sm90_full = (
    quick_and_full(QUICK, FULL, _compile_and_check)
)
