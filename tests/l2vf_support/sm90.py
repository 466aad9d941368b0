"""Shared pieces of the ahead-of-time sm_90 compile tests (tests/test_kernels_sm90_*.py).

- :func:`params`: a kernel module's ``_sm90_configs`` rows as pytest parameters, ids = labels;
- :func:`compile_without_spills`: compile one row and assert what every kernel must meet;
- :func:`slow_selected` / :func:`skip_unless_slow`: the full compile matrices run only when
  asked for, with ``-m slow`` (or ``LLM2VEC_RUN_SLOW=1``);
- :func:`quick_and_full`: the two tests of a kernel family, its quick rows and its full (slow)
  matrix;
- :func:`attention_matrix`: the (kernel, dtype, head_dim, causal) matrix of the attention
  kernels' slow tests.
"""

from __future__ import annotations

import os

import pytest

from llm2vec_fast.kernels._aot import compile_sm90


def params(configs):
    """``(label, kernel, signature, constexprs, options)`` rows -> parameters
    ``kernel, sig, const, opts`` with the label as id."""
    return [
        pytest.param(kernel, sig, const, opts, id=label)
        for label, kernel, sig, const, opts in configs
    ]


def compile_without_spills(kernel, sig, const, opts):
    """Compile for sm_90 at ``opts``; assert the warps asked for and no spill (when the wheel's
    cuobjdump reports it). Returns the compiled kernel for further checks."""
    c = compile_sm90(kernel, sig, const, **opts)
    assert c.num_warps == opts["num_warps"]
    if c.spill_bytes is not None:  # None: cuobjdump missing from the triton wheel
        assert c.spill_bytes == 0 and c.stack_bytes == 0, (
            f"{c.name}: {c.spill_bytes} bytes spilled, {c.registers} registers"
        )
    return c


def slow_selected(request) -> bool:
    """Whether this run asked for the slow tests: ``-m`` naming ``slow`` (not ``not slow``), or
    ``LLM2VEC_RUN_SLOW=1``."""
    return os.environ.get("LLM2VEC_RUN_SLOW") == "1" or "slow" in (
        request.config.getoption("markexpr") or ""
    ).replace("not slow", "")


def skip_unless_slow(request) -> None:
    if not slow_selected(request):
        pytest.skip("slow: run with -m slow or LLM2VEC_RUN_SLOW=1")


def quick_and_full(quick, full, check=compile_without_spills):
    """Two tests, for a module to bind to its test names: ``check(kernel, sig, const, opts)`` on
    each row of ``quick``, and on each row of ``full``, marked slow and run only when asked for
    (:func:`skip_unless_slow`)."""

    @pytest.mark.parametrize("kernel, sig, const, opts", quick)
    def quick_test(kernel, sig, const, opts):
        check(kernel, sig, const, opts)

    @pytest.mark.slow
    @pytest.mark.parametrize("kernel, sig, const, opts", full)
    def full_test(request, kernel, sig, const, opts):
        skip_unless_slow(request)
        check(kernel, sig, const, opts)

    return quick_test, full_test


def attention_matrix(test):
    """Parametrize ``test`` over kernel (fwd, dkdv, dq), dt (bf16, fp16), head_dim and causal."""
    test = pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])(test)
    test = pytest.mark.parametrize("dt", ["bf16", "fp16"])(test)
    test = pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])(test)
    test = pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])(test)
    return pytest.mark.slow(test)
