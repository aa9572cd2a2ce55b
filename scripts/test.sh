#!/usr/bin/env bash
# Create (or reuse) .venv, install the project's requirements, run the test suite.
#
# The tests run in parallel processes (pytest-xdist), one per CPU up to 8; each test process uses
# one intra-op thread (tests/conftest.py). Knob: SPECTRALGPT_TEST_WORKERS=N (0: one process, as
# plain `python -m pytest`). Extra arguments go to pytest (`bash scripts/test.sh -k resume`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
cpus=$(python -c "import os; print(len(os.sched_getaffinity(0)))")
workers=${SPECTRALGPT_TEST_WORKERS:-$(( cpus < 8 ? cpus : 8 ))}
exec python -m pytest -q -n "$workers" --dist worksteal "$@"
