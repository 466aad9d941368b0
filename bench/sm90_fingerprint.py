"""The compiled sm_90 code of the flash-attention kernels, for checking that a change to their
source leaves what they compile to alone (no GPU needed; triton compiles for the H100 on the CPU).

For every configuration the sm_90 compile tests build (tests/test_kernels_sm90_attention.py and
tests/test_kernels_sm90_attention_dropout.py: bf16/fp16, D in 64, 80, 96, 128, 256, causal and
not, dropout and not, specialised and generic; fp32 at D 64, 128, 256) it records registers,
spills (LOCAL, STACK), shared memory, a histogram of the PTX instructions and of the SASS opcodes,
and hashes of the PTX and the SASS with register names, labels and addresses stripped.

    python bench/sm90_fingerprint.py dump before.json [--kernels fwd,dkdv,dq] [--jobs 2]
    (change the kernels)
    python bench/sm90_fingerprint.py dump after.json
    python bench/sm90_fingerprint.py compare before.json after.json

Run from the checkout's root with ``PYTHONPATH`` naming it (the tests' signatures are imported
from ``tests/``). ``compare`` prints one row per configuration (``a->b`` where a figure changed)
and the opcodes whose counts changed; "ptx-same"/"sass-same": the stripped code is identical, so
only names and debug info differ.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HEAD_DIMS = (64, 80, 96, 128, 256)


def configs(kernels: list[str]) -> list[tuple]:
    """(kernel, dtype, head_dim, causal, dropout, aligned) rows."""
    rows = []
    for kernel in kernels:
        for dt in ("bf16", "fp16"):
            for d in HEAD_DIMS:
                for causal in (False, True):
                    rows += [(kernel, dt, d, causal, dropout, True) for dropout in (False, True)]
                    rows.append((kernel, dt, d, causal, False, False))  # generic (unaligned)
        rows += [(kernel, "fp32", d, False, False, True) for d in (64, 128, 256)]
    return rows


def label(row: tuple) -> str:
    kernel, dt, d, causal, dropout, aligned = row
    parts = [kernel, dt, f"D{d}", "causal" if causal else "full", "drop" if dropout else "nodrop"]
    return "-".join(parts + ([] if aligned else ["generic"]))


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def ptx_fingerprint(ptx: str) -> tuple[collections.Counter, str]:
    """Instruction histogram of the kernel's PTX and a hash of its instructions in order, with
    register names and labels stripped (directives, labels and debug sections left out)."""
    hist: collections.Counter = collections.Counter()
    norm = []
    in_body = False
    for line in ptx.splitlines():
        s = line.split("//")[0].strip()
        if ".entry" in s:
            in_body = True
        if not s or not in_body or s.startswith(".") or s in "{}()" or s.endswith(":"):
            continue
        s = s.rstrip(";")
        if s.startswith("@") and " " in s:
            s = s.split(None, 1)[1]
        hist[s.split()[0]] += 1
        norm.append(re.sub(r"\$L__\w+", "$L", re.sub(r"%[a-z]+\d+", "%R", s)))
    return hist, _digest(norm)


def sass_fingerprint(cubin: bytes) -> tuple[collections.Counter, str]:
    """Opcode histogram of the cubin's SASS (``cuobjdump -sass``) and a hash of its instructions
    with addresses stripped."""
    from llm2vec_fast.kernels._aot import cuobjdump

    out = cuobjdump(cubin, "-sass")
    if out is None:
        raise SystemExit("this triton wheel has no cuobjdump: no SASS to fingerprint")
    hist: collections.Counter = collections.Counter()
    norm = []
    for line in out.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            hist[m.group(1).split(".")[0]] += 1
            norm.append(re.sub(r"/\*[0-9a-f]+\*/", "", line.split(";")[0]).strip())
    return hist, _digest(norm)


def compile_one(row: tuple) -> tuple[str, dict]:
    sys.path.insert(0, str(Path.cwd() / "tests"))
    import test_kernels_sm90_attention as plain
    import test_kernels_sm90_attention_dropout as dropout

    from llm2vec_fast.kernels import _aot

    kernel, dt, d, causal, drop, aligned = row
    if aligned:
        fn, sig, consts, opts = dropout._signature(kernel, dt, d, causal, drop)
    else:
        fn, sig, consts, opts = plain._signature(kernel, dt, d, causal)
    c = _aot.compile_sm90(fn, sig, consts, aligned=aligned, **opts)
    ptx_hist, ptx_hash = ptx_fingerprint(c.ptx)
    sass_hist, sass_hash = sass_fingerprint(c.cubin)
    return label(row), dict(
        regs=c.registers, local=c.spill_bytes, stack=c.stack_bytes, shared=c.shared_bytes,
        warps=c.num_warps, stages=c.num_stages,
        ptx_total=sum(ptx_hist.values()), ptx_hash=ptx_hash, ptx_hist=dict(ptx_hist),
        sass_total=sum(sass_hist.values()), sass_hash=sass_hash, sass_hist=dict(sass_hist),
    )  # fmt: skip


def dump(out: str, kernels: list[str], jobs: int) -> None:
    res = {}
    with ProcessPoolExecutor(jobs) as ex:
        for name, r in ex.map(compile_one, configs(kernels)):
            res[name] = r
            print(name, {k: v for k, v in r.items() if not k.endswith("hist")}, flush=True)
    Path(out).write_text(json.dumps(res, indent=1, sort_keys=True))


FIGURES = ("regs", "local", "stack", "shared", "ptx_total", "sass_total")


def compare(before: str, after: str) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in (before, after))
    print(f"{'config':40}", *(f"{f:>12}" for f in FIGURES), "ptx-same sass-same")
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        if not x or not y:
            print(f"{name:40} only in {'before' if x else 'after'}")
            continue
        cells = [str(x[f]) if x[f] == y[f] else f"{x[f]}->{y[f]}" for f in FIGURES]
        same = [x[h] == y[h] for h in ("ptx_hash", "sass_hash")]
        print(f"{name:40}", *(f"{c:>12}" for c in cells), *same)
        for hist in ("ptx_hist", "sass_hist"):
            ops = set(x[hist]) | set(y[hist])
            delta = {o: y[hist].get(o, 0) - x[hist].get(o, 0) for o in sorted(ops)}
            if any(delta.values()):
                print(f"    {hist}:", {o: v for o, v in delta.items() if v})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("out")
    d.add_argument("--kernels", default="fwd,dkdv,dq")
    d.add_argument("--jobs", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    args = ap.parse_args()
    if args.cmd == "dump":
        dump(args.out, args.kernels.split(","), args.jobs)
    else:
        compare(args.before, args.after)


if __name__ == "__main__":
    main()
