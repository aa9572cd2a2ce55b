#!/usr/bin/env bash
# Create (or reuse) .venv, install the project's requirements, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec python -m pytest -q "$@"
