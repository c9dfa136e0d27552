#!/usr/bin/env bash
# Regenerate the measured profiles shipped in hardware_profiles/measured/ from the measured
# kernel database (AIConfigurator's tables, Apache-2.0; commit in its SOURCE_COMMIT), and fit
# each one. Run from anywhere inside the checkout:
#
#   bash calibrate/import_profiles.sh [DB]      # DB defaults to ../shared/kernels/aiconfigurator
#
# About 3 s per profile on a 2-core machine (140 profiles: about 7 minutes). Combinations the
# database cannot serve (FP4 without FP4 tables, weights that leave no KV memory) are listed as
# skipped. Existing raw samples are replaced (--force): the import is deterministic, so an
# unchanged database gives the same samples.
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${1:-../shared/kernels/aiconfigurator}
SIM=${SIMDISAGG:-simdisagg}
GPUS=(--gpu h100-sxm --gpu h200 --gpu b200)
DENSE=(--model llama-3.1-8b --model llama-3.1-70b --model qwen3-32b --tp 1 --tp 2 --tp 4 --tp 8)

# vLLM: BF16, and FP8 weights with an FP8 KV cache.
$SIM calibrate import --db "$DB" "${GPUS[@]}" "${DENSE[@]}" --framework vllm --weights bf16 --kv-cache bf16 --force
$SIM calibrate import --db "$DB" "${GPUS[@]}" "${DENSE[@]}" --framework vllm --weights fp8 --kv-cache fp8 --force
# SGLang and TensorRT-LLM: FP8 weights with an FP8 KV cache.
$SIM calibrate import --db "$DB" "${GPUS[@]}" "${DENSE[@]}" --framework sglang --weights fp8 --kv-cache fp8 --force
$SIM calibrate import --db "$DB" "${GPUS[@]}" "${DENSE[@]}" --framework trtllm --weights fp8 --kv-cache fp8 --force
# The measured deployments in ../shared/validation: SGLang serving a BF16 checkpoint with
# block-scaled FP8 GEMMs and a BF16 KV cache.
$SIM calibrate import --db "$DB" --gpu h200 --model llama-3.1-8b --tp 1 --tp 2 --tp 4 --tp 8 \
  --framework sglang --weights fp8_block --kv-cache bf16 --force
# The README's agentic example (a 1M-context model at TP 1 and 2).
$SIM calibrate import --db "$DB" "${GPUS[@]}" --model qwen2.5-7b-instruct-1m --tp 1 --tp 2 \
  --framework vllm --weights bf16 --kv-cache bf16 --force
