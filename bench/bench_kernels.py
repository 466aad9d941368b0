"""GPU micro-benchmarks of the Triton kernels against the PyTorch paths, in one run.

Attention (forward, and forward+backward) on one packed batch of mixed texts like the
project's H100 anchor batch (103 texts, about 16.8k tokens, max 512; lengths drawn from a fixed
seed), at three head layouts: 32/32 heads D 128 (the anchor), GQA 32/8 D 128, SmolLM2's 9/3
D 64. Each against, measured in the same run:

- ``sdpa-padded-<backend>``: torch SDPA on the batch padded to the longest text, no mask (the
  padded positions are computed and thrown away, and keys of padding are attended to: these
  rows are timings, not outputs), flash / cuDNN backends where available, with K/V expanded to
  Hq heads (``-kv-expanded``, outside the timed region) where a backend refuses ``enable_gqa``;
  ``sdpa-padded-efficient-mask``: the memory-efficient backend with a key-padding mask (the
  official llm2vec path). The pad/unpad copies are outside the timed region.
- ``sdpa-per-text``: ``kernels.varlen_attention_sdpa`` (one SDPA call per distinct length).
- ``flex-document-mask``: compiled FlexAttention on the packed batch with a document mask (the
  block mask is built once, outside the timed region). Skipped where FlexAttention is missing.

Then ``rms_norm``, ``gated_act``, ``apply_rope`` and ``segment_pool`` (mean) (forward;
forward+backward) against their eager PyTorch references at H 4096 / I 11008 / 32+8 heads of
D 128 / H 4096 over the same batch.

Then the latent attention of NV-Embed's pooling head (every token against 512 shared latents,
8 heads, D 64 and 128, the batch's 16.8k tokens), forward and forward+backward, ours against
the unfused PyTorch path (scores in memory) and torch SDPA; TFLOP/s count ``4 T R H D``
forward, 3.5x that forward+backward.

Then attention at equal lengths 128, 512 and 2048 (MHA 32 heads, D 128, about 16k tokens:
128 x 128, 32 x 512, 8 x 2048) against the same baselines (cuDNN SDPA among them), the issue's
"0.9x cuDNN's TFLOP/s forward" comparison.

Floors: the run also measures this GPU's bf16 matmul rate (``torch.matmul`` 8192^3) and copy
bandwidth (``copy_`` of 1 GiB, read + write); every row gets ``floor_ms`` (its FLOPs over the
matmul rate, or its bytes over the bandwidth, whichever is larger) and ``of_floor`` (floor over
time: 1.0 is the hardware's limit). ``--plot`` writes a PNG of the times next to the JSON when
matplotlib is installed (it is not a dependency of the project).

Times: ``triton.testing.do_bench`` (CUDA events, warm-up first, inputs fixed), the median and the
20th/80th percentiles in ms. TFLOP/s counts the useful attention FLOPs only (``4 sum(L_i^2) Hq D``
forward, 2.5x that backward, flash-attention's convention), also for the padded baselines, so
the column compares work done per second. GB/s for the elementwise kernels counts each input
read once and each output written once.

    python bench/bench_kernels.py                  # all; prints a table
    python bench/bench_kernels.py --only attention --no-flex

Writes ``bench/results/kernels-<device>.json``: one row per (op, config, implementation, pass)
with the device name, torch/triton/CUDA versions and the config.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_variants import attention_variants, latent_variants, pad_index  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE = "cuda"

ATTENTION_CONFIGS = {  # name: (query heads, kv heads, head dim)
    "mha32-d128": (32, 32, 128),
    "gqa32x8-d128": (32, 8, 128),
    "smollm2-9x3-d64": (9, 3, 64),
}


def batch_lengths(n: int = 103, total: int = 16_800, max_len: int = 512, seed: int = 0) -> list:
    """``n`` text lengths, skewed short, summing to ``total``, the longest exactly ``max_len``."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, generator=g) ** 2 + 0.01  # many short texts, a few long ones
    lengths = (raw * (total / raw.sum())).round().clamp(1, max_len).long()
    lengths[int(raw.argmax())] = max_len
    for _ in range(100):  # spread the rounding/clamping residual over the unclamped texts
        diff = total - int(lengths.sum())
        if diff == 0:
            break
        free = ((lengths < max_len) if diff > 0 else (lengths > 1)).nonzero().flatten()
        free = free[free != int(raw.argmax())]
        step = 1 if diff > 0 else -1
        take = free[torch.randperm(len(free), generator=g)[: abs(diff)]]
        lengths[take] += step
    assert int(lengths.sum()) == total and int(lengths.max()) == max_len
    return lengths.tolist()


