#!/usr/bin/env bash
# One GPU session (issue 31) on a lent one-GPU host without network, run from the repo root there.
# The pieces arrive as one chunk per device call (.bundle-gpu/carry/call-NN, made here by
# launchers/gpu_bundle/prepare.sh; docs/gpu-session.md has the call plan); `join` after each call
# installs every piece whose bytes are all in, in the background. `start` runs the plan's steps
# in the background (setsid), one at a time on the GPU, each waiting for the pieces it needs, so
# the first measurements run while later pieces are still being carried.
#
#   launchers/gpu_session.sh join            check the chunks that arrived, install complete pieces
#   launchers/gpu_session.sh start [STEP..]  run the steps (default: the whole plan, in its order)
#   launchers/gpu_session.sh status          pieces, steps, the running step's progress, minutes held
#   launchers/gpu_session.sh skip STEP       leave a step out (ends it if it is running)
#   launchers/gpu_session.sh collect         results/gpu (and the logs) as xz parts under $OUT
#   launchers/gpu_session.sh steps           list the plan's steps and what each needs
#   launchers/gpu_session.sh dry [STEP..]    print the steps' commands without running them
#   PY=.venv/bin/python launchers/gpu_session.sh check   here, before the session: every flag known?
#
# Every engine run has its own PYTHONPATH (the vLLM and SGLang bundles pin different transformers,
# xgrammar and openai). `check` confirms every module and flag the steps use exists in this checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
S=${GPU_SESSION_TMP:-/tmp/gpu}; R=${GPU_SESSION_RESULTS:-results/gpu}; CARRY=.bundle-gpu/carry
case ${1:-} in join|start|prep-lane|runner|skip|collect) mkdir -p "$S" "$R/logs" ;; esac
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
       NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_ALLREDUCE_USE_SYMM_MEM=0 \
       PYTHONUNBUFFERED=1 COLUMNS=200
PY=${PY:-python3}
DATA=$S/data/gsm8k_test.parquet
DEMO=$S/demo                 # the demo model, dequantised here from its GGUF (real answers)
Q7=$S/q7                     # random weights of the Qwen2.5-7B architecture (capacity, profile, bench)
VLLM_PATH=$S/bundle/vllm:$S/bundle/ray:$S/site:$PWD
SGL_PATH=$S/bundle/sglang:$S/bundle/ray:$S/site:$PWD
SGL_KW='{"attention_backend": "triton", "sampling_backend": "pytorch"}'
LONG='synthetic:n=600,in=2000,out=200,seed=1'
PREFIX='synthetic:n=600,in=2000,out=200,prefix=1500,prefixes=8,seed=1'
SLO=(--slo-ttft-ms 1000 --slo-tpot-ms 50 --slo-percentile 90)
# The new serving method (issue 27): an untimed warm-up, levels of at least 20 s, the boundary
# probes repeated for the capacity's interval.
FRESH=(--warmup-requests 32 --level-min-s "${LEVEL_MIN_S:-30}")   # 2026-12-03: 15 s levels were short for 10 s requests
# 8 runs, repeats included; CAPACITY_LEVELS=6 at `start` shortens a search for a session with less device time
CAPACITY=(--capacity --capacity-start 8 --capacity-levels "${CAPACITY_LEVELS:-8}" --capacity-repeats 2)
# the demo's served level answers every problem once (paired with the offline run on all 1319)
DEMO_SERVE=(--concurrency 128 --level-prompts all --warmup-requests 32 --level-min-s 0)
DEMO_RUN=(--max-tokens 512 --max-model-len 2048)

# DRY=1: print each command instead (`dry`, `check`)
vllm_py() { if [ -n "${DRY:-}" ]; then echo "vllm $(printf '%q ' "$@")"; else PYTHONPATH=$VLLM_PATH $PY "$@"; fi; }
sgl_py() { if [ -n "${DRY:-}" ]; then echo "sglang $(printf '%q ' "$@")"; else PYTHONPATH=$SGL_PATH $PY "$@"; fi; }
log() { echo "== $(date +%T) $*" | tee -a "$R/steps.log"; }

# The plan, in priority order (issue 31's items 1-5), except that the SGLang capacity run goes
# first: its pieces (SGLang, Ray, the tokenizer) arrive in the first calls, the demo model's GGUF
# and vLLM later, so it fills the GPU while they are carried instead of leaving it idle.
PLAN="p2-sglang-long p1-sglang p1-vllm p1-vllm-triton p1-report p2-vllm-long p1-reference p2-sglang-prefix p2-vllm-prefix
      p3-profile p4-vllm p4-sglang p5-vllm p5-sglang p2-sglang-gsm8k p2-vllm-gsm8k report"

