"""Targets and the Markdown table of the GPU suite (``benchmarks/gpu_suite.py`` writes them)."""

from __future__ import annotations

from typing import Any

TARGET_RATIO, TARGET_MFU = 3.0, 0.40  # issue 20's targets


# ----------------------------------------------------------------------------------------------
# targets and the Markdown table
# ----------------------------------------------------------------------------------------------
def targets(results: dict) -> list[dict]:
    """Ours >= 3x the paper's img/s at equal batch (ViT-B/8, 128 px); MFU >= 40 %."""
    sec = results["sections"]
    ok = lambda name: [r for r in sec.get(name, {}).get("rows", []) if r.get("status") == "ok"]  # noqa: E731
    dry = results["suite"]["dry_run"]
    ours = {}
    for r in ok("pretrain"):
        if r["label"] == "ViT-B/8 128 px":
            ours[r["batch_size"]] = max(ours.get(r["batch_size"], 0.0), r["img_per_s"])
    paper = {r["batch_size"]: r["img_per_s"] for r in ok("paper")}
    ratios = {b: ours[b] / paper[b] for b in sorted(set(ours) & set(paper))}

    def status(measured: bool, met: bool) -> str:
        if not measured:
            return "not measured"
        if dry:
            return "dry run (not a GPU figure)"
        return "met" if met else "not met"

    mfus = [r["mfu"] for r in ok("pretrain") if r.get("mfu") is not None]
    best = max(mfus, default=None)
    return [
        {"target": f"ours >= {TARGET_RATIO:g}x the paper's img/s at equal batch (ViT-B/8, 128 px)",
         "value": ", ".join(f"batch {b}: {v:.2f}x" for b, v in ratios.items()) or None,
         "status": status(bool(ratios), bool(ratios) and min(ratios.values()) >= TARGET_RATIO)},
        {"target": f"MFU >= {100 * TARGET_MFU:g} % (pretraining, best row)",
         "value": None if best is None else round(best, 4),
         "status": status(best is not None, best is not None and best >= TARGET_MFU)},
    ]  # fmt: skip


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-"
    if spec == "%":
        return f"{100 * v:.1f} %"
    return format(v, spec) if spec else str(v)


def _table(rows: list[dict], cols: list[tuple[str, str, str]], note: bool = True) -> list[str]:
    """Markdown table of ``rows``; ``cols`` = (header, key, format); with ``note`` a last column
    says why a row has no numbers (its status and reason)."""
    heads = [h for h, _, _ in cols] + (["note"] if note else [])
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [_fmt(r.get(k), f) for _, k, f in cols]
        if note:
            ok = r.get("status", "ok") == "ok"
            cells.append("" if ok else f"{r['status']}: {r.get('reason', '')}".rstrip(": "))
        out.append("| " + " | ".join(cells) + " |")
    return out


MD_SECTIONS = {
    "pretrain": ("Pretraining step (ours: autocast, fused AdamW, regional compile)", [
        ("model", "label", ""), ("factory", "model", ""), ("px", "input_size", ""),
        ("batch", "batch_size", ""), ("dtype", "dtype", ""), ("compile", "compile", ""),
        ("img/s", "img_per_s", ".1f"),
        ("ms/step", "step_time_ms", ".1f"), ("TFLOP/s", "tflops", ".1f"), ("MFU", "mfu", "%"),
        ("peak GiB", "peak_mem_gib", ".1f")]),
    "paper": ("The paper's pretraining step (its model, fp16 autocast + GradScaler, torch AdamW)", [
        ("model", "label", ""), ("batch", "batch_size", ""), ("dtype", "dtype", ""),
        ("img/s", "img_per_s", ".1f"), ("ms/step", "step_time_ms", ".1f"), ("MFU", "mfu", "%"),
        ("peak GiB", "peak_mem_gib", ".1f")]),
    "scale": ("Largest batch that fits (doubling from a start batch until out of memory)", [
        ("model", "label", ""), ("factory", "model", ""), ("px", "input_size", ""),
        ("dtype", "dtype", ""),
        ("activation checkpointing", "grad_checkpointing", ""),
        ("largest batch", "largest_batch", ""), ("capped by sweep_max", "capped", ""),
        ("img/s there", "img_per_s", ".1f"), ("peak GiB", "peak_mem_gib", ".1f")]),
    "dense": ("Dense train step", [
        ("variant", "variant", ""), ("dtype", "dtype", ""), ("batch", "batch_size", ""),
        ("img/s", "img_per_s", ".1f"), ("s/step", "step_s", ".3f"), ("peak MiB", "peak_mib", ".0f"),
        ("GFLOP/step", "gflop", ".0f")]),
    "scene": ("Whole-scene inference (predict.py code path, GeoTIFF in and out)", [
        ("model", "model", ""), ("dtype", "dtype", ""), ("tiles", "tiles", ""),
        ("tile px", "tile", ""), ("tiles/s", "tiles_per_s", ".1f"),
        ("km²/s", "km2_per_s", ".2f"), ("s", "seconds", ".1f")]),
    "finetune": ("Classification finetune (layer decay, fused AdamW)", [
        ("model", "model", ""), ("px", "input_size", ""), ("batch", "batch_size", ""),
        ("dtype", "dtype", ""), ("compile", "compile", ""),
        ("finetune img/s", "finetune_img_per_s", ".1f"),
        ("linear probe img/s", "linear_probe_img_per_s", ".1f")]),
}  # fmt: skip


def markdown(results: dict) -> str:
    s = results["suite"]
    lines = ["# GPU suite results", ""]
    if s["dry_run"]:
        lines += ["**Dry run on the CPU with the tiny models: these numbers are NOT GPU figures.**",
                  ""]  # fmt: skip
    lines += [f"Device: {s['device']} · torch {s['torch']} (CUDA {s['cuda']}) · {s['date']} · "
              f"{s['seconds']:.0f} s of a {s['budget_s']} s budget", "",
              f"Command: `{s['command']}`", "", "## Targets", "",
              *_table(results["targets"], [("target", "target", ""), ("value", "value", ""),
                                           ("status", "status", "")], note=False), ""]  # fmt: skip
    sec = results["sections"]
    if "tests" in sec:
        lines += ["## CUDA tests (`pytest -m cuda`)", ""]
        t = sec["tests"]
        if t.get("rows"):
            r = t["rows"][0]
            lines += [f"{r['collected']} collected: {r['passed']} passed, {r['failed']} failed, "
                      f"{r['skipped']} skipped.", ""]  # fmt: skip
            lines += [f"* failed: `{n}`" for n in r["failures"]]
            lines += [f"* skipped: {m}" for m in r["skip_reasons"]]
            if t["status"] != "ok":
                lines += ["", f"**{t['status']}**: {t.get('reason', '')}"]
        else:
            lines += [f"{t['status']}: {t.get('reason', '')}"]
        lines.append("")
    for name, (title, cols) in MD_SECTIONS.items():
        if name in sec:
            lines += [f"## {title}", ""]
            rows = sec[name].get("rows") or [{"status": sec[name]["status"],
                                              "reason": sec[name].get("reason", "")}]  # fmt: skip
            lines += [*_table(rows, cols), ""]
    lines += ["## Sections", "", *_table(
        [{"section": k, **{x: v[x] for x in ("seconds",)}, "status": v["status"],
          "reason": v.get("reason", "")} for k, v in sec.items()],
        [("section", "section", ""), ("seconds", "seconds", ".0f")])]  # fmt: skip
    return "\n".join(lines) + "\n"