def _bench(fn, grad_to_none=None, warmup: int = 25, rep: int = 200) -> tuple[float, float, float]:
    """(median, p20, p80) ms of ``fn`` by triton's do_bench (warm-up and repeats in ms)."""
    import triton.testing

    med, lo, hi = triton.testing.do_bench(
        fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8]
    )
    return float(med), float(lo), float(hi)


def _meta() -> dict:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0),
        "sm_count": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def cu_seqlens(lengths, device) -> torch.Tensor:
    """int32 ``[n + 1]`` text boundaries of ``lengths`` on ``device``."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return cu.to(device)


def equal_lengths(length: int, total: int = 16_384) -> list:
    """``total // length`` texts of ``length`` tokens (at least one)."""
    return [length] * max(1, total // length)


def hardware_rates(dtype, n: int = 8192, copy_bytes: int = 2**30) -> dict:
    """This GPU's measured matmul rate (TFLOP/s, ``dtype`` n^3, 8192 by default) and copy
    bandwidth (GB/s, ``copy_bytes`` (1 GiB) read and written), the denominators of the floors."""

    def matmul_ms() -> float:
        a = torch.randn(n, n, device=DEVICE, dtype=dtype)
        b = torch.randn(n, n, device=DEVICE, dtype=dtype)
        return _bench(lambda: torch.matmul(a, b))[0]

    def copy_ms() -> float:
        src = torch.empty(copy_bytes, dtype=torch.uint8, device=DEVICE)
        dst = torch.empty_like(src)
        return _bench(lambda: dst.copy_(src))[0]

    mm, cp = matmul_ms(), copy_ms()
    return {
        "matmul_tflops": 2.0 * n**3 / mm / 1e9,
        "copy_gbps": 2.0 * copy_bytes / cp / 1e6,
        "matmul_shape": [n, n, n],
        "copy_bytes": copy_bytes,
    }


def add_floors(rows: list, rates: dict) -> None:
    """``floor_ms`` and ``of_floor`` on each row from its FLOPs or bytes and the measured
    rates (see the module docstring)."""
    for r in rows:
        ms = r["ms_median"]
        floors = []
        if r.get("tflops") is not None:
            floors.append(r["tflops"] * ms / rates["matmul_tflops"])  # flops / rate, in ms
        if r.get("gbps") is not None:
            floors.append(r["gbps"] * ms / rates["copy_gbps"])
        if floors:
            r["floor_ms"] = max(floors)
            r["of_floor"] = r["floor_ms"] / ms


def plot(rows: list, path: Path) -> bool:
    """A bar chart of the median times per (op, config, pass), one bar per implementation;
    False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["op"], r["config_name"], r["pass"]), []).append(r)
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.2 * len(groups)), squeeze=False)
    for ax, ((op, name, pass_), rs) in zip(axes[:, 0], groups.items()):
        ax.barh([r["impl"] for r in rs], [r["ms_median"] for r in rs])
        ax.set_title(f"{op} {name} {pass_}", fontsize=9)
        ax.set_xlabel("ms (median)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- attention ------------------------------------------------------------------------------


def bench_attention(name, hq, hkv, d, lengths, dtype, no_flex, meta, rows, notes):
    from llm2vec_fast.kernels import varlen_attention_sdpa

    dev = DEVICE
    total, max_len = sum(lengths), max(lengths)
    cu = cu_seqlens(lengths, dev)
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(total, hq, d, device=dev, dtype=dtype, generator=g)
    k = torch.randn(total, hkv, d, device=dev, dtype=dtype, generator=g)
    v = torch.randn(total, hkv, d, device=dev, dtype=dtype, generator=g)
    do = torch.randn(total, hq, d, device=dev, dtype=dtype, generator=g)
    fwd_flops = 4.0 * sum(n * n for n in lengths) * hq * d
    config = {
        "texts": len(lengths), "tokens": total, "max_len": max_len, "q_heads": hq,
        "kv_heads": hkv, "head_dim": d, "dtype": str(dtype).replace("torch.", ""),
        "causal": False, "lengths_seed": 0,
    }  # fmt: skip

    variants, skipped, padded_inputs = attention_variants(q, k, v, lengths, cu, max_len, no_flex)
    for impl, why in skipped.items():
        notes.append(f"attention {name} {impl}: skipped ({why})")

    # correctness first: each variant's packed output against per-text SDPA
    ref = varlen_attention_sdpa(q, k, v, cu, max_len).float()
    bi, pi = pad_index(lengths, dev)
    for impl, fn in variants.items():
        with torch.no_grad():
            out = fn(q, k, v)
        if out.dim() == 4:  # padded [B, H, L, D] -> packed
            out = out.transpose(1, 2)[bi, pi]
        # unmasked padded variants attend to the zero padding: timing only, no error to report
        masked = not impl.startswith("sdpa-padded") or impl.startswith("sdpa-padded-efficient")
        err = (out.float() - ref).abs().max().item() if masked else None
        ms = _bench(lambda fn=fn: fn(q, k, v))
        rows.append(_row("attention", name, impl, "fwd", ms, fwd_flops, None, config, meta, err))

    ql, kl, vl = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    for impl, fn in variants.items():
        try:
            grad_out, leaves = do, (ql, kl, vl)
            if impl.startswith("sdpa-padded"):  # the padded tensors are the leaves
                leaves = padded_inputs(ql, kl, vl, fn.expand)
                grad_out = torch.randn(leaves[0].shape, device=DEVICE, dtype=dtype, generator=g)

            def step(fn=fn, grad_out=grad_out):
                fn(ql, kl, vl).backward(grad_out)

            step()
            ms = _bench(step, grad_to_none=list(leaves))
        except RuntimeError as e:
            notes.append(
                f"attention {name} {impl} fwd+bwd: failed ({str(e).splitlines()[0][:160]})"
            )
            continue
        rows.append(
            _row("attention", name, impl, "fwd+bwd", ms, 3.5 * fwd_flops, None, config, meta)
        )


def bench_latent(tokens, latents, heads, head_dims, dtype, meta, rows):
    """The latent attention (module docstring) at each head dim: its error against float32
    (``max_abs_err_vs_fp32``), forward and forward+backward times of each variant."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for d in head_dims:
        q, do = torch.randn(2, tokens, heads, d, device=DEVICE, generator=g, dtype=dtype)
        k, v = torch.randn(2, latents, heads, d, device=DEVICE, generator=g, dtype=dtype)
        x, x32 = (q, k, v), (q.float(), k.float(), v.float())
        ref = latent_variants(*x32)["torch-unfused"](*x32)
        flops, name = 4.0 * tokens * latents * heads * d, f"r{latents}-h{heads}-d{d}"
        config = {"tokens": tokens, "latents": latents, "heads": heads, "head_dim": d,
                  "dtype": str(dtype).replace("torch.", "")}  # fmt: skip
        leaves = [t.detach().clone().requires_grad_(True) for t in x]
        for impl, fn in latent_variants(*x).items():
            with torch.no_grad():
                err = (fn(*x).float() - ref).abs().max().item()
            ms = _bench(lambda fn=fn, x=x: fn(*x))
            row = _row("latent", name, impl, "fwd", ms, flops, None, config, meta)
            rows.append(row | {"max_abs_err_vs_fp32": err})
            ms = _bench(lambda fn=fn, x=leaves, do=do: fn(*x).backward(do), grad_to_none=leaves)
            rows.append(_row("latent", name, impl, "fwd+bwd", ms, 3.5 * flops, None, config, meta))


# ---- elementwise kernels --------------------------------------------------------------------


def bench_elementwise(n_texts, tokens, max_len, dtype, meta, rows):
    from llm2vec_fast import kernels as lk

    dev, es = DEVICE, torch.finfo(dtype).bits // 8
    g = torch.Generator(device=dev).manual_seed(0)
    dt = str(dtype).replace("torch.", "")

    h = 4096
    x = torch.randn(tokens, h, device=dev, dtype=dtype, generator=g)
    w = torch.rand(h, device=dev, dtype=dtype, generator=g) + 0.5
    cfg = {"tokens": tokens, "hidden": h, "dtype": dt}
    for impl, fn in (("ours-triton", lk.rms_norm), ("torch-eager", lk.rms_norm_ref)):
        _elementwise_rows(
            "rms_norm", f"H{h}", impl, fn, (x, w), (1e-5,), 2 * tokens * h * es, cfg, meta, rows
        )

    i = 11008
    gate = torch.randn(tokens, i, device=dev, dtype=dtype, generator=g)
    up = torch.randn(tokens, i, device=dev, dtype=dtype, generator=g)
    cfg = {"tokens": tokens, "intermediate": i, "dtype": dt, "activation": "silu"}
    for impl, fn in (("ours-triton", lk.gated_act), ("torch-eager", lk.gated_act_ref)):
        _elementwise_rows(
            "gated_act",
            f"I{i}",
            impl,
            fn,
            (gate, up),
            ("silu",),
            3 * tokens * i * es,
            cfg,
            meta,
            rows,
        )

    lengths = batch_lengths(n_texts, tokens, max_len)
    cu = cu_seqlens(lengths, dev)
    mask = torch.ones(tokens, dtype=torch.bool, device=dev)
    cfg = {"tokens": tokens, "texts": n_texts, "hidden": h, "dtype": dt, "mode": "mean"}
    nbytes = tokens * h * es + n_texts * h * 4
    for impl, fn in (("ours-triton", lk.segment_pool), ("torch-eager", lk.segment_pool_ref)):
        _elementwise_rows(
            "pool", f"H{h}-mean", impl, fn, (x,), (cu, mask, "mean"), nbytes, cfg, meta, rows
        )

    hq, hkv, d = 32, 8, 128
    q = torch.randn(tokens, hq, d, device=dev, dtype=dtype, generator=g)
    k = torch.randn(tokens, hkv, d, device=dev, dtype=dtype, generator=g)
    pos = (torch.arange(tokens, device=dev) % 512).int()
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
    cfg = {"tokens": tokens, "q_heads": hq, "kv_heads": hkv, "head_dim": d, "dtype": dt}
    nbytes = 2 * tokens * (hq + hkv) * d * es
    for impl, fn in (("ours-triton", lk.apply_rope), ("torch-eager", lk.rope_ref)):
        _elementwise_rows(
            "rope",
            f"{hq}x{hkv}-d{d}",
            impl,
            fn,
            (q, k),
            (pos, inv_freq, 1.0),
            nbytes,
            cfg,
            meta,
            rows,
        )


def _elementwise_rows(op, name, impl, fn, tensors, args, nbytes, config, meta, rows):
    ms = _bench(lambda: fn(*tensors, *args))
    rows.append(_row(op, name, impl, "fwd", ms, None, nbytes, config, meta))
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves, *args)
    outs = out if isinstance(out, tuple) else (out,)
    grads = [torch.randn_like(o) for o in outs]

    def step():
        o = fn(*leaves, *args)
        torch.autograd.backward(o if isinstance(o, tuple) else (o,), grads)

    ms = _bench(step, grad_to_none=leaves)
    # backward: reads dy and the inputs, writes the input grads (about twice the forward bytes)
    rows.append(_row(op, name, impl, "fwd+bwd", ms, None, 3 * nbytes, config, meta))


