"""User errors under torchrun: every rank exits 2, the line is printed once, torchrun's summary
carries the same line (issue 19 item 7)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from util.training.cli import record_for_torchrun

REPO = Path(__file__).resolve().parents[1]


def test_error_file_is_written_only_under_torchrun(tmp_path, monkeypatch):
    import json

    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    record_for_torchrun("error: x")  # no file, no exception
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    record_for_torchrun("error: bad flag")
    data = json.loads(path.read_text())
    assert data["message"]["message"] == "error: bad flag"
    assert data["message"]["extraInfo"]["py_callstack"] == "error: bad flag"
    assert int(data["message"]["extraInfo"]["timestamp"]) > 0


@pytest.mark.slow
def test_user_error_under_torchrun_exits_2_on_every_rank(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "main_pretrain.py"), "--mask_ratio", "1.5", "--train_path", str(tmp_path),
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    line = "error: --mask_ratio must be in [0, 1)"
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # at most once as its own line (rank 0; torchrun may SIGTERM it first when rank 1 exits sooner) ...
    assert sum(ln.startswith(line) for ln in out.splitlines()) <= 1, out[-3000:]
    # ... every rank exited 2 unless torchrun stopped it, and the summary's root cause is the line
    codes = [ln.split(":")[1].split()[0] for ln in out.splitlines() if "exitcode  :" in ln]
    assert len(codes) == 2 and "2" in codes and set(codes) <= {"2", "-15"}, out[-3000:]
    root = out.split("Root Cause")[-1]
    assert f"traceback : {line}" in root and "To enable traceback" not in out
