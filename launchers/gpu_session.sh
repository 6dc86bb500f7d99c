#!/usr/bin/env bash
# One GPU session on a lent host without network (see README "GPU evidence"): what the calls of a
# session run, in the repo root there. The engines arrive as parts of two tar streams carried one
# per call (.carry/A_NN: tokenizer, gguf wheel, GSM8K parquet, vLLM and Ray bundles; .carry/B_NN:
# SGLang bundle and the demo model's GGUF), each joined once complete; the phases run in the
# background (setsid) while later calls carry the rest, queued so two never share the GPU.
#
#   launchers/gpu_session.sh join A|B      join and unpack one stream
#   launchers/gpu_session.sh start A|B     start a phase in the background (B waits for A)
#   launchers/gpu_session.sh status        what the phases have done so far
#   launchers/gpu_session.sh collect       results/gpu as xz tarballs under $OUT
#
# Phase A (vLLM, random Qwen2.5-7B weights): one serving run at c=1,64,256 (the servers' own
# metrics, KV cache reported against predicted), capacity at SLO for a long-prompt shape and for
# GSM8K at another memory fraction. Phase B (the demo model, real answers): its preparation from
# the GGUF, then vLLM (offline + one serving level), the transformers reference engine and the GGUF
# itself in one comparison, SGLang offline + serving, and our client beside vllm bench serve.
set -uo pipefail
cd "$(dirname "$0")/.."
S=/tmp/gpu; R=results/gpu
mkdir -p "$S" "$R"
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
       NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_ALLREDUCE_USE_SYMM_MEM=0 \
       PYTHONUNBUFFERED=1 COLUMNS=250
PY=python3
DATA=$S/a/data/gsm8k_test.parquet
VLLM_PATH=$S/bundle/vllm:$S/bundle/ray:$S/site:$PWD
SGL_PATH=$S/bundle/sglang:$S/bundle/ray:$S/site:$PWD
SGL_KW='{"attention_backend": "triton", "sampling_backend": "pytorch"}'

step() { echo "== $(date +%T) $*" >> "$R/steps.log"; }

