#!/usr/bin/env bash
# Set up everything the pipeline needs on a fresh Debian machine (idempotent):
# Mesa EGL for headless MuJoCo if missing, a virtualenv in .venv, the local CPU build of
# torch 2.13.0 (never the CUDA one on a CPU machine), then this package with its extras.
# `--browser` also installs headless Chromium (Debian's `chromium`) for the report's screenshot
# test; without it that one test is skipped with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --browser) BROWSER=1 ;;
    *) echo "setup: unknown option $arg (known: --browser)" >&2; exit 2 ;;
  esac
done

if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || ! ldconfig -p 2>/dev/null | grep -q 'libGL.so.1'; then
  echo "setup: installing Mesa EGL/GL libraries for headless rendering" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
fi

if [ "$BROWSER" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing headless Chromium for the report's screenshot test" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }; then
    echo "setup: could not install chromium; the screenshot test will be skipped" >&2
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, pinned: with it installed, nothing else can pull a CUDA build.
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  .venv/bin/python -m pip install -q -c requirements.lock "torch==2.13.0"
fi
# Every other package at the exact version of requirements.lock (scripts/lock.sh writes it).
.venv/bin/python -m pip install -q -c requirements.lock -e ".[test]"
.venv/bin/python - <<'PY'
import torch
assert not torch.version.cuda or torch.cuda.is_available(), "a CUDA torch build was installed on a CPU machine"
PY

# DVC remote for checkpoints, buffers, rollouts and videos (`dvc push` after a run, `dvc pull`
# in a clone): a folder outside the working tree; VLA_DVC_REMOTE=<folder> picks it.
if [ -d .dvc ]; then
  bash scripts/remote.sh
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
