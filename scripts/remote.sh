#!/usr/bin/env bash
# Default DVC remote of this working copy (run by scripts/setup.sh; safe to rerun): a folder
# on this machine, outside the working tree, written to .dvc/config.local (not in git).
#   VLA_DVC_REMOTE=<folder> bash scripts/remote.sh   use that folder (a shared disk, to share runs)
# Without VLA_DVC_REMOTE, a default remote that is already configured is kept; otherwise
# ~/.cache/vla-pipeline/dvc-remote. Later: `dvc remote add --local -d -f vla-local <folder-or-url>`.
set -euo pipefail
cd "$(dirname "$0")/.."
DVC="${DVC:-.venv/bin/dvc}"
if [ -n "${VLA_DVC_REMOTE:-}" ] || ! "$DVC" remote default >/dev/null 2>&1; then
  REMOTE="$(realpath -m "${VLA_DVC_REMOTE:-$HOME/.cache/vla-pipeline/dvc-remote}")"
  case "$REMOTE/" in
    "$(pwd -P)"/*) echo "remote: $REMOTE lies inside the working tree; pick a folder outside it" >&2; exit 1 ;;
  esac
  mkdir -p "$REMOTE"
  "$DVC" remote add --local -d -f vla-local "$REMOTE" >/dev/null
fi
NAME="$("$DVC" remote default)"
echo "remote: dvc remote '$NAME' -> $("$DVC" remote list | awk -v r="$NAME" '$1 == r {print $2}')" >&2
