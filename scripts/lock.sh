#!/usr/bin/env bash
# Rewrite requirements.lock from the packages installed in .venv (after an upgrade there).
# Every DVC stage depends on the lock file, so a new lock makes `dvc repro` rerun everything.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Exact versions of every package the pipeline runs with: scripts/setup.sh installs with"
  echo "# \`pip install -c requirements.lock\`, and every DVC stage depends on this file. Written by"
  echo "# scripts/lock.sh (pip freeze of .venv, without this project; torch's local build label"
  echo "# such as +cpu dropped, so 2.13.0 admits the CPU and the CUDA build)."
  .venv/bin/python -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$//'
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "lock: wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)" >&2
