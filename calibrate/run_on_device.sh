#!/usr/bin/env bash
# Calibrate llama-3.1-8b (tp1) and the llama-3.1-70b tp4 shard on this machine's GPU, fit both,
# and put the results in $OUT. Run from anywhere inside the checkout:
#
#   bash calibrate/run_on_device.sh            # OUT defaults to /tmp/calibrate-out
#
# Preconditions (calibrate/README.md): one idle CUDA GPU (H100/H200 class), python3 with torch;
# pure-Python dependencies the image lacks (pydantic, pydantic-core, annotated-types,
# typing-inspection, simpy, ...) as wheels in .whl/ at the repo root -- installed offline here.
#
# Time: each calibration is capped by --budget-s (below) plus start-up, each command by
# `timeout`; expected about 2 minutes per model on an H100, hard worst case under 9 minutes in
# all. Output in $OUT (at most 8 files, two folders deep, as the device tool returns them):
#   run.log, measured.tar.gz (measured/<gpu>/<model>-tp<k>/{raw.csv,meta.yaml,fit.json,...}),
#   <model>-tp<k>/fit_report.md and fit_plot.png for each model.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/calibrate-out}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-160}          # measuring time per model (the grid's phase shares apply)
CMD_TIMEOUT_S=${CMD_TIMEOUT_S:-205} # SIGINT after this: the harness writes what it measured
MODELS=${MODELS:-"llama-3.1-8b:1 llama-3.1-70b:4"}  # model profile (or YAML path):tp
DEVICE=${DEVICE:-cuda}             # cpu + GRID=tiny + a tiny model YAML only to test this script
GRID=${GRID:-default}
WORK=${WORK:-/tmp/simdisagg-calibration}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/run.log"
: >"$LOG"
export PYTHONUNBUFFERED=1 DEVICE

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tee -a "$LOG" || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

# Environment facts and the GPU's profile name (fails early, with a readable line, if a
# dependency is missing).
GPU=$("$PY" - 2>>"$LOG" <<'EOF'
import sys
try:
    import torch
    import simdisagg.cli.calibrate  # noqa: F401  (pydantic, typer, yaml, scipy ...)
    from calibrate.harness import guess_gpu_profile
    from simdisagg.hardware import ProfileStore
except ImportError as exc:
    sys.exit(f"missing dependency: {exc} (carry its wheel in .whl/)")
import os
if os.environ.get("DEVICE", "cuda") == "cpu":
    print("cpu")
    sys.exit(0)
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible to torch")
print(guess_gpu_profile(torch.cuda.get_device_name(), ProfileStore().names("gpus")))
print(f"torch {torch.__version__} cuda {torch.version.cuda} on {torch.cuda.get_device_name()}", file=sys.stderr)
EOF
) || { echo "environment check failed:"; cat "$LOG"; exit 1; }
echo "gpu profile: $GPU" | tee -a "$LOG"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv >>"$LOG" 2>&1 || true

status=0
for spec in $MODELS; do
  model_arg=${spec%:*} tp=${spec##*:}
  model=$(basename "$model_arg" .yaml)
  dest="$WORK/measured/$GPU/$model-tp$tp"
  echo "== calibrate $model tp$tp -> $dest ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  timeout -s INT "$CMD_TIMEOUT_S" "$PY" -m simdisagg calibrate gpu \
    --model "$model_arg" --tp "$tp" --gpu "$GPU" --out "$dest" --budget-s "$BUDGET_S" --force \
    --device "$DEVICE" --grid "$GRID" 2>&1 | tee -a "$LOG"
  if [ ! -f "$dest/raw.csv" ]; then
    echo "!! no raw.csv for $model tp$tp" | tee -a "$LOG"
    status=1
    continue
  fi
  echo "== fit $model tp$tp ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  timeout 40 "$PY" -m simdisagg fit "$dest" 2>&1 | tee -a "$LOG" || status=1
  mkdir -p "$OUT/$model-tp$tp"
  cp "$dest/fit_report.md" "$dest/fit_plot.png" "$OUT/$model-tp$tp/" 2>/dev/null || true
done

tar -C "$WORK" -czf "$OUT/measured.tar.gz" measured
echo "== done ($(date -u +%H:%M:%S)); unpack with: tar -xzf measured.tar.gz -C hardware_profiles/" | tee -a "$LOG"
exit $status