needs() {   # pieces (DEST/have/NAME, made by join) and models (made by the prep lane) a step waits for
  case $1 in
    p2-sglang-*|p4-sglang) echo "sglang ray data q7" ;;
    p2-vllm-*|p3-profile|p4-vllm) echo "vllm ray data q7" ;;
    p1-sglang|p5-sglang) echo "sglang ray data demo" ;;
    p1-vllm|p1-vllm-triton|p1-reference|p5-vllm) echo "vllm ray data demo" ;;
    p1-report|report) echo "vllm" ;;
  esac
}

run_step() {   # the commands of one step; its output goes to $R/logs/STEP.log
  case $1 in
  p2-sglang-long)   # item 2: capacity with fresh requests, 2,000 in / 200 out (stored: SGLang 19 with caching off)
    sgl_py -m evaluator --engine sglang --model "$Q7" --data "$DATA" --workload serve --traffic "$LONG" \
        "${CAPACITY[@]}" "${FRESH[@]}" "${SLO[@]}" --max-model-len 4096 --engine-kwargs "$SGL_KW" \
        --output-dir "$R/p2" --run-id sglang-7b-capacity-long --no-table ;;
  p2-vllm-long)     # stored: vLLM 20.7 (caching off), 26.9 (re-sent, cached probes)
    vllm_py -m evaluator --engine vllm --model "$Q7" --data "$DATA" --workload serve --traffic "$LONG" \
        "${CAPACITY[@]}" "${FRESH[@]}" "${SLO[@]}" --max-model-len 4096 \
        --output-dir "$R/p2" --run-id vllm-7b-capacity-long --no-table ;;
  p2-sglang-prefix) # shared prefixes, prefix caching on (the default): the hit rate is the point
    sgl_py -m evaluator --engine sglang --model "$Q7" --data "$DATA" --workload serve --traffic "$PREFIX" \
        "${CAPACITY[@]}" "${FRESH[@]}" "${SLO[@]}" --max-model-len 4096 --engine-kwargs "$SGL_KW" \
        --output-dir "$R/p2" --run-id sglang-7b-capacity-prefix --no-table ;;
  p2-vllm-prefix)
    vllm_py -m evaluator --engine vllm --model "$Q7" --data "$DATA" --workload serve --traffic "$PREFIX" \
        "${CAPACITY[@]}" "${FRESH[@]}" "${SLO[@]}" --max-model-len 4096 \
        --output-dir "$R/p2" --run-id vllm-7b-capacity-prefix --no-table ;;
  p2-sglang-gsm8k)  # GSM8K holds only 1319 fresh prompts: from 16 req/s, 20 s levels use them up in a few probes
    sgl_py -m evaluator --engine sglang --model "$Q7" --data "$DATA" --workload serve \
        --capacity --capacity-start 16 --capacity-levels 5 --capacity-repeats 2 "${FRESH[@]}" "${SLO[@]}" \
        --max-tokens 256 --ignore-eos --max-model-len 4096 --engine-kwargs "$SGL_KW" \
        --output-dir "$R/p2" --run-id sglang-7b-capacity-gsm8k --no-table ;;
  p2-vllm-gsm8k)
    vllm_py -m evaluator --engine vllm --model "$Q7" --data "$DATA" --workload serve \
        --capacity --capacity-start 16 --capacity-levels 5 --capacity-repeats 2 "${FRESH[@]}" "${SLO[@]}" \
        --max-tokens 256 --ignore-eos --max-model-len 4096 \
        --output-dir "$R/p2" --run-id vllm-7b-capacity-gsm8k --no-table ;;
  p1-sglang)        # item 1: the demo model, all 1319 problems, offline and served, SGLang's defaults (CUDA graphs)
    sgl_py -m evaluator.compare --engines sglang --gpus 1 --modes single --workload both --no-warmup \
        --model "$DEMO" --data "$DATA" --out "$R/p1-sglang" --engine-kwargs-for "sglang=$SGL_KW" \
        -- "${DEMO_RUN[@]}" "${DEMO_SERVE[@]}" ;;
  p1-vllm)          # vLLM's defaults: compiled, CUDA graphs (no enforce_eager, unlike 2026-12-01)
    vllm_py -m evaluator.compare --engines vllm --gpus 1 --modes single --workload both --no-warmup \
        --model "$DEMO" --data "$DATA" --out "$R/p1-vllm" \
        -- "${DEMO_RUN[@]}" "${DEMO_SERVE[@]}" ;;
  p1-vllm-triton)   # like for like with the SGLang bundle (no FA3 kernels: triton attention): vLLM's Triton attention
    vllm_py -m evaluator.compare --engines vllm --gpus 1 --modes single --workload both --no-warmup \
        --model "$DEMO" --data "$DATA" --out "$R/p1-vllm-triton" --engine-kwargs-for 'vllm={"attention_backend": "TRITON_ATTN"}' \
        -- "${DEMO_RUN[@]}" "${DEMO_SERVE[@]}" ;;
  p1-reference)     # the transformers reference engine, for McNemar against it (4.6 min at batch 96 on 2026-12-01)
    vllm_py -m evaluator.compare --engines hf --gpus 1 --modes single --workload offline \
        --model "$DEMO" --data "$DATA" --out "$R/p1-reference" --engine-kwargs-for 'hf={"batch_size": 256}' \
        -- "${DEMO_RUN[@]}" ;;
  p1-report|report) # the engine sentence across the engines' folders, McNemar against the reference when it ran
    local dirs=() d; for d in p1-vllm p1-vllm-triton p1-sglang p1-reference p5-vllm p5-sglang; do [ -d "$R/$d" ] && dirs+=("$R/$d"); done
    local base=(); [ -d "$R/p1-reference/hf-single" ] && base=(--baseline hf-single)
    [ -n "${DRY:-}" ] && dirs=("$R/p1-vllm" "$R/p1-sglang")
    local cmd=(-m evaluator.report "${dirs[@]}" --compare "${base[@]}" --html "$R/$1.html")
    if [ -n "${DRY:-}" ]; then vllm_py "${cmd[@]}"; else vllm_py "${cmd[@]}" > "$R/$1.txt" 2>&1; local rc=$?; tail -n 40 "$R/$1.txt"; return $rc; fi ;;
  p3-profile)       # item 3: profile one device, predict single's serving levels and capacity, measure, print the error
    vllm_py -m evaluator.profile --engine vllm --model "$Q7" --gpus 1 --max-model-len 4096 \
        --out "$R/p3/profile-vllm-7b.json" &&
    vllm_py -m evaluator.compare --engines vllm --gpus 1 --modes single --workload serve --no-warmup \
        --predict --profile "$R/p3/profile-vllm-7b.json" --measure-top 1 \
        --model "$Q7" --data "$DATA" --out "$R/p3/compare" \
        -- --traffic "$LONG" --concurrency 1,16,64,256 "${FRESH[@]}" "${SLO[@]}" --max-model-len 4096 ;;
  p4-vllm)          # item 4: the tool's own cost: generate <= 1.02x the bare engine; server in Ray vs bare within 2%
    vllm_py -m evaluator.bench --engine vllm --gpus 1 --model "$Q7" --data "$DATA" --limit 1319 --max-tokens 256 \
        --ignore-eos --max-model-len 2048 --repeats 2 --shardings contiguous --out "$R/p4" &&
    vllm_py -m evaluator.bench.fidelity --engine vllm --model "$Q7" --data "$DATA" --limit 256 --max-tokens 128 \
        --concurrency 16,64 --repeats 2 --max-model-len 2048 --out "$R/p4" ;;
  p4-sglang)
    # evaluator.bench.fidelity (the server in Ray against the bare server) is vLLM's only so far
    sgl_py -m evaluator.bench --engine sglang --gpus 1 --model "$Q7" --data "$DATA" --limit 1319 --max-tokens 256 \
        --ignore-eos --max-model-len 2048 --repeats 2 --shardings contiguous --engine-kwargs "$SGL_KW" --out "$R/p4" ;;
  p5-vllm)          # item 5: online FP8 beside bf16 (offline: speed and McNemar), then --deterministic, offline and served
    vllm_py -m evaluator.compare --engines vllm --gpus 1 --modes single --workload offline --no-warmup --quantized fp8 \
        --model "$DEMO" --data "$DATA" --out "$R/p5-vllm/fp8" -- "${DEMO_RUN[@]}" &&
    vllm_py -m evaluator.compare --engines vllm --gpus 1 --modes single --workload both --no-warmup \
        --model "$DEMO" --data "$DATA" --out "$R/p5-vllm/deterministic" \
        -- "${DEMO_RUN[@]}" "${DEMO_SERVE[@]}" --deterministic ;;
  p5-sglang)
    sgl_py -m evaluator.compare --engines sglang --gpus 1 --modes single --workload offline --no-warmup --quantized fp8 \
        --model "$DEMO" --data "$DATA" --out "$R/p5-sglang/fp8" --engine-kwargs-for "sglang=$SGL_KW" \
        -- "${DEMO_RUN[@]}" &&
    sgl_py -m evaluator.compare --engines sglang --gpus 1 --modes single --workload both --no-warmup \
        --model "$DEMO" --data "$DATA" --out "$R/p5-sglang/deterministic" --engine-kwargs-for "sglang=$SGL_KW" \
        -- "${DEMO_RUN[@]}" "${DEMO_SERVE[@]}" --deterministic ;;
  *) echo "no step $1 (steps: $PLAN)" >&2; return 2 ;;
  esac
}

