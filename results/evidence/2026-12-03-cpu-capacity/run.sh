#!/bin/bash
# issue 27's CPU evidence: the capacity search of single / dp=2 / tp=2, old method (0615596) and new (main), same host
set -u
E=/work/main/results/evidence/2026-12-03-cpu-capacity
mkdir -p $E
KW='{"enforce_eager": true, "kv_cache_memory_bytes": 268435456}'
COMMON=(--capacity --capacity-start 8 --capacity-tolerance 0.2 --slo-ttft-ms 500 --slo-tpot-ms 8
        --level-prompts 5x --max-tokens 16 --ignore-eos --max-model-len 1024 --engine-kwargs "$KW")
for traffic in gsm8k long; do
  t=gsm8k; [ $traffic = long ] && t='synthetic:n=400,in=800,out=16'
  echo "== $(date +%T) old $traffic"
  (cd /work/wt/old && PYTHONPATH=$PWD flock /tmp/engine.lock .venv/bin/python -m evaluator.compare --engines vllm --gpus 2 \
     --workload serve --no-native --model /tmp/tiny --data /work/main/data/gsm8k_test.parquet --out $E/old-$traffic \
     -- --device cpu --traffic "$t" --capacity-levels 7 "${COMMON[@]}") > $E/old-$traffic.log 2>&1
  echo "== $(date +%T) new $traffic"
  (cd /work/main && PYTHONPATH=$PWD flock /tmp/engine.lock .venv/bin/python -m evaluator.compare --engines vllm --gpus 2 \
     --workload serve --no-native --no-router --model /tmp/tiny --data /work/main/data/gsm8k_test.parquet --out $E/new-$traffic \
     -- --device cpu --traffic "$t" --capacity-levels 9 --level-min-s 5 "${COMMON[@]}") > $E/new-$traffic.log 2>&1
done
echo "== $(date +%T) done"
