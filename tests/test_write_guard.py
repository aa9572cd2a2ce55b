"""GeoTIFF writes that fail, fail (issue 19 item 3): a disk that fills up during the data or
during the overviews (where rasterio only logs GDAL's error) raises one line naming the file and
removes the partial output; an output that is the input is refused.

The full disk is a file-size limit (``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored: writes past it
fail with EFBIG, as on a full file system), set in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from util.inference.write_guard import RasterWriteError, check_output_paths, guard_writes

REPO = Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    sys.path.insert(0, {repo!r})
    import numpy as np
    from rasterio.transform import Affine
    from util.inference.scene import GeoTiffWriter
    from util.inference.write_guard import guard_writes

    out, limit, guarded = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    rng = np.random.default_rng(0)
    data = (rng.random((1, 2048, 2048)) * 4).astype("uint8")  # ~1.2 MB compressed, 3 overviews
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    def write():
        w = GeoTiffWriter(out, "EPSG:32632", Affine(10, 0, 6e5, 0, -10, 5.2e6), 2048, 2048, 1,
                          "uint8", 255)
        try:
            for r in range(0, 2048, 256):
                w.write_rows(data[:, r : r + 256])
            w.close()  # base data, then overviews (r+)
        except BaseException:
            w.abort()
            raise

    result = {{}}
    try:
        if guarded:
            with guard_writes([out]):
                write()
        else:
            write()
        result["outcome"] = "ok"
    except Exception as e:
        result["outcome"] = type(e).__name__
        result["message"] = str(e)
    result["exists"] = os.path.exists(out)
    result["size"] = os.path.getsize(out) if os.path.exists(out) else 0
    print(json.dumps(result))
    """
).format(repo=str(REPO))


def _child(out: Path, limit: int, guarded: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(out), str(limit), "1" if guarded else "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def full_size(tmp_path_factory) -> int:
    res = _child(tmp_path_factory.mktemp("w") / "full.tif", 0, True)
    assert res["outcome"] == "ok"
    return res["size"]


def test_disk_full_during_overviews_is_silent_without_the_guard(tmp_path, full_size):
    """What the guard fixes: rasterio logs the failed overview write and carries on."""
    res = _child(tmp_path / "o.tif", full_size - 2000, guarded=False)
    assert res["outcome"] == "ok" and res["exists"] and res["size"] < full_size


@pytest.mark.parametrize("where", ["overviews", "data"])
def test_disk_full_raises_one_line_and_removes_the_partial_file(tmp_path, full_size, where):
    limit = full_size - 2000 if where == "overviews" else full_size // 3
    out = tmp_path / "classes.tif"
    res = _child(out, limit, guarded=True)
    assert res["outcome"] == "RasterWriteError", res
    msg = res["message"]
    assert "\n" not in msg and msg.startswith(f"cannot write {out}: ")
    assert "MB free there" in msg and "the partial output was removed" in msg
    assert not res["exists"] and not out.exists()


def test_guard_removes_outputs_on_any_error_and_passes_bugs(tmp_path):
    out, prob = tmp_path / "a.tif", tmp_path / "a_probabilities.tif"
    for p in (out, prob):
        p.write_bytes(b"partial")
    with pytest.raises(KeyError), guard_writes([out, prob, None]):
        raise KeyError("a bug keeps its type")
    assert not out.exists() and not prob.exists()
    out.write_bytes(b"partial")
    with pytest.raises(RasterWriteError, match=f"cannot write {out}: No space left on device"):
        with guard_writes([out]):
            raise OSError(28, "No space left on device")
    assert not out.exists()


def test_output_equal_to_input_refused(tmp_path):
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"x")
    alias = tmp_path / "sub" / ".." / "scene.tif"
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=r"^--output .*scene.tif is the input file"):
        check_output_paths({"--output": alias}, [scene])
    with pytest.raises(ValueError, match="--probabilities .* is also --output"):
        check_output_paths(
            {"--output": tmp_path / "o.tif", "--probabilities": tmp_path / "o.tif"}, [scene]
        )
    check_output_paths({"--output": tmp_path / "o.tif", "--probabilities": None}, [scene])
