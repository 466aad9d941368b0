"""bench/gpu_check.py's report: pytest's counts, and the figures of each stage's JSON file."""

from __future__ import annotations

import json
import re
from pathlib import Path


def load_json(path: Path):
    """A stage's JSON file, or None when it is missing or cut short."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summarize_pytest(text: str, status: str) -> dict:
    """pytest's closing line and counts; a run cut before it: the counts of its -v lines."""
    final = [
        ln.strip("= ") for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skip)", ln)
    ]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) ([a-z]+)", final[-1] if final else "")}
    if not final:
        for ln in text.splitlines():
            m = re.search(r"\b(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", ln)
            if m and "::" in ln:
                counts[m.group(1).lower()] = counts.get(m.group(1).lower(), 0) + 1
    return {
        "status": status,
        "counts": counts,
        "summary_line": final[-1] if final else None,
        "short_summary": [ln for ln in text.splitlines() if re.match(r"(FAILED|ERROR) ", ln)][:200],
        "tail": text[-6000:],
    }


def kernel_figures(k: dict) -> list[str]:
    rates, groups = k["rates"], {}
    out = [
        f"rates: matmul {rates['matmul_tflops']:.3g} TFLOP/s, copy {rates['copy_gbps']:.3g} GB/s"
    ]
    for r in k["rows"]:
        groups.setdefault((r["op"], r["config_name"], r["pass"]), {})[r["impl"]] = r
    for (op, name, p), by in groups.items():
        ours = by.get("ours-triton")
        head = f"{op} {name} {p}: ours {ours['ms_median']:.3f} ms" if ours else ""
        if ours and op in ("attention", "latent"):
            rel = ", ".join(f"{i.removeprefix('sdpa-')} {r['ms_median'] / ours['ms_median']:.2f}x"
                            for i, r in by.items() if r is not ours)  # fmt: skip
            out.append(f"{head} ({ours['tflops']:.3g} TFLOP/s); their time / ours: {rel}")
        elif ours and op == "pool":
            share = ours["gbps"] / rates["copy_gbps"]
            out.append(f"{head}, {ours['gbps']:.3g} GB/s = {share:.2f} of the copy bandwidth")
    return out


def e2e_figures(e: dict) -> list[str]:
    ours = next(r for r in e["rows"] if r["impl"] == "llm2vec-fast")
    line = f"ours {ours['tokens_per_s']:,.0f} tokens/s ({ours['kernels']}, {ours['tokens']:,} tok.)"
    off = [r for r in e["rows"] if r["impl"] == "official-llm2vec"]
    if off:
        best = max(off, key=lambda r: r["tokens_per_s"])
        line += f"; official best {best['tokens_per_s']:,.0f} (batch {best['batch_size']})"
        line += f": ours {e['ours_over_official_best']:.2f}x"
    return [line]


def training_figures(t: dict) -> list[str]:
    out = []
    for r in t["runs"]:
        if "error" in r:
            out.append(f"{r['objective']} {r['side']}: failed: {r['error'][:150]}")
            continue
        m = r["memory"]
        peak = m.get("cuda_max_allocated_bytes", m.get("peak_estimate_bytes")) or 0
        out.append(f"{r['objective']} {r['batch_size']}x{r['max_seq_length']} {r['precision']} "
                   f"{r['side']}: {r['timed']['tokens_per_s']:,.0f} tokens/s, peak "
                   f"{peak / 2**30:.2f} GiB")  # fmt: skip
    for key, v in t.get("ratios", {}).items():
        mem = f"{v['peak_memory']:.2f}x" if v["peak_memory"] else "-"
        out.append(f"{key} ours / official: tokens/s {v['tokens_per_s']:.2f}x, peak memory {mem}")
    return out
