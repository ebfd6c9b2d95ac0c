#!/usr/bin/env bash
# GPU benchmark for a lent H200, at most 8 minutes, no network needed (see bench/gpu.py):
#   bench/gpu.sh             BLIP-base-sized model, fp16 and bf16, eager and torch.compile, batch 1..128
#   bench/gpu.sh --dry-run   the same code path on the CPU with the tiny model (checks the script anywhere)
# Writes the "gpu" block of docs/benchmarks.md and bench/results/gpu.json; with $OUT set, copies both there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# 450 s of measurements leaves room for start-up and model creation inside the 8-minute slot.
exec timeout --signal=INT 470 "$PY" -m bench.gpu --budget 450 ${OUT:+--out "$OUT"} "$@"
