"""What bench/gpu_check.py runs in its stages' subprocesses: the environment report
(``ENV_SNIPPET``), the kernel measurements (``--worker kernels``) and the random checkpoints
(``--worker checkpoint``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

KERNEL_SHAPES = {  # (texts, tokens, max length) of the mixed batch and of the elementwise ops
    "gpu": {"mixed": (103, 16_800, 512), "elementwise": (103, 16_800, 512), "heads": (32, 32, 128),
            "equal": (128, 512, 2048), "equal_total": 16_384, "flex": True,
            "matmul_n": 8192, "copy_bytes": 2**30, "latent": (16_800, 512, 8, (64, 128))},
    "tiny": {"mixed": (4, 40, 16), "elementwise": (2, 8, 4), "heads": (2, 2, 16), "equal": (16,),
             "equal_total": 32, "flex": False, "matmul_n": 64, "copy_bytes": 2**20,
             "latent": (40, 17, 2, (16,))},
}  # fmt: skip
ENV_SNIPPET = """
import importlib.metadata as md, json, platform, sys, torch
d = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
     "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d |= {"capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
          "memory_gib": round(p.total_memory / 2**30, 1), "cudnn": torch.backends.cudnn.version()}
for name in sys.argv[2:]:
    try:
        d[name] = md.version(name)
    except md.PackageNotFoundError:
        d[name] = None
__import__("llm2vec" if sys.argv[1] == "official" else "llm2vec_fast._C")  # the stack imports
print("GPU_CHECK_" + sys.argv[1].upper(), json.dumps(d))
"""


def host_bench(fn, grad_to_none=None, warmup=None, rep=None):
    """The dry run's stand-in for triton's do_bench (CUDA events): (median, min, max) ms of
    two host-timed calls after a warm-up."""
    times = []
    for _ in range(3):
        for t in grad_to_none or ():
            t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sum(times[1:]) / 2, min(times[1:]), max(times[1:])


def worker_kernels(out: Path, tiny: bool) -> int:
    """bench_kernels.py's measurements, the JSON rewritten after each part: rates,
    elementwise (pooling), the mixed batch (with Flex), equal lengths (without), the latent
    attention (tokens, latents, heads, head dims)."""
    import torch

    sys.path.insert(0, str(HERE))
    import bench_kernels as bk

    cuda = torch.cuda.is_available()
    if not cuda:  # the dry run: kernels under TRITON_INTERPRET=1 on the CPU, host timers
        bk.DEVICE, bk._bench = "cpu", host_bench
        torch.cuda.synchronize = lambda *a, **k: None
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 is wrong in the interpreter
    meta = bk._meta() if cuda else {"device": "cpu", "torch": torch.__version__}
    s = KERNEL_SHAPES["tiny" if tiny else "gpu"]
    hq, hkv, d = s["heads"]
    res = {"dry_run": not cuda, "meta": meta, "shapes": s, "dtype": str(dtype)[6:], "done": [],
           "rates": None, "lengths": None, "notes": [], "rows": []}  # fmt: skip

    def save(part):
        bk.add_floors(res["rows"], res["rates"])
        res["done"].append(part)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"kernels: {part} done", flush=True)

    res["rates"] = bk.hardware_rates(dtype, n=s["matmul_n"], copy_bytes=s["copy_bytes"])
    save("rates")
    bk.bench_elementwise(*s["elementwise"], dtype, meta, res["rows"])
    save("elementwise")
    res["lengths"] = bk.batch_lengths(*s["mixed"])
    bk.bench_attention(f"mha{hq}-d{d}", hq, hkv, d, res["lengths"], dtype, not s["flex"], meta,
                       res["rows"], res["notes"])  # fmt: skip
    save("attention mixed")
    for n in s["equal"]:  # no Flex here: a compile per shape
        lengths = bk.equal_lengths(n, s["equal_total"])
        bk.bench_attention(f"mha{hq}-d{d}-eq{n}", hq, hkv, d, lengths, dtype, True, meta,
                           res["rows"], res["notes"])  # fmt: skip
        save(f"attention eq{n}")
    tokens, latents, heads, head_dims = s["latent"]
    bk.bench_latent(tokens, latents, heads, head_dims, dtype, meta, res["rows"])
    save("latent")
    bk.print_table(res["rows"])
    print("\n".join(f"note: {n}" for n in res["notes"]))
    return 0


def worker_checkpoint(spec: str, tokenizer: str, dest: str) -> int:
    sys.path.insert(0, str(HERE))
    from bench_data import random_checkpoint

    random_checkpoint(spec, Path(tokenizer), Path(dest))
    return 0
