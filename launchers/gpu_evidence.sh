#!/usr/bin/env bash
# The GPU evidence workload: every GSM8K test prompt, temperature 0, 256 new tokens each
# (--ignore-eos, so random weights time like real ones), max_model_len 2048, one run per layout.
# Keeps each run's summary.json as OUT/<engine>-<layout>.json (samples stay in OUT/runs).
#   launchers/gpu_evidence.sh vllm MODEL DATA OUT
#   LAYOUTS="single:1 dp:2 tp:2 dp:2:native" launchers/gpu_evidence.sh sglang MODEL DATA OUT \
#       --engine-kwargs '{"sampling_backend": "pytorch", "attention_backend": "triton"}'
set -uo pipefail
engine=$1; model=$2; data=$3; out=$4; shift 4
PY=${PY:-python3}
mkdir -p "$out/runs"
status=0
for spec in ${LAYOUTS:-single:1 dp:2 tp:2}; do
  IFS=: read -r mode gpus backend <<< "$spec"
  name="$engine-$mode$gpus${backend:+-$backend}"
  echo "=== $name $(date +%T)"
  "$PY" -m evaluator --engine "$engine" --mode "$mode" --gpus "$gpus" --dp-backend "${backend:-ray}" \
      --model "$model" --data "$data" --temperature 0 --max-tokens 256 --ignore-eos --max-model-len 2048 \
      --output-dir "$out/runs" --run-id "$name" --no-table "$@" > "$out/runs/$name.stdout" || status=1
  [ -f "$out/runs/$name/summary.json" ] && cp "$out/runs/$name/summary.json" "$out/$name.json"
  tail -c 300 "$out/runs/$name.stdout"; echo
done
"$PY" -m evaluator.report "$out/runs" || true
exit $status
