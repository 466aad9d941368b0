#!/usr/bin/env bash
# Mean pooling against latent-attention pooling (NV-Embed's head), on the embedded default model
# (SmolLM2-135M-Instruct), on the CPU: the same SimCSE run (same data, steps, seed, learning
# rate) once with --pooling mean and once with --pooling latent_attention, each evaluated with
# `llm2vec-fast eval --offline` (sentence polarity 10-fold accuracy and wordsim353 Spearman, 95%
# bootstrap intervals), beside the untrained bidirectional model. Writes
# bench/results/cpu-smollm2-latent-vs-mean.json (override with RESULT=...). About 30 minutes on
# 2 CPU cores. The run is CPU-sized (40 steps); see bench/NOTES.md for what it can and cannot show.
set -euo pipefail
OUT=${OUT:-out/pooling-compare}
RESULT=${RESULT:-bench/results/cpu-smollm2-latent-vs-mean.json}
STEPS=${STEPS:-40}
LEE=$(python -c "from llm2vec_fast.evaluation import gensim_test_data_dir as d; print(d() / 'lee_background.cor')")
COMMON="--dtype bfloat16 --bf16 --max-seq-length 64 --seed 42 -q --batch-size 16 --max-steps $STEPS --learning-rate 1e-4 --save-steps 1000"

llm2vec-fast eval --offline --output-dir "$OUT/eval-bi" -q
for pooling in mean latent_attention; do
    llm2vec-fast train simcse --data "$LEE" --output "$OUT/simcse-$pooling" --pooling "$pooling" $COMMON
    llm2vec-fast eval --offline --peft "$OUT/simcse-$pooling" --output-dir "$OUT/eval-simcse-$pooling" -q
done
python - "$OUT" "$RESULT" "$STEPS" <<'PY'
import json, platform, sys
from pathlib import Path
out, result, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
rows = {}
print(f"{'model':<32} {'polarity acc [95% CI]':<28} {'wordsim353 rho [95% CI]':<28} {'train s':>8}")
for name in ("eval-bi", "eval-simcse-mean", "eval-simcse-latent_attention"):
    r = json.loads((out / name / "offline.json").read_text())
    p, w = r["polarity"], r["wordsim353"]
    row = {"polarity_accuracy": p["accuracy"], "polarity_ci95": p["ci95"],
           "wordsim353_spearman": w["spearman"], "wordsim353_ci95": w["ci95"]}
    run = out / name.replace("eval-", "")
    if (run / "train_summary.json").is_file():
        s = json.loads((run / "train_summary.json").read_text())
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        row["training"] = {"steps": s["steps"], "seconds": s["seconds_this_run"],
                           "tokens_per_second": s["tokens_per_second"],
                           "loss_first10_mean": sum(x["loss"] for x in log[:10]) / len(log[:10]),
                           "loss_last10_mean": sum(x["loss"] for x in log[-10:]) / len(log[-10:])}
    rows[name[5:]] = row
    secs = row.get("training", {}).get("seconds", 0)
    print(f"{name[5:]:<32} {p['accuracy']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"
          f"{'':<6} {w['spearman']:.3f} [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}]{'':<6}{secs:8.0f}")
result.parent.mkdir(parents=True, exist_ok=True)
result.write_text(json.dumps({
    "what": f"bash bench/compare_pooling.sh (SimCSE {steps} steps of 16 texts x 64 tokens x 2 views, lr 1e-4, bf16 autocast, on gensim's lee_background.cor; eval --offline)",
    "model": "SmolLM2-135M-Instruct (embedded default), bidirectional",
    "cpu": cpu, "latent_attention": "512 latents, 8 heads of 576, GEGLU 4x (NV-Embed's shape)",
    "evals": rows}, indent=1) + "\n")
print(f"-> {result}")
PY
