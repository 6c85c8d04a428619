#!/usr/bin/env bash
# Static checks of the deployment files (Dockerfile, .dockerignore, compose.yaml,
# deploy/nginx.conf, deploy/k8s/*.yaml) against what the chat binary accepts
# (`chat config --list`, `chat config --check`). The checks are scripts/check_deploy.py (its
# docstring lists them); this wrapper only makes sure PyYAML is there.
#
# Usage: scripts/check-deploy.sh [--self-test] [--chat-bin PATH]
#   --chat-bin PATH  the binary to ask (default: $CHAT_BIN, else `cargo build --bin chat`)
#   --self-test      also run scripts/check_deploy_test.py (mistakes in copies are caught)
# Exit 0: all passed; 1: a check failed; 2: cannot run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SELF_TEST=0
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --self-test) SELF_TEST=1 ;;
    --chat-bin) ARGS+=("$1" "${2:?--chat-bin needs a path}"); shift ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "check-deploy: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-python3}
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  echo "check-deploy: PyYAML missing, installing it" >&2
  "$PY" -m pip install --quiet pyyaml >&2 || {
    echo "check-deploy: cannot install PyYAML" >&2
    exit 2
  }
fi

"$PY" scripts/check_deploy.py "${ARGS[@]}"
if [ "$SELF_TEST" -eq 1 ]; then
  "$PY" scripts/check_deploy_test.py "${ARGS[@]}"
fi
