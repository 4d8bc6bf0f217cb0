#!/usr/bin/env bash
# Build the legacy virtualenv (docs/LEGACY.md): TensorFlow 2.15 CPU with Keras 2 (tf-keras), numpy < 2,
# pyarrow < 15, Petastorm 0.13.1 and Horovod 0.28.1 built with TensorFlow and Gloo only, plus pyspark,
# MLflow and the project. The Horovod wheel is built once and kept in the wheel cache, so a second
# install only reinstalls wheels. Prints how long the install and the Horovod build took.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${1:-.venv-legacy}
HOROVOD_VERSION=0.28.1
TF_VERSION=2.15.1
CACHE=${LAKESIGHT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lakesight/wheels}
WHEELS="$CACHE/horovod-$HOROVOD_VERSION-tf$TF_VERSION-gloo"
PYTHON=$(command -v python3.11 || command -v python3)
started=$(date +%s)

command -v g++ >/dev/null || { echo "a C++ compiler is required to build Horovod (apt-get install g++)"; exit 1; }
echo "building $VENV (legacy stack: TensorFlow $TF_VERSION, Horovod $HOROVOD_VERSION, Petastorm 0.13.1)"
"$PYTHON" -m venv --clear "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip
"${PIP[@]}" install --quiet -c infra/legacy/constraints.txt -r infra/legacy/requirements.txt
# tf-keras 2.15 names the full `tensorflow` wheel; the CPU wheel above is the same TensorFlow.
"${PIP[@]}" install --quiet --no-deps -c infra/legacy/constraints.txt tf-keras

wheel=$(ls "$WHEELS"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  echo "building the Horovod $HOROVOD_VERSION wheel (TensorFlow + Gloo; no MPI, PyTorch or MXNet): a few minutes"
  build_started=$(date +%s)
  mkdir -p "$WHEELS"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
    HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" PATH="$VENV/bin:$PATH" \
    "${PIP[@]}" wheel --quiet --no-cache-dir --no-build-isolation --no-deps "horovod==$HOROVOD_VERSION" -w "$WHEELS"
  wheel=$(ls "$WHEELS"/horovod-"$HOROVOD_VERSION"-*.whl | head -1)
  horovod="built in $(( $(date +%s) - build_started )) s, cached in $WHEELS"
else
  horovod="from the cache ($wheel)"
fi
"${PIP[@]}" install --quiet --no-deps "$wheel"
"${PIP[@]}" install --quiet --no-deps -e .
"$VENV/bin/python" -m training.legacy.check
echo "legacy stack installed in $(( $(date +%s) - started )) s; Horovod wheel $horovod"
