# Sourced by the demo and test scripts: create .venv on first use, install requirements
# (re-installs only when requirements*.txt changed), and activate it.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.requirements.sha
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing requirements into .venv (first run: a few minutes)"
    python -m pip install -q --upgrade pip
    python -m pip install -q -r requirements-dev.txt
    echo "$want" > "$stamp"
fi
