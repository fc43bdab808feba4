#!/usr/bin/env bash
# Prepares .gpu_carry/ (git-ignored) for tools/gpu_check.sh on the GPU machine, which
# has Python 3.12, torch, numpy, opencv, matplotlib, scipy, tabulate, pyyaml,
# portalocker, cloudpickle and tqdm but no internet: the wheels of what Detectron2 and
# sact-det need beyond those, for CPython 3.12 on x86-64, and Detectron2's pure-Python
# package (sal-detectron2's wheel is tagged cp310; its Python code runs on 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
rm -rf .gpu_carry && mkdir -p .gpu_carry/site
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# compiled: a CPython 3.12 wheel built against numpy 2 (the GPU machine's numpy)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
  -d .gpu_carry "pycocotools>=2.0.8"
# pure Python (some only as source distributions): universal wheels built here
"$PY" -m pip wheel -q --no-deps -w .gpu_carry fvcore iopath yacs termcolor "omegaconf>=2.1,<2.4" hydra-core \
  antlr4-python3-runtime==4.9.3
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip install -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
  --platform linux_x86_64 --target "$TMP" sal-detectron2==0.7.2
rm -f "$TMP"/detectron2/_C*.so
cp -r "$TMP/detectron2" .gpu_carry/site/
ls .gpu_carry; du -sh .gpu_carry
