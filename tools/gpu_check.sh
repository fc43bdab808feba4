#!/usr/bin/env bash
# The GPU check, on the lent GPU machine (Python 3.12 with its own torch; no internet):
# installs the wheels carried in .gpu_carry/ (made here by scripts/prepare_gpu_carry.sh),
# then runs tools/gpu_check.py within a time budget, writing its tables under $OUT.
#   device run: bash tools/gpu_check.sh      (carry: [".gpu_carry"], timeout_s 420)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .gpu_carry/*.whl
export PYTHONPATH="$PWD:$PWD/.gpu_carry/site:/tmp/site" PYTHONUNBUFFERED=1
python3 -c "import torch, detectron2, sact_det; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 tools/gpu_check.py --out "$OUT" --budget "${BUDGET:-300}" 2>&1 | tee "$OUT/gpu_check.log"
