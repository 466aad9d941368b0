"""How close a tokens/s figure is to what the machine can do: the model's FLOPs per token and
this machine's float32 matmul rate, measured in the same run as the throughput rows.

    python bench/roofline.py            # prints the matmul rates and SmolLM2-135M's FLOPs/token

A packed encoder forward is almost all matmuls (the linear layers: 2 FLOPs per weight per token)
plus attention (QK^T and PV: 4 * context * heads * head_dim per token and layer, context = the
text's own length with bidirectional attention). Dividing a row's tokens/s x FLOPs/token by the
matmul rate gives the fraction of the machine's float32 peak that row reaches; no float32
implementation can pass 1.0 by much, which bounds every float32 speed-up on this machine.
"""

from __future__ import annotations

import json
import time

import torch


def model_flops_per_token(config, lengths: list[int]) -> dict:
    """FLOPs per token of one forward over texts of these token lengths (linear layers exact;
    attention from each text's own length; norms, RoPE and activations left out, < 1%)."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = config.num_key_value_heads
    inter = config.intermediate_size
    per_layer = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d + 3 * d * inter
    linear = 2 * per_layer * config.num_hidden_layers
    total_tokens = sum(lengths)
    mean_context = sum(n * n for n in lengths) / max(total_tokens, 1)
    attention = 4 * mean_context * heads * head_dim * config.num_hidden_layers
    return {
        "linear_flops_per_token": linear,
        "attention_flops_per_token": attention,
        "flops_per_token": linear + attention,
        "mean_attention_context": mean_context,
    }


def matmul_rate(
    m: int, k: int, n: int, dtype=torch.float32, seconds: float = 1.0, onednn: bool = False
) -> float:
    """Best GFLOP/s of ``[m, k] @ [k, n]`` over repeated timings (torch's default threads):
    torch's matmul (MKL in the CPU build), or with ``onednn`` oneDNN's GEMM as our linear
    layers call it (``kernels/cpu_linear.py``)."""
    a = torch.randn(m, k, dtype=dtype)
    b = torch.randn(k, n, dtype=dtype)
    if onednn:
        w = b.t().contiguous()

        def run():
            return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")
    else:

        def run():
            return a @ b

    with torch.inference_mode():
        for _ in range(3):
            run()
        best = float("inf")
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def machine_rates(config) -> dict:
    """float32 matmul GFLOP/s at a large square shape and at the model's own MLP shape (1024
    tokens, the CPU's default token budget), by torch's matmul (MKL) and by oneDNN: the best is
    the ceiling the throughput rows are held against."""
    d, inter = config.hidden_size, config.intermediate_size
    rates = {
        "threads": torch.get_num_threads(),
        "fp32_gflops_square_2048": matmul_rate(2048, 2048, 2048),
        f"fp32_gflops_mlp_1024x{d}x{inter}": matmul_rate(1024, d, inter),
    }
    if torch.backends.mkldnn.is_available():  # the faster of torch's two CPU GEMM libraries here
        rates["fp32_gflops_onednn_square_2048"] = matmul_rate(2048, 2048, 2048, onednn=True)
        rates[f"fp32_gflops_onednn_mlp_1024x{d}x{inter}"] = matmul_rate(1024, d, inter, onednn=True)
    return rates


def annotate(runs: list[dict], flops: dict, rates: dict) -> None:
    """Add achieved GFLOP/s and the fraction of the measured peak to each throughput row."""
    peak = max(v for k, v in rates.items() if k.startswith("fp32_gflops"))
    for r in runs:
        achieved = r["tokens_per_s"] * flops["flops_per_token"] / 1e9
        r["achieved_gflops"] = achieved
        r["fraction_of_fp32_matmul_peak"] = achieved / peak


if __name__ == "__main__":
    from transformers import AutoConfig

    from llm2vec_fast.default_model import default_model_path

    cfg = AutoConfig.from_pretrained(default_model_path())
    out = {"rates": machine_rates(cfg), "flops_at_128_tokens": model_flops_per_token(cfg, [128])}
    print(json.dumps(out, indent=2))
