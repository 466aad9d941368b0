"""The kernels as torch custom ops (``llm2vec_fast.kernels.ops``), on the CPU.

Each forward op passes ``torch.library.opcheck`` (schema, fake tensor, autograd registration,
AOT dispatch), gives the PyTorch reference's output and gradients (what the CPU ran before the
ops were the only path), and runs inside a function compiled with ``fullgraph=True`` (backend
``aot_eager``: no C compiler needed). The kernel modules import nothing of llm2vec_fast but
themselves.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from llm2vec_fast import kernels
from llm2vec_fast.kernels import ops
from llm2vec_fast.kernels.pooling import segment_pool_ref

LENGTHS = [7, 1, 0, 13, 4]  # odd lengths, one text of one token, one empty text


def _cu(lengths):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return cu


def _grads(fn, inputs, *args):
    """(output(s), gradients of sum(out * fixed random weights) w.r.t. inputs)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves, *args)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(123)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    return outs, torch.autograd.grad(loss, leaves)


def _attention_inputs(hq=4, hkv=2, d=16, lengths=LENGTHS):
    total = sum(lengths)
    q = torch.randn(total, hq, d)
    k = torch.randn(total, hkv, d)
    v = torch.randn(total, hkv, d)
    return q, k, v, _cu(lengths), max(lengths)


def _pool_inputs(h=12, lengths=(7, 1, 13, 4)):
    total = sum(lengths)
    hidden = torch.randn(total, h)
    cu = _cu(lengths)
    mask = torch.rand(total) > 0.3
    mask[cu[:-1].long()] = True  # every text has a masked token (bos_token needs one)
    mask[cu[3] - 1] = False  # the last token of a long text is not pooled
    return hidden, cu, mask


# opcheck's default tests, minus none: schema, autograd registration, fake tensor, AOT dispatch
def _opcheck(op, args):
    torch.library.opcheck(op, args)


# ---- varlen_attention -----------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_varlen_attention_opcheck(causal, groups):
    torch.manual_seed(0)
    q, k, v, cu, mx = _attention_inputs(hq=4, hkv=4 // groups)
    for t in (q, k, v):
        t.requires_grad_(True)
    op = torch.ops.llm2vec_fast.varlen_attention_forward.default
    _opcheck(op, (q, k, v, cu, mx, causal, None, 0.0, None, 0, False))
    _opcheck(op, (q, k, v, cu, None, causal, 0.3, 0.0, None, 0, False))
    _opcheck(op, (q, k, v, cu, mx, causal, 0.3, 0.2, 5, 1, False))  # dropout
    # the backward op (not differentiable itself) on the forward's own outputs
    q, k, v = (t.detach() for t in (q, k, v))
    out, lse = op(q, k, v, cu, mx, causal, None, 0.2, 5, 1, False)
    _opcheck(
        torch.ops.llm2vec_fast.varlen_attention_backward.default,
        (torch.randn_like(out), q, k, v, out, lse, cu, mx, causal, None, 0.2, 5, 1, False),
    )


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_attention_matches_reference(causal):
    torch.manual_seed(1)
    q, k, v, cu, mx = _attention_inputs(hq=6, hkv=2, d=24)
    out, grads = _grads(ops.varlen_attention, [q, k, v], cu, mx, causal)
    ref_out, ref_grads = _grads(kernels.varlen_attention_sdpa, [q, k, v], cu, mx, causal)
    assert_close(out[0], ref_out[0])
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, r, msg=lambda m, name=name: f"{name}: {m}")


def test_varlen_attention_compiles_fullgraph():
    torch.manual_seed(2)
    q, k, v, cu, mx = _attention_inputs()
    w = torch.randn(q.shape[-1], q.shape[-1])

    def f(q, k, v):
        o = ops.varlen_attention(q @ w, k, v, cu, mx)
        return torch.tanh(o).sum(-1)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert_close(compiled(q, k, v), f(q, k, v))
    # the backward runs through the compiled graph too
    out, grads = _grads(compiled, [q, k, v])
    ref_out, ref_grads = _grads(f, [q, k, v])
    assert_close(out[0], ref_out[0])
    for g, r in zip(grads, ref_grads):
        assert_close(g, r)


# ---- segment_pool ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", kernels.POOLING_MODES)
def test_segment_pool_opcheck(mode):
    torch.manual_seed(3)
    hidden, cu, mask = _pool_inputs()
    hidden.requires_grad_(True)
    _opcheck(torch.ops.llm2vec_fast.segment_pool_forward.default, (hidden, cu, mask, mode))


@pytest.mark.parametrize("mode", kernels.POOLING_MODES)
def test_segment_pool_matches_reference(mode):
    torch.manual_seed(4)
    hidden, cu, mask = _pool_inputs()
    out, (g,) = _grads(ops.segment_pool, [hidden], cu, mask, mode)
    ref_out, (r,) = _grads(segment_pool_ref, [hidden], cu, mask, mode)
    assert out[0].dtype == torch.float32 and out[0].shape == (cu.numel() - 1, hidden.shape[1])
    assert_close(out[0], ref_out[0])
    assert_close(g, r)


def test_segment_pool_fake_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        hidden = torch.empty(30, 8, dtype=torch.bfloat16)
        out = ops.segment_pool(
            hidden, torch.empty(6, dtype=torch.int32), torch.empty(30, dtype=torch.bool), "mean"
        )
    assert out.shape == (5, 8) and out.dtype == torch.float32


