"""The cross-entropy kernel (kernels/cross_entropy.py) compiles for the H100 (sm_90).

Compiled ahead of time on the CPU with ``kernels._aot.compile_sm90`` (cached in-process by kernel
source, signature and constants) at the block sizes the launcher uses for real vocabularies.
Each variant must compile without spilling, in at most 64 registers a thread (so four 8-warp
programs fit on one SM), with the full blocks' loads and stores vectorised (``.v4`` in the
PTX). The default run compiles bf16 logits at a 128k vocabulary, with and without the
gradient; the full matrix (bf16, fp16, fp32 logits; int64 and int32 targets; every vocabulary)
is marked slow and runs with ``-m slow``.
"""

from __future__ import annotations

import os
import re

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("AOT compilation needs the compiler, not the interpreter", allow_module_level=True)
pytest.importorskip("triton")

import importlib  # noqa: E402

from l2vf_support.sm90 import compile_without_spills, params, quick_and_full  # noqa: E402

ce = importlib.import_module("llm2vec_fast.kernels.cross_entropy")

# Llama-2 / Mistral-7B, SmolLM2, GPT-2 (odd), Llama-3 (128k), Qwen2, Gemma
VOCABS = (32000, 49152, 50257, 128256, 151936, 256000)
DTYPES = ("bf16", "fp16", "fp32")
MAX_REGISTERS = 64


QUICK = params(ce._sm90_configs([128_256], ["bf16"]))
FULL = params(ce._sm90_configs(VOCABS, DTYPES, ("i64", "i32")))


def _compile_and_check(kernel, sig, const, opts):
    c = compile_without_spills(kernel, sig, const, opts)
    if c.spill_bytes is not None:  # None: cuobjdump missing from the triton wheel
        assert c.registers <= MAX_REGISTERS, f"{c.name}: {c.registers} registers"
    assert re.search(r"ld\.global(\.\w+)*\.v4", c.ptx), "full blocks: loads not vectorised"
    if const["HAS_GRAD"]:
        assert re.search(r"st\.global(\.\w+)*\.v4", c.ptx), "gradient stores not vectorised"
    return c


test_cross_entropy_compiles_for_sm90, test_cross_entropy_compiles_for_sm90_full = quick_and_full(
    QUICK, FULL, _compile_and_check
)