case ${1:-} in
  join)
    s=$2; mkdir -p "$S/$(echo "$s" | tr AB ab)"
    cat .carry/${s}_*/${s}.* | tar -xf - -C "$S/$(echo "$s" | tr AB ab)" || exit 1
    if [ "$s" = A ]; then
      launchers/gpu_bundle/unpack.sh "$S/a/parts" "$S/bundle"
      python3 -m pip install -q --no-index --no-deps --no-compile --target "$S/site" "$S"/a/wheels/*.whl
    else
      launchers/gpu_bundle/unpack.sh "$S/b/parts" "$S/bundle"
      mkdir -p "$S/cache" && mv "$S"/b/*.gguf "$S/cache/"
    fi
    du -sh "$S"/* ;;
  start)
    setsid nohup "$0" "phase-$2" > "$R/phase-$2.log" 2>&1 < /dev/null &
    echo "phase $2 started" ;;
  phase-A)
    step "A: random 7B weights"
    PYTHONPATH=$VLLM_PATH $PY -m datasets_prep random-model --config datasets_prep/configs/qwen2.5-7b.json \
        --tokenizer "$S/a/tok" --out "$S/q7"
    step "A: vLLM 7B serving c=1,64,256"
    PYTHONPATH=$VLLM_PATH $PY -m evaluator --engine vllm --model "$S/q7" --data "$DATA" --workload serve \
        --concurrency 1,64,256 --level-prompts 2x --max-tokens 256 --ignore-eos --max-model-len 4096 \
        --slo-ttft-ms 1000 --slo-tpot-ms 50 --output-dir "$R/a" --run-id vllm-7b-serve --no-table
    step "A: vLLM 7B capacity, synthetic 2000 in / 200 out"
    PYTHONPATH=$VLLM_PATH $PY -m evaluator --engine vllm --model "$S/q7" --data "$DATA" --workload serve \
        --traffic "synthetic:n=600,in=2000,out=200,seed=1" --capacity --capacity-start 4 --capacity-levels 6 \
        --slo-ttft-ms 1000 --slo-tpot-ms 50 --level-prompts 10x --max-model-len 4096 \
        --output-dir "$R/a" --run-id vllm-7b-capacity-long --no-table
    step "A: vLLM 7B capacity, GSM8K, gpu_memory_utilization 0.5"
    PYTHONPATH=$VLLM_PATH $PY -m evaluator --engine vllm --model "$S/q7" --data "$DATA" --workload serve \
        --capacity --capacity-start 16 --capacity-levels 5 --slo-ttft-ms 1000 --slo-tpot-ms 50 --level-prompts 10x \
        --max-tokens 256 --ignore-eos --max-model-len 4096 --engine-kwargs '{"gpu_memory_utilization": 0.5}' \
        --output-dir "$R/a" --run-id vllm-7b-capacity-gsm8k-util05 --no-table
    step "A: done"; touch "$S/A.done" ;;
  phase-B)
    step "B: demo model from the GGUF"
    PYTHONPATH=$S/site $PY -m datasets_prep model qwen2.5-coder-0.5b-instruct --out "$S/demo" --cache-dir "$S/cache"
    while [ ! -f "$S/A.done" ]; do sleep 2; done
    G=$(ls "$S"/cache/*.gguf)
    step "B: vLLM + reference + GGUF, demo model, 1319 prompts"
    PYTHONPATH=$VLLM_PATH $PY -m evaluator.compare --engines vllm,hf --gpus 1 --workload both --no-warmup \
        --model "$S/demo" --data "$DATA" --out "$R/b-vllm" --quantized "$G" --engine-kwargs-for 'hf={"batch_size": 96}' \
        -- --max-tokens 512 --max-model-len 2048 --concurrency 128 --engine-kwargs '{"enforce_eager": true}'
    step "B: SGLang, demo model, 1319 prompts"
    PYTHONPATH=$SGL_PATH $PY -m evaluator.compare --engines sglang --gpus 1 --workload both --no-warmup \
        --model "$S/demo" --data "$DATA" --out "$R/b-sglang" \
        -- --max-tokens 512 --max-model-len 2048 --concurrency 128 --engine-kwargs "$SGL_KW"
    step "B: our client beside vllm bench serve (trust_env, server TTFT)"
    PYTHONPATH=$VLLM_PATH $PY -m evaluator.bench.serving --model "$S/demo" --data "$DATA" --limit 512 --max-tokens 128 \
        --concurrency 16,64 --repeats 2 --trust-env --engine-kwargs '{"enforce_eager": true}' --out "$R/b-client"
    step "B: deterministic vLLM, demo model"
    PYTHONPATH=$VLLM_PATH $PY -m evaluator.compare --engines vllm --gpus 1 --modes single --workload both --no-warmup \
        --model "$S/demo" --data "$DATA" --out "$R/b-deterministic" \
        -- --max-tokens 512 --max-model-len 2048 --concurrency 128 --deterministic --engine-kwargs '{"enforce_eager": true}'
    step "B: reports"
    PYTHONPATH=$VLLM_PATH $PY -m evaluator.report "$R/b-vllm" "$R/b-sglang" "$R/b-deterministic" --compare --no-plot \
        > "$R/b-report.txt" 2>&1
    step "B: done"; touch "$S/B.done" ;;
  status)
    tail -n 30 "$R/steps.log" 2>/dev/null; for p in A B; do [ -f "$R/phase-$p.log" ] && { echo "-- phase $p:"; \
      grep -E "error|Error|layout [0-9]+ of|level [0-9]|finished|done in" "$R/phase-$p.log" | tail -n 8; }; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader ;;
  collect)
    ( cd results && tar -cf - gpu | xz -T0 -6 | split -b 15M -d - "$OUT/gpu-results.tar.xz." )
    ls -la "$OUT" ;;
  *)
    echo "usage: $0 join A|B | start A|B | status | collect" >&2; exit 2 ;;
esac
