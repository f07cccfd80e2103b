#!/usr/bin/env bash
# Creates .venv/ at the repository root with everything in requirements.txt, then marks it complete.
#
# mmcv 2.1.0 has no wheel for torch 2.13, so it is built once from its source distribution with its C++
# ops (~35 min on 2 cores) and the wheel is kept in a cache, so every later set-up takes seconds:
#   CONVNEXT_MM_CACHE  cache folder (default: ~/.cache/convnext-mm)
# Nothing is trusted half-done: the wheel enters the cache by an atomic rename once it is built, and
# .venv/.complete is written last (the Makefile re-runs this script when requirements.txt changes; every
# step is idempotent and quick once the wheel is cached).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
CACHE=${CONVNEXT_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/convnext-mm}
WHEELS="$CACHE/wheels"
PY="$VENV/bin/python"
pin() { grep -E "^$1==" requirements.txt | head -n1; }
# mmcv's setup.py imports pkg_resources (gone from setuptools 81); the build needs setuptools >= 77.
BUILD_TOOLS=("setuptools>=77,<81" wheel ninja)

rm -f "$VENV/.complete"
[ -x "$PY" ] || python3 -m venv "$VENV"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# torch first: mmcv's build imports it (and a GPU user's own CUDA build of 2.13.0 is kept, see README).
pip_install "$(pin torch)" "$(pin numpy)" "${BUILD_TOOLS[@]}"

MMCV=$(pin mmcv)
MMCV_VERSION=${MMCV#mmcv==}
TORCH_TAG=$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')
# The wheel's C++ ops are tied to the torch they were compiled against: key the cache on it.
WHEEL_DIR="$WHEELS/torch-$TORCH_TAG"
if ! ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    echo "Building $MMCV with its C++ ops from source (about 35 minutes on 2 cores, once; cached in $WHEEL_DIR)"
    mkdir -p "$WHEEL_DIR"
    tmp=$(mktemp -d "$WHEEL_DIR/.build.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "$PY" -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation \
        --no-binary mmcv -w "$tmp" "$MMCV"
    built=$(ls "$tmp"/mmcv-"$MMCV_VERSION"-*.whl)
    mv "$built" "$WHEEL_DIR/"
    rm -rf "$tmp"
    trap - EXIT
fi

pip_install --find-links "$WHEEL_DIR" -r requirements.txt
pip_install --no-deps --no-build-isolation -e .
"$PY" -c 'import mmcv.ops, mmdet, mmseg, convnext_mm' # fail here, not in the first test
touch "$VENV/.complete"
echo "Set up $VENV"
