# Sourced by the demo and test scripts: create .venv on first use, install requirements
# (re-installs only when requirements*.txt or the torch build asked for changed), and activate it.
#
# Which torch build (optional; `bash scripts/demo.sh` and `bash scripts/test.sh` honour both):
#   SPECTRALGPT_TORCH=default   PyPI's torch (on Linux x86-64 the CUDA build: .venv ~6 GB, 3 GB of
#                               it nvidia/ libraries); what you get when nothing is set
#   SPECTRALGPT_TORCH=cpu       CPU-only build from https://download.pytorch.org/whl/cpu (~1 GB)
#   SPECTRALGPT_TORCH=cu126     a CUDA build (any cuXYZ PyTorch publishes: cu118, cu126, cu128,
#                               ...), likewise rocmX.Y and xpu: https://download.pytorch.org/whl/<it>
#   TORCH_INDEX_URL=URL         any other wheel index (a mirror); overrides SPECTRALGPT_TORCH
# Switching builds in an existing .venv replaces torch and torchvision (and, for a non-CUDA
# build, removes the nvidia-* and triton packages only the CUDA build uses).
#   SPECTRALGPT_VENV_DRY_RUN=1  print the commands instead of running them, then stop the calling
#                               script (nothing is created or installed)
PY=${PYTHON:-python3}
_sg_dry=${SPECTRALGPT_VENV_DRY_RUN:-0}
_sg_flavour=${SPECTRALGPT_TORCH:-default}
_sg_index=${TORCH_INDEX_URL:-}
if [ -z "$_sg_index" ]; then
    case "$_sg_flavour" in
        default | pypi) ;;
        cpu | cu[0-9][0-9] | cu[0-9][0-9][0-9] | rocm[0-9]* | xpu)
            _sg_index="https://download.pytorch.org/whl/$_sg_flavour" ;;
        *)
            echo "error: SPECTRALGPT_TORCH=$_sg_flavour: use cpu, a CUDA build such as cu126," \
                "rocmX.Y, xpu or default (PyPI's build), or set TORCH_INDEX_URL" >&2
            return 2 2>/dev/null || exit 2 ;;
    esac
fi

_sg_run() {  # run a command, or print it in a dry run
    if [ "$_sg_dry" = "1" ]; then echo "+ $*"; else "$@"; fi
}

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    _sg_run "$PY" -m venv .venv
fi
if [ "$_sg_dry" = "1" ]; then
    echo "+ source .venv/bin/activate"
else
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi
stamp=.venv/.requirements.sha
want=$( { cat requirements.txt requirements-dev.txt; echo "torch index: ${_sg_index:-pypi}"; } \
    | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing requirements into .venv (first run: a few minutes)"
    _sg_run python -m pip install -q --upgrade pip
    _sg_had=$(cat .venv/.torch-index 2>/dev/null || echo pypi)  # older .venvs: PyPI's
    if [ -x .venv/bin/python ] && [ "$_sg_had" != "${_sg_index:-pypi}" ] \
        && .venv/bin/python -m pip show -q torch >/dev/null 2>&1; then
        echo "[setup] replacing the installed torch build ($_sg_had) by the one from ${_sg_index:-PyPI}"
        _sg_run python -m pip uninstall -y -q torch torchvision
        case "$_sg_index" in
            */cpu | */rocm* | */xpu)
                _sg_cuda=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null \
                    | grep -E '^(nvidia-[^=]*|triton)==' | cut -d= -f1 | tr '\n' ' ')
                if [ -n "$_sg_cuda" ]; then
                    # shellcheck disable=SC2086
                    _sg_run python -m pip uninstall -y -q $_sg_cuda
                fi ;;
        esac
    fi
    if [ -n "$_sg_index" ]; then
        echo "[setup] torch and torchvision from $_sg_index"
        _sg_run python -m pip install -q torch torchvision --index-url "$_sg_index"
    fi
    _sg_run python -m pip install -q -r requirements-dev.txt
    if [ "$_sg_dry" != "1" ]; then
        echo "${_sg_index:-pypi}" > .venv/.torch-index
        echo "$want" > "$stamp"
    fi
fi
if [ "$_sg_dry" = "1" ]; then
    echo "[setup] dry run (SPECTRALGPT_VENV_DRY_RUN=1): nothing was created or installed"
    case $- in
        *i*) return 0 ;;  # sourced in an interactive shell: leave it open
        *) exit 0 ;;      # sourced by demo.sh / test.sh: stop them here
    esac
fi