# ---- output ---------------------------------------------------------------------------------


def _row(op, name, impl, pass_, ms, flops, nbytes, config, meta, max_abs_err=None) -> dict:
    med, lo, hi = ms
    row = {
        "op": op, "config_name": name, "impl": impl, "pass": pass_,
        "ms_median": med, "ms_p20": lo, "ms_p80": hi,
        "tflops": None if flops is None else flops / med / 1e9,
        "gbps": None if nbytes is None else nbytes / med / 1e6,
        "config": config, **meta,
    }  # fmt: skip
    if max_abs_err is not None:
        row["max_abs_err_vs_sdpa_per_text"] = max_abs_err
    return row


def print_table(rows) -> None:
    print(
        f"\n{'op':<10} {'config':<17} {'impl':<27} {'pass':<8} {'ms':>8} {'p20-p80':>15} "
        f"{'TFLOP/s':>8} {'GB/s':>7} {'vs ours':>8} {'of floor':>8}"
    )
    ours = {
        (r["op"], r["config_name"], r["pass"]): r["ms_median"]
        for r in rows
        if r["impl"] == "ours-triton"
    }
    for r in rows:
        base = ours.get((r["op"], r["config_name"], r["pass"]))
        speed = f"{r['ms_median'] / base:.2f}x" if base else ""
        tf = f"{r['tflops']:.0f}" if r["tflops"] is not None else ""
        gb = f"{r['gbps']:.0f}" if r["gbps"] is not None else ""
        print(
            f"{r['op']:<10} {r['config_name']:<17} {r['impl']:<27} {r['pass']:<8} "
            f"{r['ms_median']:>8.3f} {r['ms_p20']:>7.3f}-{r['ms_p80']:<7.3f} {tf:>8} {gb:>7} "
            f"{speed:>8} {r['of_floor'] if 'of_floor' in r else float('nan'):>8.2f}"
        )
    print(
        "(vs ours: the row's time over ours-triton's; > 1 means ours is faster. of floor: the "
        "floor from the measured matmul rate or copy bandwidth over the row's time)"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("attention", "latent", "elementwise"), default=None)
    p.add_argument(
        "--configs", nargs="*", default=list(ATTENTION_CONFIGS), choices=list(ATTENTION_CONFIGS)
    )
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention (compiles: ~1 min)")
    p.add_argument("--no-equal", action="store_true", help="skip the equal-length attention runs")
    p.add_argument("--plot", action="store_true", help="also write a PNG (needs matplotlib)")
    p.add_argument("--texts", type=int, default=103)
    p.add_argument("--tokens", type=int, default=16_800)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default results/kernels-<device>.json)"
    )
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print(
            "bench_kernels.py needs a CUDA GPU: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}). Run it on the GPU machine.",
            file=sys.stderr,
        )
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench_kernels.py needs triton (the `gpu` extra)", file=sys.stderr)
        return 2

    dtype = getattr(torch, args.dtype)
    meta = _meta()
    lengths = batch_lengths(args.texts, args.tokens, args.max_len)
    rows: list[dict] = []
    notes: list[str] = []
    print(
        f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}; batch: {len(lengths)} "
        f"texts, {sum(lengths)} tokens, max {max(lengths)}, {args.dtype}",
        flush=True,
    )
    if args.only in (None, "attention"):
        for name in args.configs:
            hq, hkv, d = ATTENTION_CONFIGS[name]
            bench_attention(name, hq, hkv, d, lengths, dtype, args.no_flex, meta, rows, notes)
            print(f"  attention {name}: done", flush=True)
        if not args.no_equal:
            hq, hkv, d = ATTENTION_CONFIGS["mha32-d128"]
            for length in (128, 512, 2048):
                name = f"mha32-d128-eq{length}"
                bench_attention(
                    name, hq, hkv, d, equal_lengths(length), dtype, args.no_flex, meta, rows, notes
                )
                print(f"  attention {name}: done", flush=True)
    if args.only in (None, "latent"):
        bench_latent(sum(lengths), 512, 8, (64, 128), dtype, meta, rows)
    if args.only in (None, "elementwise"):
        bench_elementwise(len(lengths), sum(lengths), max(lengths), dtype, meta, rows)
    rates = hardware_rates(dtype)
    add_floors(rows, rates)
    print(
        f"measured: {rates['matmul_tflops']:.0f} TFLOP/s matmul ({args.dtype}), "
        f"{rates['copy_gbps']:.0f} GB/s copy",
        flush=True,
    )

    slug = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
    out = args.out or RESULTS / f"kernels-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"lengths": lengths, "rates": rates, "notes": notes, "rows": rows}, indent=1)
        + "\n"
    )
    print_table(rows)
    if args.plot:
        png = out.with_suffix(".png")
        print(f"wrote {png}" if plot(rows, png) else "no plot: matplotlib is not installed")
    for n in notes:
        print("note:", n)
    errs = [
        f"{r['config_name']} {r['impl']}: {r['max_abs_err_vs_sdpa_per_text']:.2e}"
        for r in rows
        if "max_abs_err_vs_sdpa_per_text" in r
    ]
    print("max |out - sdpa per text|:", "; ".join(errs))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
