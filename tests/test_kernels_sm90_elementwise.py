"""The elementwise kernels (RMSNorm, RoPE, gated activation) compile for the H100 (sm_90).

Compiled ahead of time on the CPU with ``kernels._aot.compile_sm90`` at the block sizes the
launchers use (each kernel module's ``_sm90_configs`` shares its launcher's block-size logic),
for the shapes of real models; each must compile and spill no registers. The default run
compiles a few bf16 kernels at the largest shapes; the full matrix (bf16, fp16, fp32; every
shape) is marked slow and runs with ``-m slow``.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("AOT compilation needs the compiler, not the interpreter", allow_module_level=True)
pytest.importorskip("triton")

import importlib  # noqa: E402

from l2vf_support.sm90 import params, quick_and_full  # noqa: E402

# the modules, not the same-named public functions that llm2vec_fast.kernels re-exports
glu, rms_norm, rope = (
    importlib.import_module(f"llm2vec_fast.kernels.{m}") for m in ("glu", "rms_norm", "rope")
)

HIDDEN = (576, 2048, 4096)  # SmolLM2-135M, Gemma-2B / Sheared-LLaMA-1.3B, Llama-2-7B / Mistral-7B
INTERMEDIATE = (1536, 5632, 14336)  # SmolLM2-135M, Sheared-LLaMA-1.3B, Mistral-7B
HEADS = (  # (n_q_heads, n_kv_heads, head_dim)
    (9, 3, 64),  # SmolLM2-135M
    (16, 16, 128),  # Sheared-LLaMA-1.3B
    (32, 8, 128),  # Mistral-7B, Llama-3-8B
    (8, 1, 256),  # Gemma-2B
    (16, 16, 256),  # Gemma-7B
)
DTYPES = ("bf16", "fp16", "fp32")


QUICK = params(
    [
        *rms_norm._sm90_configs([4096], ["bf16"]),
        *rope._sm90_configs([(32, 8, 128)], ["bf16"]),
        *glu._sm90_configs([14336], ["bf16"], ["silu"]),
    ]
)
FULL = params(
    [
        *rms_norm._sm90_configs(HIDDEN, DTYPES),
        *rope._sm90_configs(HEADS, DTYPES),
        *glu._sm90_configs(INTERMEDIATE, DTYPES),
    ]
)


test_compiles_for_sm90_without_spills, test_compiles_for_sm90_without_spills_full = quick_and_full(
    QUICK, FULL
)


# Segment pooling (kernels/pooling.py): forward and backward, every mode, at the launchers'
# block sizes for the hidden sizes above.
pooling = importlib.import_module("llm2vec_fast.kernels.pooling")

POOL_QUICK = params(pooling._sm90_configs([4096], ["bf16"]))
POOL_FULL = params(pooling._sm90_configs(HIDDEN, DTYPES))


(
    test_pooling_compiles_for_sm90_without_spills,
    test_pooling_compiles_for_sm90_without_spills_full,
) = quick_and_full(POOL_QUICK, POOL_FULL)