wait_for() {   # until every name in $@ is in $S/have (a failed model, or `skip` of the waiting step, ends it)
  local n
  for n in "$@"; do
    while [ ! -e "$S/have/$n" ]; do
      [ -e "$S/have/$n.failed" ] && return 1
      [ -n "${WAITING:-}" ] && [ -e "$S/skip/$WAITING" ] && return 1
      sleep 2
    done
  done
}

prep_models() {   # the CPU lane: models from the pieces, beside the GPU steps
  mkdir -p "$S/have"
  if [ ! -e "$S/have/q7" ] && wait_for tok; then
    log "prep: random Qwen2.5-7B weights"
    if PYTHONPATH=$PWD $PY -m datasets_prep random-model --config datasets_prep/configs/qwen2.5-7b.json \
        --tokenizer "$S/tok" --out "$Q7" > "$R/logs/prep-q7.log" 2>&1
    then touch "$S/have/q7"; log "prep: q7 ready"; else touch "$S/have/q7.failed"; log "prep: q7 FAILED"; fi
  fi
  if [ ! -e "$S/have/demo" ] && wait_for gguf gguf-wheel; then
    # the host's transformers (5.17 has GgufConfig; the SGLang bundle's 5.12.1 has not) and the carried gguf
    log "prep: the demo model from its GGUF"
    if PYTHONPATH=$S/site:$PWD $PY -m datasets_prep model qwen2.5-coder-0.5b-instruct --out "$DEMO" \
        --cache-dir "$S/cache" > "$R/logs/prep-demo.log" 2>&1
    then touch "$S/have/demo"; log "prep: demo ready"; else touch "$S/have/demo.failed"; log "prep: demo FAILED"; fi
  fi
}

