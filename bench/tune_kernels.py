#!/usr/bin/env python
"""Tile sweep on a GPU: the flash-attention kernels' block sizes, warps and pipeline stages, and
the segment pooling's blocks, each variant timed beside the current default and cuDNN's
attention (equal lengths), in one run, its outputs checked against the default's.

    python bench/tune_kernels.py --out tune.json            # GPU, bf16, head dim 128
    python bench/tune_kernels.py --dry-run --out tune.json  # CPU, interpreter, tiny shapes

What it measures (`flash_varlen_tiles` and `pooling._config` pick the defaults; this picks
candidates): the forward kernel per (BLOCK_M, BLOCK_N, warps, stages); the backward (dK/dV and
dQ kernels, launched together by ``flash_varlen_bwd``) per tile set; on the mixed packed batch
of bench_kernels.py (103 texts, 16.8k tokens, max 512) and at equal lengths 512 and 2048 (16k
tokens), 32 heads. A variant that fails to compile (shared memory, registers) is recorded with
its error. Results are rewritten after each variant, so a cut run keeps what it measured; a
``--budget`` in seconds stops starting new variants. The summary prints each variant's time
as a ratio to the default's (above 1: faster).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_kernels as bk  # noqa: E402
from gpu_check_tasks import host_bench  # noqa: E402

# Each round's variants per head dim. forward: (BLOCK_M, BLOCK_N, warps, stages); backward:
# (BLOCK_M1, BLOCK_N1, dK/dV warps), (BLOCK_M2, BLOCK_N2, dQ warps), stages; pooling:
# (BLOCK_T, BLOCK_H, warps). Round 1 ran against the first defaults (fwd 128/64/8/3, bwd
# 32/64/8 + 64/32/4 at 2 stages, pooling 32/256/4); round 2 around its winners, which became
# the defaults. Rows are marked "default" where they equal flash_varlen_tiles' choice.
ROUNDS = {
    1: {128: {"fwd": [(128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 2),
                      (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 4),
                      (128, 32, 4, 3)],
              "bwd": [((32, 64, 8), (64, 32, 4), 2), ((32, 128, 8), (128, 32, 8), 2),
                      ((64, 128, 8), (128, 64, 8), 2), ((32, 128, 4), (128, 32, 4), 3),
                      ((64, 64, 4), (64, 64, 4), 2), ((32, 64, 4), (64, 32, 4), 3),
                      ((64, 128, 8), (128, 32, 8), 3), ((32, 64, 8), (64, 32, 4), 3),
                      ((64, 64, 8), (64, 64, 8), 2)]}},
    2: {128: {"fwd": [(64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4), (64, 64, 4, 2),
                      (64, 32, 4, 3), (64, 64, 8, 3), (32, 64, 4, 3)],
              "bwd": [((32, 64, 4), (64, 32, 4), 3), ((32, 64, 8), (64, 32, 4), 2),
                      ((32, 64, 4), (64, 32, 4), 4), ((32, 64, 4), (64, 64, 4), 3),
                      ((64, 64, 4), (64, 32, 4), 3), ((32, 32, 4), (32, 32, 4), 3),
                      ((16, 64, 4), (64, 16, 4), 3)]},
        64: {"fwd": [(128, 64, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 3),
                     (64, 32, 4, 3)],
             "bwd": [((32, 64, 4), (64, 32, 4), 3), ((64, 64, 4), (64, 64, 4), 3),
                     ((32, 128, 4), (128, 32, 4), 3), ((64, 128, 8), (128, 64, 8), 2)]}},
}  # fmt: skip
POOL = [(64, 64, 4), (32, 256, 4), (32, 64, 4), (16, 128, 4), (64, 128, 8), (128, 64, 8),
        (32, 128, 4), (8, 256, 4)]  # fmt: skip
SHAPES = {
    "gpu": {"mixed": (103, 16_800, 512), "eq512": 512, "eq2048": 2048, "total": 16_384,
            "heads": 32, "head_dim": 128, "hidden": 4096},
    "tiny": {"mixed": (3, 40, 17), "eq512": 16, "total": 32, "heads": 2, "head_dim": 16,
             "hidden": 48},
}  # fmt: skip


def tiny_tiles(t, cfg, kind):
    """The dry run keeps the variants' structure at interpreter-sized blocks."""
    if kind == "fwd":
        return replace(t, BLOCK_M=16, BLOCK_N=16 * (1 + (cfg[1] > 64)), fwd_warps=cfg[2])
    return replace(t, BLOCK_M1=16, BLOCK_N1=16, BLOCK_M2=16, BLOCK_N2=16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--round", type=int, default=max(ROUNDS), choices=sorted(ROUNDS))
    ap.add_argument("--budget", type=float, default=170.0, help="seconds; no new variant after")
    ap.add_argument("--no-pool", action="store_true", help="skip the pooling variants")
    ap.add_argument("--dry-run", action="store_true", help="CPU under TRITON_INTERPRET=1, tiny")
    args = ap.parse_args(argv)

    from llm2vec_fast.kernels import pooling
    from llm2vec_fast.kernels.flash_varlen import (
        flash_varlen_bwd,
        flash_varlen_fwd,
        flash_varlen_tiles,
    )
    from llm2vec_fast.kernels.varlen import Varlen

    t0 = time.monotonic()
    dry = args.dry_run
    dev = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16  # bf16 is wrong in the interpreter
    bench = host_bench if dry else (lambda fn, **kw: bk._bench(fn, warmup=10, rep=40, **kw))
    s = SHAPES["tiny" if dry else "gpu"]
    out = Path(args.out)
    res = {"dry_run": dry, "round": args.round, "meta": {"device": "cpu"} if dry else bk._meta(),
           "shapes": s, "dtype": str(dtype)[6:], "default_tiles": {}, "rows": [], "cut": False}  # fmt: skip

    def save():
        res["seconds"] = round(time.monotonic() - t0, 1)
        out.write_text(json.dumps(res, indent=1) + "\n")

    def over() -> bool:
        res["cut"] = res["cut"] or time.monotonic() - t0 > args.budget
        return res["cut"]

    shapes = {"mixed": bk.batch_lengths(*s["mixed"]),
              "eq512": bk.equal_lengths(s["eq512"], s["total"])}  # fmt: skip
    if "eq2048" in s:
        shapes["eq2048"] = bk.equal_lengths(s["eq2048"], s["total"])
    g = torch.Generator(device=dev).manual_seed(0)
    h = s["heads"]
    for d, lists in ROUNDS[args.round].items():
        fwd_list, bwd_list = lists["fwd"], lists["bwd"]
        if dry:  # the first two of each, at the tiny head dim
            d, fwd_list, bwd_list = s["head_dim"], fwd_list[:2], bwd_list[:2]
        base = flash_varlen_tiles(d, dtype)
        res["default_tiles"][d] = asdict(base)
        base_fwd = (base.BLOCK_M, base.BLOCK_N, base.fwd_warps, base.fwd_stages)
        base_bwd = ((base.BLOCK_M1, base.BLOCK_N1, base.dkdv_warps),
                    (base.BLOCK_M2, base.BLOCK_N2, base.dq_warps), base.bwd_stages)  # fmt: skip
        ref_fwd = tiny_tiles(base, fwd_list[0], "fwd") if dry else base
        ref_bwd = tiny_tiles(base, bwd_list[0], "bwd") if dry else base
        for shape, lengths in shapes.items():
            opts = Varlen(bk.cu_seqlens(lengths, dev), max(lengths))
            total = sum(lengths)
            q, k, v, do = (torch.randn(total, h, d, device=dev, dtype=dtype, generator=g)
                           for _ in range(4))  # fmt: skip
            flops = 4.0 * sum(n * n for n in lengths) * h * d
            ref_o, ref_lse = flash_varlen_fwd(q, k, v, opts, ref_fwd)
            ref_g = flash_varlen_bwd(do, q, k, v, ref_o, ref_lse, opts, ref_bwd)
            common = {"head_dim": d, "heads": h, "shape": shape, "tokens": total,
                      "texts": len(lengths), "max_len": max(lengths)}  # fmt: skip
            if shape.startswith("eq") and not dry:  # cuDNN at equal lengths: padded = packed
                from torch.nn.attention import SDPBackend, sdpa_kernel

                b = len(lengths)
                qp, kp, vp = (x.view(b, lengths[0], h, d).transpose(1, 2) for x in (q, k, v))
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    ms = bench(
                        lambda a=(qp, kp, vp): torch.nn.functional.scaled_dot_product_attention(*a)
                    )
                res["rows"].append({**common, "kernel": "fwd", "impl": "sdpa-cudnn",
                                    "ms": ms[0], "tflops": flops / ms[0] / 1e9})  # fmt: skip
                save()
            for cfg in fwd_list:
                if over():
                    break
                bm, bn, w, st = cfg
                t = replace(base, BLOCK_M=bm, BLOCK_N=bn, fwd_warps=w, fwd_stages=st)
                t = tiny_tiles(t, cfg, "fwd") if dry else t
                row = {**common, "kernel": "fwd", "impl": "ours", "config": list(cfg),
                       "default": cfg == base_fwd}  # fmt: skip
                try:
                    o, _ = flash_varlen_fwd(q, k, v, opts, t)
                    row["max_abs_diff_vs_default"] = float((o.float() - ref_o.float()).abs().max())
                    ms = bench(lambda a=(q, k, v, opts, t): flash_varlen_fwd(*a))
                    row |= {"ms": ms[0], "tflops": flops / ms[0] / 1e9}
                except Exception as e:  # out of shared memory, registers...  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                res["rows"].append(row)
                save()
            for cfg in bwd_list:
                if over():
                    break
                (m1, n1, w1), (m2, n2, w2), st = cfg
                t = replace(base, BLOCK_M1=m1, BLOCK_N1=n1, dkdv_warps=w1, BLOCK_M2=m2,
                            BLOCK_N2=n2, dq_warps=w2, bwd_stages=st)  # fmt: skip
                t = tiny_tiles(t, cfg, "bwd") if dry else t
                row = {**common, "kernel": "bwd", "impl": "ours",
                       "config": [m1, n1, w1, m2, n2, w2, st], "default": cfg == base_bwd}  # fmt: skip
                try:
                    grads = flash_varlen_bwd(do, q, k, v, ref_o, ref_lse, opts, t)
                    row["max_abs_diff_vs_default"] = max(
                        float((a.float() - b.float()).abs().max()) for a, b in zip(grads, ref_g)
                    )
                    ms = bench(
                        lambda a=(do, q, k, v, ref_o, ref_lse, opts, t): flash_varlen_bwd(*a)
                    )
                    row |= {"ms": ms[0], "tflops": 2.5 * flops / ms[0] / 1e9}
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                res["rows"].append(row)
                save()
            q = k = v = do = ref_o = ref_lse = ref_g = None  # free before the next shape
    if not args.no_pool:
        pool_variants(res, pooling, shapes["mixed"], s["hidden"], dtype, dev, g, bench, over)
    save()
    print_summary(res)
    return 0


def pool_variants(res, pooling, lengths, hidden, dtype, dev, g, bench, over) -> None:
    """Segment mean pooling of the mixed batch's tokens per (BLOCK_T, BLOCK_H, warps)."""
    total, cu = sum(lengths), bk.cu_seqlens(lengths, dev)
    x = torch.randn(total, hidden, device=dev, dtype=dtype, generator=g)
    mask = pooling.mask_bytes(torch.ones(total, dtype=torch.bool), torch.device(dev))
    default = pooling._config(hidden, "mean")
    default = (default["BLOCK_T"], default["BLOCK_H"], default["num_warps"])
    ref = pooling.segment_pool_fwd(x, cu, mask, "mean")[0]
    saved = pooling._config
    try:
        for cfg in POOL[:2] if res["dry_run"] else POOL:
            if over():
                break
            pooling._config = lambda n, mode="mean", backward=False, c=cfg: {
                "BLOCK_T": c[0],
                "BLOCK_H": c[1],
                "num_warps": c[2],
            }
            row = {"shape": "mixed", "kernel": "pool-mean-fwd", "impl": "ours", "config": list(cfg),
                   "default": cfg == default, "tokens": total, "hidden": hidden}  # fmt: skip
            try:
                y = pooling.segment_pool_fwd(x, cu, mask, "mean")[0]
                row["max_abs_diff_vs_default"] = float((y.float() - ref.float()).abs().max())
                ms = bench(lambda: pooling.segment_pool_fwd(x, cu, mask, "mean"))
                row |= {"ms": ms[0], "gbps": x.numel() * x.element_size() / ms[0] / 1e6}
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            res["rows"].append(row)
    finally:
        pooling._config = saved


def print_summary(res) -> None:
    rows = res["rows"]
    print(f"{'D':>4s} {'shape':8s} {'kernel':14s} {'config':28s} {'ms':>8s} {'TFLOP/s':>8s} "
          f"{'vs default':>10s} {'diff':>9s}")  # fmt: skip
    for r in rows:
        dflt = next((x for x in rows if x["shape"] == r["shape"] and x["kernel"] == r["kernel"]
                     and x.get("head_dim") == r.get("head_dim") and x.get("default")
                     and "ms" in x), None)  # fmt: skip
        ratio = f"{dflt['ms'] / r['ms']:.2f}x" if dflt and "ms" in r else "-"
        rate = r.get("tflops") or r.get("gbps")
        print(f"{r.get('head_dim', '-')!s:>4s} {r['shape']:8s} {r['kernel']:14s} {str(r.get('config', r['impl'])):28s} "
              f"{r.get('ms', float('nan')):8.3f} {rate or float('nan'):8.1f} {ratio:>10s} "
              f"{r.get('max_abs_diff_vs_default', float('nan')):9.2e} {r.get('error', '')}")  # fmt: skip
    if res["cut"]:
        print("cut by --budget: the variants after the last row were not run")


if __name__ == "__main__":
    sys.exit(main())
