"""README's demo figures come from one run (issue 19 item 9): ``scripts/demo_summary.py`` reads
them back from a demo's outputs, and README quotes exactly that block, in that format.

:func:`check_block` is also used on the real demo's stdout (``tests/test_pretrain.py``'s short
variant)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import demo_summary  # noqa: E402

F = r"-?\d+(?:\.\d+)?"  # a number
MS = rf"{F} ± {F}"
#: every line the block may hold (full-line regexes), by kind
LINES = {
    "loss": rf"pretraining loss \(epoch first -> last\): {F} \(epoch \d+\) -> {F} \(epoch \d+\)",
    "mse": rf"reconstruction hidden-pixel MSE, model vs mean fill: "
    rf"epoch \d+ {F} vs {F}(?:, epoch \d+ {F} vs {F})*",
    "top1": rf"finetune top-1 \(--eval of the best checkpoint, synthetic EuroSAT\): {F} %",
    "knn": rf"kNN top-1, pretrained vs random init, {F} % labels: {MS} vs {MS}",
    "f1": rf"change detection test f1_change \(synthetic OSCD\): {F}",
    "wall": rf"wall time: \d+ s(?: \(load average {F}\))?",
}
REQUIRED = {"loss", "mse", "top1", "knn", "f1"}


def check_block(text: str) -> list[str]:
    """The block between ``BEGIN`` and ``END`` in ``text``: every line of a known kind, every
    required kind present, no ``n/a``; returns the lines."""
    lines = [ln.strip() for ln in text.splitlines()]
    assert demo_summary.BEGIN in lines and demo_summary.END in lines, text[-2000:]
    block = lines[lines.index(demo_summary.BEGIN) + 1 : lines.index(demo_summary.END)]
    kinds = []
    for line in block:
        kind = [k for k, pattern in LINES.items() if re.fullmatch(pattern, line)]
        assert kind, f"not in the demo summary's format: {line!r}"
        kinds += kind
    assert REQUIRED <= set(kinds), (REQUIRED - set(kinds), block)
    return block


def _fake_demo(out: Path) -> Path:
    """The outputs a demo run leaves, as the trainers write them (a real reconstruction PNG)."""
    from evaluation.reconstruction import save_reconstruction
    from models_mae_spectral import create_model

    pre = out / "pretrain"
    pre.mkdir(parents=True)
    epochs = [{"type": "epoch", "epoch": e, "loss": 8.0 / (e + 1)} for e in range(3)]
    (pre / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    model = create_model("mae_vit_tiny_patch8_96", img_size=16)
    save_reconstruction(pre / "reconstruction-2.png", model, torch.rand(12, 16, 16), 0.75)
    for name, rec in (("eval", {"type": "eval", "acc1": 63.25}),
                      ("oscd_run", {"type": "test", "f1_change": 60.34})):  # fmt: skip
        (out / name).mkdir()
        (out / name / "log.jsonl").write_text(
            json.dumps({"type": "epoch"}) + "\n" + json.dumps(rec)
        )
    rows = [
        {"init": i, "protocol": "knn", "fraction": f, "mean": m, "std": 1.25, "n": 3}
        for i, f, m in (("pretrained", 0.1, 54.4), ("random", 0.1, 41.2),
                        ("pretrained", 1.0, 75.0), ("random", 1.0, 64.3))
    ]  # fmt: skip
    (out / "label_efficiency").mkdir()
    (out / "label_efficiency" / "knn.json").write_text(json.dumps(rows))
    return out


def test_summary_reads_the_figures_back(tmp_path):
    out = _fake_demo(tmp_path / "demo")
    block = check_block(demo_summary.summary(out, seconds=137.2))
    assert (
        block[0] == "pretraining loss (epoch first -> last): 8.0000 (epoch 0) -> 2.6667 (epoch 2)"
    )
    mse = re.fullmatch(r".*: epoch 2 (\S+) vs (\S+)", block[1])
    assert mse and float(mse.group(1)) > 0 and float(mse.group(2)) > 0  # the PNG's own text
    assert block[2].endswith(": 63.2 %") or block[2].endswith(": 63.3 %")
    assert block[3].endswith("10 % labels: 54.4 ± 1.2 vs 41.2 ± 1.2")
    assert block[4].endswith("100 % labels: 75.0 ± 1.2 vs 64.3 ± 1.2")
    assert block[5].endswith(": 60.3")
    assert block[6].startswith("wall time: 137 s") and len(block) == 7
    # missing outputs say so instead of failing
    text = demo_summary.summary(tmp_path / "nothing")
    assert "pretraining loss (epoch first -> last): n/a" in text
    # as a script, from anywhere
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo_summary.py"), str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and check_block(proc.stdout), proc.stderr[-2000:]


def test_readme_quotes_the_block_in_its_format():
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- demo-figures:start -->", "<!-- demo-figures:end -->"
    assert readme.count(start) == 1 and readme.count(end) == 1
    quoted = readme[readme.index(start) : readme.index(end)]
    fence = quoted.split("```text\n", 1)[1].split("```", 1)[0]
    block = check_block(fence)
    assert "n/a" not in fence
    # the demo section's other figures come from the same block: README names no other
    # reconstruction error or demo accuracy
    rest = readme.replace(quoted, "")
    for line in block:
        value = line.split(": ", 1)[1]
        assert value not in rest, f"README repeats {value!r} outside the demo-figures block"
    for page in ("docs/pretraining.md", "docs/dense.md"):
        assert "README.md#demo" in (REPO / page).read_text(), page