runner() {   # the GPU lane: the steps one at a time, each after its pieces
  mkdir -p "$S/done" "$S/skip"
  set -m     # each step in its own process group, so `skip` can end it (and its engines) alone
  local s
  for s in "$@"; do
    [ -e "$S/done/$s" ] || [ -e "$S/skip/$s" ] && continue
    # shellcheck disable=SC2046
    WAITING=$s wait_for $(needs "$s"); local ok=$?
    [ -e "$S/skip/$s" ] && { log "$s: skipped"; continue; }
    [ $ok = 0 ] || { log "$s: not run, a model it needs failed (see $R/logs/prep-*.log)"; continue; }
    echo "$s" > "$S/current"
    log "$s: start"
    local t0=$SECONDS
    (run_step "$s") > "$R/logs/$s.log" 2>&1 &
    echo $! > "$S/current.pid"; wait $!; local rc=$?
    log "$s: rc=$rc after $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s"
    [ $rc = 0 ] && touch "$S/done/$s"
    rm -f "$S/current" "$S/current.pid"
  done
  log "runner: plan finished"
}

case ${1:-} in
  join)
    [ -e "$S/first-join" ] || date +%s > "$S/first-join"
    $PY launchers/gpu_bundle/carry.py join "$CARRY" "$S" ;;
  start)
    shift; steps=${*:-$PLAN}
    if [ -e "$S/runner.pid" ] && kill -0 "$(cat "$S/runner.pid")" 2>/dev/null; then
      echo "a runner is already going (pid $(cat "$S/runner.pid")); status shows it, skip STEP steers it" >&2; exit 2
    fi
    for s in $steps; do [ -n "$(needs "$s")" ] || { echo "no step $s (steps: $PLAN)" >&2; exit 2; }; done
    setsid nohup "$0" prep-lane > "$R/logs/prep-lane.log" 2>&1 < /dev/null &
    setsid nohup "$0" runner $steps > "$R/logs/runner.log" 2>&1 < /dev/null &
    echo $! > "$S/runner.pid"
    echo "started: $steps" ;;
  prep-lane) prep_models ;;
  runner) shift; runner "$@" ;;
  skip)
    [ -n "${2:-}" ] || { echo "usage: $0 skip STEP" >&2; exit 2; }
    mkdir -p "$S/skip"; touch "$S/skip/$2"
    if [ "$(cat "$S/current" 2>/dev/null)" = "$2" ]; then
      # Ctrl-C first (the evaluator closes its engines and keeps what it wrote), then harder
      pid=$(cat "$S/current.pid"); kill -INT -- "-$pid"; sleep 15; kill -TERM -- "-$pid" 2>/dev/null; sleep 5
      kill -KILL -- "-$pid" 2>/dev/null; echo "ended $2"
    fi ;;
  status)
    [ -e "$S/first-join" ] && echo "first join $(( ($(date +%s) - $(cat "$S/first-join")) / 60 )) min ago (a machine goes back 30 min after its start: collect before then)"
    echo "have: $(ls "$S/have" 2>/dev/null | tr '\n' ' ')"
    tail -n 3 "$S/.carry/install.log" 2>/dev/null
    tail -n 12 "$R/steps.log" 2>/dev/null
    if [ -e "$S/current" ]; then c=$(cat "$S/current"); echo "-- $c:"
      tr '\r' '\n' < "$R/logs/$c.log" | grep -E "level [0-9]|probe|holds|rate=|c=[0-9]|run |Error|error|Traceback|done in|finished" | tail -n 8
    fi
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader ;;
  collect)
    cp "$S/.carry/install.log" "$R/logs/" 2>/dev/null
    tar -C "$(dirname "$R")" -cf - "$(basename "$R")" | xz -T0 -6 | split -b 15M -d - "$OUT/gpu-results.tar.xz."
    n=$(ls "$OUT"/gpu-results.tar.xz.* | wc -l)
    [ "$n" -le 8 ] || echo "WARNING: $n parts: only 8 files come back from \$OUT; collect results/gpu/SUBDIR parts in two calls"
    ls -la "$OUT" ;;
  steps)
    for s in $PLAN; do printf '%-18s needs %s\n' "$s" "$(needs "$s")"; done ;;
  dry)
    shift; for s in ${*:-$PLAN}; do echo "# $s"; DRY=1 run_step "$s"; done ;;
  check)   # here, on the merged main: does every module, flag and engine the steps use exist? (PY=.venv/bin/python)
    for s in $PLAN; do echo "# $s"; DRY=1 run_step "$s"; done | PYTHONPATH=$PWD $PY -c '
