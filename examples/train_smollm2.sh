#!/usr/bin/env bash
# The LLM2Vec recipe on the embedded default model (SmolLM2-135M-Instruct), on the CPU:
# evaluate causal and bidirectional, train MNTP then SimCSE on gensim's lee_background.cor
# (300 news articles), evaluate after each step. Results: out/smollm2-recipe/*/offline.json.
# About 30 minutes on 2 CPU cores (29 min of training measured on a busy machine). The step counts are far below the paper's (1000 steps of
# 32 x 512 tokens): a CPU-sized replication, with learning rates raised to match.
set -euo pipefail
OUT=${OUT:-out/smollm2-recipe}
LEE=$(python -c "from llm2vec_fast.evaluation import gensim_test_data_dir as d; print(d() / 'lee_background.cor')")
COMMON="--dtype bfloat16 --bf16 --max-seq-length 64 --seed 42 -q"

llm2vec-fast eval --offline --causal --output-dir "$OUT/eval-causal" -q
llm2vec-fast eval --offline --output-dir "$OUT/eval-bi" -q
llm2vec-fast train mntp --data "$LEE" --output "$OUT/mntp" $COMMON \
    --batch-size 8 --max-steps 200 --learning-rate 2e-4 --save-steps 50
llm2vec-fast eval --offline --peft "$OUT/mntp" --output-dir "$OUT/eval-mntp" -q
llm2vec-fast train simcse --data "$LEE" --output "$OUT/simcse" --peft "$OUT/mntp" $COMMON \
    --batch-size 16 --max-steps 40 --learning-rate 1e-4 --save-steps 20
llm2vec-fast eval --offline --peft "$OUT/mntp" --peft "$OUT/simcse" --output-dir "$OUT/eval-mntp-simcse" -q
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'model':<28} {'polarity acc [95% CI]':<28} {'wordsim353 rho [95% CI]':<28}")
for name in ("eval-causal", "eval-bi", "eval-mntp", "eval-mntp-simcse"):
    r = json.loads((out / name / "offline.json").read_text())
    p, w = r["polarity"], r["wordsim353"]
    print(f"{name[5:]:<28} {p['accuracy']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"
          f"{'':<6} {w['spearman']:.3f} [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}]")
PY
