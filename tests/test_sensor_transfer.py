"""benchmarks/sensor_transfer.py: the --quick study end to end, and its summary / verdict."""

import json

import pytest

from benchmarks import sensor_transfer as st


def test_summary_verdict_uses_the_seed_spread():
    per_seed = {
        "sentinel2": {c: [80.0, 82.0, 84.0] for c in st.COLUMNS},
        "landsat8": {"zeros": [40.0, 42.0, 44.0], "nearest": [60.0] * 3,
                     "adapter": [70.0, 72.0, 74.0], "pretrained": [50.0] * 3, "random": [30.0] * 3},
        "rgbn": {"zeros": [40.0, 50.0, 60.0], "nearest": [50.0] * 3,
                 "adapter": [45.0, 52.0, 59.0], "pretrained": [50.0] * 3, "random": [30.0] * 3},
    }  # fmt: skip
    rows = {r["sensor"]: r for r in st.summarise(per_seed)}
    assert rows["landsat8"]["adapter_beats_zeros"] and rows["landsat8"]["adapter_minus_zeros"] == 30
    assert not rows["rgbn"]["adapter_beats_zeros"]  # +2 against a spread of 10
    assert "adapter_beats_zeros" not in rows["sentinel2"]
    assert rows["rgbn"]["groups"] == [0, 1, 2] and rows["landsat8"]["groups"] == [0, 1, 2, 3]
    assert rows["landsat8"]["adapter"] == {"mean": 72.0, "std": 2.0, "n": 3}


@pytest.mark.slow
def test_quick_runs_and_writes_the_table(tmp_path):
    out = tmp_path / "transfer.json"
    res = st.cli(["--quick", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    rows = json.loads(out.read_text())
    assert [r["sensor"] for r in rows] == list(st.SENSORS)
    for r in rows:
        for c in st.COLUMNS:
            assert r[c]["n"] == 2 and 0.0 <= r[c]["mean"] <= 100.0 and r[c]["std"] >= 0.0
        assert ("adapter_beats_zeros" in r) == (r["sensor"] != "sentinel2")
    # on the 12 bands every slot map is the identity
    s2 = rows[0]
    assert s2["zeros"] == s2["nearest"] == s2["adapter"]
    by = {r["sensor"]: r for r in rows}
    assert by["rgbn"]["groups"] == by["s2_10m"]["groups"] == [0, 1, 2]
    lines = res["table"].splitlines()
    assert lines[0].startswith("| sensor (bands) | groups | zeros | nearest | adapter |")
    assert len([x for x in lines if x.startswith("| ") and "---" not in x]) == 1 + len(st.SENSORS)
    assert res["plot"].is_file() and res["plot"].stat().st_size > 0
    details = json.loads(out.with_name("transfer.details.json").read_text())
    assert len(details["per_seed"]["landsat8"]["adapter"]) == 2


def test_bad_flags_are_named(tmp_path):
    with pytest.raises(ValueError, match="--fraction"):
        st.main(st.get_args_parser().parse_args(["--fraction", "0", "--workdir", str(tmp_path)]))
    with pytest.raises(FileNotFoundError, match="--pretrained"):
        st.main(st.get_args_parser().parse_args(["--pretrained", str(tmp_path / "x.pth")]))
