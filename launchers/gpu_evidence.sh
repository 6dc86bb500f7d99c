#!/usr/bin/env bash
# The GPU evidence, one phase per call (a lent GPU host without network: the engines come as the
# offline bundles of ../shared/gpu-bundle, the weights are random, the tokenizer is Qwen2.5's).
# Workload: all 1319 GSM8K test prompts, temperature 0, --ignore-eos (random weights time like real
# ones), max_model_len 2048; offline 256 new tokens, serving 256 new tokens at levels 1..256.
#
#   launchers/gpu_evidence.sh model TOKENIZER_DIR MODEL_OUT            random Qwen2.5-7B weights
#   launchers/gpu_evidence.sh offline ENGINE MODEL DATA OUT [FLAGS]      every layout, one comparison
#   launchers/gpu_evidence.sh serve ENGINE MODEL DATA OUT [FLAGS]        every layout under load
#   launchers/gpu_evidence.sh bench ENGINE MODEL DATA OUT [FLAGS]        evaluator vs bare, repeats 2
#   launchers/gpu_evidence.sh startup ENGINE MODEL DATA OUT [FLAGS]      start-up candidates
#   launchers/gpu_evidence.sh client MODEL DATA OUT                      our client vs vllm bench serve
#
# FLAGS go to every run, e.g. SGLang's offline bundle needs
#   --engine-kwargs '{"sampling_backend": "pytorch", "attention_backend": "triton"}'
set -uo pipefail
PY=${PY:-python3}
GPUS=${GPUS:-2}
phase=$1; shift
# settings the lent hosts need (../shared/gpu-bundle/README.md); none of them changes speed
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
       NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_ALLREDUCE_USE_SYMM_MEM=0 \
       RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
COMMON=(--temperature 0 --ignore-eos --max-model-len 2048 --max-tokens 256)
case $phase in
  model)
    "$PY" -m datasets_prep random-model --config datasets_prep/configs/qwen2.5-7b.json --tokenizer "$1" --out "$2" ;;
  offline)
    engine=$1; model=$2; data=$3; out=$4; shift 4
    "$PY" -m evaluator.compare --engines "$engine" --gpus "$GPUS" --model "$model" --data "$data" --out "$out" \
        -- "${COMMON[@]}" "$@" ;;
  serve)
    engine=$1; model=$2; data=$3; out=$4; shift 4
    "$PY" -m evaluator.compare --engines "$engine" --gpus "$GPUS" --workload serve --model "$model" --data "$data" \
        --out "$out" -- "${COMMON[@]}" --concurrency "${LEVELS:-1,16,64,256}" --level-prompts "${LEVEL_PROMPTS:-2x}" \
        --slo-ttft-ms "${SLO_TTFT_MS:-1000}" --slo-tpot-ms "${SLO_TPOT_MS:-50}" "$@" ;;
  bench)
    engine=$1; model=$2; data=$3; out=$4; shift 4
    "$PY" -m evaluator.bench --engine "$engine" --model "$model" --data "$data" --limit 1319 --max-tokens 256 \
        --ignore-eos --max-model-len 2048 --gpus "$GPUS" --repeats "${REPEATS:-2}" --shardings contiguous \
        --out "$out" "$@" ;;
  startup)
    engine=$1; model=$2; data=$3; out=$4; shift 4
    "$PY" -m evaluator.bench --startup-only --engine "$engine" --model "$model" --data "$data" --limit 8 \
        --max-model-len 2048 --gpus "$GPUS" --repeats "${REPEATS:-1}" --out "$out" "$@" ;;
  client)
    model=$1; data=$2; out=$3; shift 3
    "$PY" -m evaluator.bench.serving --model "$model" --data "$data" --limit "${CLIENT_PROMPTS:-256}" \
        --max-tokens 256 --max-model-len 2048 --concurrency "${CLIENT_LEVELS:-16,64}" --repeats 2 --out "$out" "$@" ;;
  *)
    echo "usage: $0 model|offline|serve|bench|startup|client ..." >&2; exit 2 ;;
esac
