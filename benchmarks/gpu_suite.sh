#!/usr/bin/env bash
# One command for a GPU node: the CUDA tests and every GPU figure the README quotes, written to
# OUT/results.json and OUT/results.md (see benchmarks/gpu_suite.py and docs/gpu.md).
#
#   bash benchmarks/gpu_suite.sh --out gpu_results [--paper_repo ../SpectralGPT] [--budget_s 480]
#   bash benchmarks/gpu_suite.sh --dry-run --out /tmp/dry    # the same plan on CPU, tiny models
#
# PYTHON (default python3) is the interpreter that holds torch. Packages the GPU machine lacks
# (rasterio and its small dependencies) can be carried as wheels in .whl/: they are installed
# from there, offline, before the run (docs/gpu.md says how to download them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ! "$PY" -c "import rasterio" 2>/dev/null; then
    echo "[gpu_suite] installing rasterio from the wheels in .whl/"
    "$PY" -m pip install -q --no-index --find-links .whl rasterio \
        || echo "[gpu_suite] rasterio could not be installed from .whl/: the whole-scene section" \
                "and the CUDA tests that need GeoTIFFs will be skipped"
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_suite.py "$@"
