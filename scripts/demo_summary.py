"""The figures of one ``scripts/demo.sh`` run, read back from its outputs, as the block README quotes.

``bash scripts/demo.sh`` ends by running this on its output folder; README's "Demo" section
pastes the block between its ``demo-figures`` markers, so every figure README gives for the demo
comes from one run and is refreshed in one go. Lines (``n/a`` where an output is missing)::

    pretraining loss (epoch first -> last): 7.7123 (epoch 0) -> 0.6401 (epoch 19)
    reconstruction hidden-pixel MSE, model vs mean fill: epoch 4 0.0880 vs 0.0640, ...
    finetune top-1 (--eval of the best checkpoint, synthetic EuroSAT): 63.3 %
    kNN top-1, pretrained vs random init, 10 % labels: 54.4 ± 3.1 vs 41.2 ± 4.6
    kNN top-1, pretrained vs random init, 100 % labels: 75.0 ± 0.0 vs 64.3 ± 1.4
    change detection test f1_change (synthetic OSCD): 60.3
    wall time: 137 s (load average 1.2)

Sources: ``pretrain/log.jsonl`` (epoch records), ``pretrain/reconstruction-<epoch>.png`` (PNG text
``hidden_pixel_mse`` / ``mean_fill_mse``), ``eval/log.jsonl`` (``acc1``),
``label_efficiency/knn.json`` (mean ± std rows), ``oscd_run/log.jsonl`` (the ``test`` record).
Only the run's outputs are read: nothing heavier than PIL is imported, so the block costs the
demo well under a second.

Example::

    python scripts/demo_summary.py demo_output --seconds 137
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: first and last line of the block (README's copy sits between its ``demo-figures`` markers)
BEGIN = "[demo] figures (README quotes this block)"
END = "[demo] end of figures"


def _records(path: Path, kind: str) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("type") == kind:
            out.append(rec)
    return out


def _num(value: Any, fmt: str) -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "n/a"


def pretraining_loss(out: Path) -> str:
    epochs = _records(out / "pretrain" / "log.jsonl", "epoch")
    if not epochs:
        return "n/a"
    first, last = epochs[0], epochs[-1]
    return (
        f"{_num(first.get('loss'), '.4f')} (epoch {first['epoch']}) -> "
        f"{_num(last.get('loss'), '.4f')} (epoch {last['epoch']})"
    )


def reconstruction_errors(out: Path) -> str:
    from PIL import Image

    def epoch(p: Path) -> int:
        return int(re.sub(r"\D", "", p.stem) or -1)

    parts = []
    for png in sorted((out / "pretrain").glob("reconstruction-*.png"), key=epoch):
        with Image.open(png) as im:
            text = dict(getattr(im, "text", {}) or {})
        model, fill = text.get("hidden_pixel_mse"), text.get("mean_fill_mse")
        parts.append(f"epoch {epoch(png)} {_num(model, '.4f')} vs {_num(fill, '.4f')}")
    return ", ".join(parts) or "n/a"


def finetune_top1(out: Path) -> str:
    evals = _records(out / "eval" / "log.jsonl", "eval")
    return f"{_num(evals[-1].get('acc1'), '.1f')} %" if evals else "n/a"


def knn_rows(out: Path) -> Iterator[tuple[str, str]]:
    """``(fraction label, "pre ± s vs rand ± s")`` per label fraction of the kNN rows."""
    path = out / "label_efficiency" / "knn.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    cells = {(r["init"], float(r["fraction"])): r for r in rows if r.get("protocol") == "knn"}
    for fraction in sorted({f for _, f in cells}):
        text = []
        for init in ("pretrained", "random"):
            r = cells.get((init, fraction))
            text.append("n/a" if r is None else f"{r['mean']:.1f} ± {r['std']:.1f}")
        label = f"{100 * fraction:g} %" if fraction <= 1 else f"{fraction:g} %"
        yield label, " vs ".join(text)


def change_f1(out: Path) -> str:
    tests = _records(out / "oscd_run" / "log.jsonl", "test")
    return _num(tests[-1].get("f1_change"), ".1f") if tests else "n/a"


def summary(out: str | os.PathLike, seconds: float | None = None) -> str:
    """The block of figures of the demo run in ``out``, :data:`BEGIN` to :data:`END`."""
    out = Path(out)
    lines = [
        BEGIN,
        f"pretraining loss (epoch first -> last): {pretraining_loss(out)}",
        f"reconstruction hidden-pixel MSE, model vs mean fill: {reconstruction_errors(out)}",
        f"finetune top-1 (--eval of the best checkpoint, synthetic EuroSAT): {finetune_top1(out)}",
    ]
    lines += [
        f"kNN top-1, pretrained vs random init, {label} labels: {text}"
        for label, text in knn_rows(out)
    ]
    lines.append(f"change detection test f1_change (synthetic OSCD): {change_f1(out)}")
    if seconds is not None:
        load = f" (load average {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""
        lines.append(f"wall time: {seconds:.0f} s{load}")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        "demo_summary.py",
        description="Print the figures of a scripts/demo.sh run (README quotes them).",
    )
    parser.add_argument("out", help="the demo's output folder (DEMO_OUT, default demo_output)")
    parser.add_argument("--seconds", type=float, default=None, help="the run's wall time")
    args = parser.parse_args(argv)
    text = summary(args.out, args.seconds)
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
