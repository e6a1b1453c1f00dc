#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system libraries for FFCV, a virtual environment in
# .venv with the pinned stack (torch from the local wheels pip is configured with), the project in
# editable mode, and the offline data sets under data/.  Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# FFCV compiles against and links OpenCV and libjpeg-turbo at run time: install them every time.
APT_PKGS="pkg-config libturbojpeg0-dev libopencv-dev"
if ! dpkg -s $APT_PKGS >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $APT_PKGS >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -r requirements.txt
# the documentation site's tools (tests/test_docs.py builds it with `mkdocs build --strict`)
.venv/bin/python -m pip install -q -r docs/requirements.txt
# the benchmark's SpikingJelly side, so the tests check the twin network (not a runtime dependency)
.venv/bin/python -m pip install -q --no-deps -r bench/requirements.txt
# NeuroBench for tests/test_neurobench.py, without its torch / torchaudio requirements (the torch
# pinned above stays; its metrics import nothing else, see tests/requirements.txt)
.venv/bin/python -m pip install -q --no-deps -r tests/requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
PYTHON=.venv/bin/python bash scripts/fetch_data.sh data