def test_segment_pool_compiles_fullgraph():
    torch.manual_seed(5)
    hidden, cu, mask = _pool_inputs()

    def f(hidden):
        return torch.nn.functional.normalize(ops.segment_pool(hidden * 2, cu, mask, "mean"), dim=-1)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert_close(compiled(hidden), f(hidden))


# ---- rms_norm, apply_rope, gated_act -------------------------------------------------------


def _rope_inputs():
    lengths = [5, 1, 9]
    q, k = torch.randn(15, 4, 16), torch.randn(15, 2, 16)
    pos = torch.cat([torch.arange(n) for n in lengths])
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    return q, k, pos, inv_freq


@pytest.mark.parametrize("gemma", [False, True])
def test_rms_norm_op(gemma):
    torch.manual_seed(6)
    x, w = torch.randn(11, 3, 24), torch.randn(24)
    _opcheck(
        torch.ops.llm2vec_fast.rms_norm_forward.default,
        (x.requires_grad_(True), w.requires_grad_(True), 1e-6, gemma),
    )
    out, grads = _grads(ops.rms_norm, [x, w], 1e-6, gemma)
    ref_out, ref_grads = _grads(kernels.rms_norm_ref, [x, w], 1e-6, gemma)
    assert_close(out[0], ref_out[0])
    for g, r in zip(grads, ref_grads):
        assert_close(g, r)


def test_apply_rope_op():
    torch.manual_seed(7)
    q, k, pos, inv_freq = _rope_inputs()
    _opcheck(
        torch.ops.llm2vec_fast.apply_rope_forward.default,
        (q.requires_grad_(True), k.requires_grad_(True), pos, inv_freq, 1.0),
    )
    out, grads = _grads(ops.apply_rope, [q, k], pos, inv_freq, 0.9)
    ref_out, ref_grads = _grads(kernels.rope_ref, [q, k], pos, inv_freq, 0.9)
    for o, r in zip(out + grads, ref_out + ref_grads):
        assert_close(o, r)
    # only one output in the loss: the other's gradient arrives as None
    qq = q.detach().clone().requires_grad_(True)
    kk = k.detach().clone().requires_grad_(True)
    ops.apply_rope(qq, kk, pos, inv_freq)[0].sum().backward()
    assert_close(kk.grad, torch.zeros_like(k))


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_act_op(activation):
    torch.manual_seed(8)
    gate, up = torch.randn(9, 37), torch.randn(9, 37)
    _opcheck(
        torch.ops.llm2vec_fast.gated_act_forward.default,
        (gate.requires_grad_(True), up.requires_grad_(True), activation),
    )
    out, grads = _grads(ops.gated_act, [gate, up], activation)
    ref_out, ref_grads = _grads(kernels.gated_act_ref, [gate, up], activation)
    for o, r in zip(out + grads, ref_out + ref_grads):
        assert_close(o, r)


def test_elementwise_ops_compile_fullgraph():
    torch.manual_seed(9)
    q, k, pos, inv_freq = _rope_inputs()
    w = torch.randn(16)

    def f(q, k):
        q2, k2 = ops.apply_rope(ops.rms_norm(q, w, 1e-5), k, pos, inv_freq)
        return ops.gated_act(q2[:, :2], k2, "silu")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert_close(compiled(q, k), f(q, k))


# ---- registration ---------------------------------------------------------------------------


def test_second_import_reuses_the_ops(monkeypatch):
    """The source folder imported as a second package (``<other>.ops`` beside
    ``llm2vec_fast.kernels.ops``) must not define the ops again (older torch raises on a second
    definition; newer torch replaces the first one silently): the first definitions stay."""
    import importlib
    import pathlib
    import sys
    import types

    from torch._library import custom_ops

    second = "_llm2vec_fast_kernels_second_copy"
    package = types.ModuleType(second)
    package.__path__ = [str(pathlib.Path(ops.__file__).resolve().parent)]
    names = [f"llm2vec_fast::{n}_{part}" for n in ops.OPS for part in ("forward", "backward")]
    before = {n: custom_ops.OPDEFS.get(n) for n in names}
    monkeypatch.setitem(sys.modules, second, package)
    try:
        module = importlib.import_module(f"{second}.ops")
        assert module is not ops
        assert {n: custom_ops.OPDEFS.get(n) for n in names} == before
        q, k, v, cu, mx = _attention_inputs()
        assert_close(
            module.varlen_attention(q, k, v, cu, mx), ops.varlen_attention(q, k, v, cu, mx)
        )
    finally:
        for name in [n for n in sys.modules if n.startswith(second + ".")]:
            del sys.modules[name]


# ---- layering -------------------------------------------------------------------------------


def test_kernel_modules_import_only_torch_triton_and_themselves():
    """kernels/*.py (the ops layer) import torch, triton, the standard library and each other
    (relative imports), never the rest of llm2vec_fast: no import loop through the package."""
    import ast
    import pathlib
    import sys

    folder = pathlib.Path(ops.__file__).resolve().parent
    files = sorted(folder.glob("*.py"))
    assert len(files) >= 10, files
    allowed = {"torch", "triton"} | set(sys.stdlib_module_names)
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:  # relative imports: the kernel modules themselves
                continue
            bad += [f"{path.name}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] not in allowed]  # fmt: skip
    assert not bad, "kernels/ must import only torch, triton and itself:\n" + "\n".join(bad)
