#!/usr/bin/env bash
# Verify the CUDA path in one run on a machine with an NVIDIA GPU (driver installed; no CUDA toolkit
# needed: CUDA 12 and cuDNN 9 come as PyPI wheels). Takes a few minutes with the tiny model, longer
# with --full (exports the full-size random-weight model first: ~12 GB RAM, needs torch).
#
#   scripts/gpu-check.sh            # parity tests + I/O binding tests on the GPU, tiny-model bench
#   scripts/gpu-check.sh --full     # the same, then the bench on the full-size model
#
# Steps: a fresh venv (.venv-gpu, or $SAM3_GPU_VENV) with the project and onnxruntime-gpu instead of
# onnxruntime; check ONNX Runtime sees CUDA; run the parity and I/O-binding tests and the video
# tracker's (parity with transformers, sessions through the service, takeover), sessions picking the
# CUDA provider by themselves (providers "auto"); run `sam3 bench`; print its table.
# Exit codes: 0 all passed, 1 a step failed, 2 no NVIDIA GPU here (nothing was installed).
set -euo pipefail

ORT_GPU="onnxruntime-gpu[cuda,cudnn]==1.32.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAM3_GPU_VENV:-$ROOT/.venv-gpu}"
OUT="${SAM3_GPU_OUT:-$ROOT/bench-results-gpu}"
FULL=0

for arg in "$@"; do
  case "$arg" in
    --full) FULL=1 ;;
    -h | --help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu-check: unknown argument: $arg (see --help)" >&2; exit 1 ;;
  esac
done

if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU visible (nvidia-smi missing or lists no device): nothing to check" >&2
  exit 2
fi
nvidia-smi -L

cd "$ROOT"
echo "== venv $VENV with $ORT_GPU"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
extras="test,bench"
if [ "$FULL" = 1 ]; then extras="test,bench,export"; fi
"$VENV/bin/pip" install --quiet -e ./client -e ".[$extras]"
"$VENV/bin/pip" uninstall --quiet --yes onnxruntime
"$VENV/bin/pip" install --quiet "$ORT_GPU"

echo "== ONNX Runtime sees CUDA"
"$VENV/bin/python" - << 'PY'
import onnxruntime as ort
ort.preload_dlls()
providers = ort.get_available_providers()
print("onnxruntime", ort.__version__, providers)
assert "CUDAExecutionProvider" in providers, "onnxruntime-gpu installed but CUDAExecutionProvider is missing"
PY

echo "== parity and I/O binding tests on the GPU (images, then the video tracker's graphs, in process and served)"
"$VENV/bin/python" -m pytest -q tests/test_parity.py tests/test_service_parity.py tests/test_io_binding.py \
  tests/test_predictor.py tests/test_tracking_parity.py tests/test_tracker_service.py tests/test_tracker_takeover.py

echo "== bench"
if [ "$FULL" = 1 ]; then
  "$VENV/bin/sam3" bench --out "$OUT"
else
  "$VENV/bin/sam3" bench --quick --out "$OUT"
fi
cat "$OUT/report.md"
