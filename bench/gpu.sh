#!/usr/bin/env bash
# GPU benchmark for a lent H200, one command of at most ~9.5 minutes, no network needed (see bench/gpu.py):
#   (our server runs in both batching modes, static and continuous: issue 23)
#   bench/gpu.sh                  every GPU option on/off, JPEG decoding, auto batch size, our server, fine-tune
#   bench/gpu.sh --dry-run        the same phases on the CPU with the tiny model (checks the script anywhere)
#   bench/gpu.sh --docs           also write the figures into docs/benchmarks.md's gpu block
#   bench/gpu.sh --fetch-wheels   HERE, before a GPU session: download into bench/wheels/ (git-ignored) the
#                                 Python 3.12 wheels the GPU image lacks or has at other versions than .venv
# Figures go to bench/results/gpu.{json,md}, or to $OUT when it is set (the device tool brings $OUT back).
# On the device tool: run(command="bench/gpu.sh", carry=["bench/wheels"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if [ "${1:-}" = "--fetch-wheels" ]; then
  # The GPU image has torch, torchvision, numpy, pillow, pyyaml, httpx, prometheus-client, uvloop, h11 and
  # huggingface-hub/tokenizers/safetensors new enough for our transformers; it lacks the rest of the server's
  # dependencies and has an older transformers. Pin everything to what .venv runs here.
  pins=$("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE \
    '^(transformers|starlette|uvicorn|orjson|cachetools|python-multipart|httptools|redis|anyio|sniffio)==')
  mkdir -p bench/wheels
  # shellcheck disable=SC2086
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --implementation cp \
    -d bench/wheels $pins
  ls -la bench/wheels
  exit 0
fi

# The carried wheels, on the GPU image only (it has no Starlette; a checkout's own .venv has everything).
if ! "$PY" -c 'import starlette, orjson' 2>/dev/null && ls bench/wheels/*.whl >/dev/null 2>&1; then
  site="${TMPDIR:-/tmp}/captioner-site"
  "$PY" -m pip install --quiet --no-index --no-deps --target "$site" bench/wheels/*.whl
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# 540 s of phases leaves room for start-up and model creation inside the device tool's 600 s per command.
exec timeout --signal=INT 580 "$PY" -m bench.gpu --budget 540 ${OUT:+--out "$OUT"} "$@"