import shlex, subprocess, sys
helps, problems, step = {}, {}, ""
for line in sys.stdin:
    if line.startswith("# "):
        step = line[2:].strip(); continue
    argv = shlex.split(line)[1:]
    mod = argv[argv.index("-m") + 1]
    groups = [(mod, argv)]
    if "--" in argv:
        i = argv.index("--")
        groups = [(mod, argv[:i]), ("evaluator", argv[i + 1:])]
    for m, args in groups:
        if m not in helps:
            p = subprocess.run([sys.executable, "-m", m, "--help"], capture_output=True, text=True)
            helps[m] = p.stdout if p.returncode == 0 else None
        if helps[m] is None:
            problems.setdefault(f"no module {m}", []).append(step); continue
        for a, nxt in zip(args, args[1:] + [""]):
            f = a.split("=")[0]
            if f.startswith("--") and f not in helps[m]:
                problems.setdefault(f"{m}: no flag {f}", []).append(step)
            elif f in ("--engine", "--engines") and not all(e in helps[m] for e in nxt.split(",")):
                problems.setdefault(f"{m}: {f} {nxt} not among its choices", []).append(step)
for what, steps in problems.items():
    where = ", ".join(dict.fromkeys(steps))
    print(f"{what}  ({where})")
print(f"{len(problems)} problem(s)" if problems else "every module, flag and engine is known")
sys.exit(1 if problems else 0)' ;;
  *)
    echo "usage: $0 join | start [STEP...] | status | skip STEP | collect | steps | dry [STEP...] | check" >&2; exit 2 ;;
esac
