#!/usr/bin/env bash
# Installs Detectron2's pure-Python package into the given interpreter's
# site-packages, unless that interpreter can already import a detectron2
# (a user's own build, with or without the compiled `_C`, is kept as is).
#
# Detectron2 has no PyPI release. `sal-detectron2==0.7.2` is an unmodified
# snapshot of detectron2 main (April 2024) whose wheel is tagged cp310; its
# Python code runs on newer Pythons without `_C`, which sact-det never needs.
# The wheel also ships detectron2's own `tools/` as a top-level package, which
# would shadow this repository's `tools/`: only `detectron2/` is copied.
set -euo pipefail
PY="${1:-python3}"

if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "detectron2 already importable: $("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))'); keeping it"
  exit 0
fi

SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.10 \
  --implementation cp --platform linux_x86_64 --target "$TMP" sal-detectron2==0.7.2
rm -f "$TMP"/detectron2/_C*.so
cp -r "$TMP/detectron2" "$SITE/"
cp -r "$TMP"/sal_detectron2-*.dist-info "$SITE/"
# Detectron2's runtime requirements (from the wheel's metadata, minus the
# formatter `black`, only used to pretty-print lazy configs).
"$PY" -m pip install --quiet "Pillow>=7.1" matplotlib "pycocotools>=2.0.2" "termcolor>=1.1" \
  "yacs>=0.1.8" tabulate cloudpickle "tqdm>4.29.0" tensorboard "numpy<2" \
  "omegaconf>=2.1,<2.4" "hydra-core>=1.1" packaging
echo "installed detectron2 (pure Python, sal-detectron2==0.7.2) into $SITE"
