#!/usr/bin/env bash
# Regenerate the measured profiles shipped in hardware_profiles/measured/ from the measured
# kernel database (AIConfigurator's tables, Apache-2.0; commit in its SOURCE_COMMIT), and fit
# each one. Run from anywhere inside the checkout:
#
#   bash calibrate/import_profiles.sh [DB]      # DB defaults to ../shared/kernels/aiconfigurator
#
# About 3 s per dense profile on a 2-core machine (140 profiles: about 7 minutes; the 31 MoE
# profiles about 4 minutes more). Combinations the
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
# Mixture-of-experts deployments of ../shared/validation (H200), each with the checkpoint's
# expert precision and the rows' parallelism (attention DP, EP). DeepSeek-V3/R1: latent
# attention, 128x128 block-scaled FP8 experts.
H200=(--gpu h200 --force)
$SIM calibrate import --db "$DB" "${H200[@]}" --model deepseek-r1 --model deepseek-v3 --framework sglang \
  --framework trtllm --tp 8 --weights fp8 --experts fp8_block --kv-cache fp8
$SIM calibrate import --db "$DB" "${H200[@]}" --model deepseek-r1 --model deepseek-v3 --framework trtllm \
  --tp 8 --ep 8 --weights fp8 --experts fp8_block --kv-cache fp8
$SIM calibrate import --db "$DB" "${H200[@]}" --model deepseek-r1 --model deepseek-v3 --framework sglang \
  --framework trtllm --tp 1 --dp 8 --ep 8 --weights fp8 --experts fp8_block --kv-cache fp8
# gpt-oss-120b: MXFP4 experts run weight-only on H200, BF16 attention with sliding windows.
$SIM calibrate import --db "$DB" "${H200[@]}" --model gpt-oss-120b --framework trtllm --framework vllm \
  --tp 1 --tp 2 --tp 4 --tp 8 --weights bf16 --experts mxfp4 --kv-cache bf16
$SIM calibrate import --db "$DB" "${H200[@]}" --model gpt-oss-120b --framework trtllm --tp 4 --ep 2 \
  --weights bf16 --experts mxfp4 --kv-cache bf16
$SIM calibrate import --db "$DB" "${H200[@]}" --model gpt-oss-120b --framework trtllm --tp 8 --ep 8 \
  --weights bf16 --experts mxfp4 --kv-cache bf16
# MiniMax-M2.5 and Qwen3-235B-A22B-FP8: block-scaled FP8 checkpoints.
$SIM calibrate import --db "$DB" "${H200[@]}" --model minimax-m2.5 --framework vllm --tp 4 --tp 8 \
  --weights fp8 --experts fp8_block --kv-cache fp8
$SIM calibrate import --db "$DB" "${H200[@]}" --model qwen3-235b-a22b --framework sglang --tp 2 --tp 4 \
  --weights fp8_block --kv-cache bf16
$SIM calibrate import --db "$DB" "${H200[@]}" --model qwen3-235b-a22b --framework vllm --tp 2 --tp 4 \
  --weights fp8 --experts fp8_block --kv-cache fp8
$SIM calibrate import --db "$DB" "${H200[@]}" --model qwen3-235b-a22b --framework vllm --tp 1 --dp 2 --dp 4 \
  --weights fp8 --experts fp8_block --kv-cache fp8
$SIM calibrate import --db "$DB" "${H200[@]}" --model qwen3-235b-a22b --framework vllm --tp 2 --dp 2 \
  --weights fp8 --experts fp8_block --kv-cache fp8
$SIM calibrate import --db "$DB" "${H200[@]}" --model qwen3-235b-a22b --framework vllm --tp 2 --ep 2 \
  --weights fp8 --experts fp8_block --kv-cache fp8
$SIM calibrate import --db "$DB" "${H200[@]}" --model qwen3-235b-a22b --framework vllm --tp 4 --ep 4 \
  --weights fp8 --experts fp8_block --kv-cache fp8
