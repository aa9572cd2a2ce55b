"""GPU suite: the CUDA tests and every GPU figure the README quotes, in one command, one JSON file
and one Markdown table.

Run it through ``bash benchmarks/gpu_suite.sh`` (it installs carried wheels first, see
``docs/gpu.md``)::

    bash benchmarks/gpu_suite.sh --out gpu_results                     # one GPU, ~8 min budget
    bash benchmarks/gpu_suite.sh --out gpu_results --paper_repo ../SpectralGPT
    bash benchmarks/gpu_suite.sh --dry-run --out /tmp/dry              # CPU, tiny models (CI)

Sections, in this order (``--sections`` picks some), each reusing an existing benchmark:

* ``tests``    - ``pytest -m cuda tests/test_cuda.py`` (pass/fail/skip counts, failures named);
* ``pretrain`` - img/s and MFU of our pretraining step (``bench_scale.run_config``: the training
  step of ``main_pretrain`` with its regional compile) for ViT-B/8 at 96 and 128 px, bf16, eager
  and compiled, batch 64 / 128 / 256;
* ``paper``    - the paper's own pretraining step (``bench_pretrain --paper_repo``: its model,
  fp16 autocast + GradScaler, torch AdamW) at 128 px and the same batches (needs
  ``--paper_repo``);
* ``scale``    - the largest batch that fits for ViT-B/L/H at 128 px with and without activation
  checkpointing (``bench_scale.sweep``: doubling until out of memory);
* ``dense``    - train step of the default dense models (``bench_dense``; with ``--paper_repo``
  also the paper's OSCD model, float32);
* ``scene``    - whole-scene inference through ``predict.py``'s code in km^2/s
  (``bench_predict``; needs rasterio);
* ``finetune`` - classification finetune and linear-probe img/s (``bench_finetune``), eager and
  compiled.

Results: ``OUT/results.json`` (every row, per section status and time, the targets) and
``OUT/results.md`` (the tables), rewritten after each section, so a run cut short keeps what it
measured; the sections' output goes to ``OUT/suite.log``. Targets: ours >= 3x the paper's img/s
at equal batch (ViT-B/8, 128 px) and MFU >= 40 %.

On a GPU each section runs in its own process, with a time limit (``--budget_s`` for the whole
suite, each section at most its share, see ``CAP_S``). ``--dry-run`` runs the same plan on the
CPU with the tiny models, in this process (compiled rows are listed as skipped: inductor's CPU
compile alone would take minutes); it checks the plumbing, its numbers are no GPU figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]
from gpu_suite_report import markdown, targets  # noqa: E402

SECTIONS = ("tests", "pretrain", "paper", "scale", "dense", "scene", "finetune")
#: the most seconds each section may take on a GPU (the whole suite: --budget_s)
CAP_S = {"tests": 200, "pretrain": 150, "paper": 60, "scale": 150, "dense": 60, "scene": 60,
         "finetune": 60}  # fmt: skip
WHEELS_HINT = (
    "rasterio is not installed: carry its wheels in .whl/ (pip download, see docs/gpu.md) and "
    "run through benchmarks/gpu_suite.sh"
)


# ----------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------
def make_plan(dry: bool, paper_repo: str | None) -> dict[str, dict[str, Any]]:
    """What each section runs: the GPU plan, or the same plan on CPU with the tiny models."""

    def pick(cpu: Any, gpu: Any) -> Any:  # the dry run's value, or the GPU run's
        return cpu if dry else gpu

    device = pick("cpu", "cuda")
    vit_b = [("ViT-B/8 96 px", "mae_vit_base_patch8_96", 96),
             ("ViT-B/8 128 px", "mae_vit_base_patch8_128", 128)]  # fmt: skip
    sizes = [("ViT-B", "mae_vit_base_patch8_128", 128), ("ViT-L", "mae_vit_large_patch8_128", 64),
             ("ViT-H", "mae_vit_huge_patch8_128", 32)]  # fmt: skip
    if dry:  # the same rows: tiny model, small images and batches
        vit_b = [(label, "mae_vit_tiny_patch8_96", px) for (label, *_), px in zip(vit_b, (16, 32))]
        sizes = [(label, "mae_vit_tiny_patch8_96", 2) for label, *_ in sizes]
    paper_oscd = bool(paper_repo) and (
        Path(paper_repo, "downstream_tasks", "OSCD", "model", "models_vit_tensor_CD.py").is_file()
    )
    # the default dense models are ViT-B; the paper's OSCD code runs in float32 only: ours too
    size = pick("tiny", "base")
    variants = "segmenter change_detector" + (" paper_code" if paper_oscd else "")
    dtypes = pick("float32", "bfloat16" + (" float32" if paper_oscd else ""))
    dense = shlex.split(
        f"--size {size} --input_size {pick(32, 128)} --batch_size {pick(2, 32)} "
        f"--steps {pick(1, 5)} --warmup {pick(1, 2)} --rounds 1 --device {device} "
        f"--dtypes {dtypes} --variants {variants}"
    ) + (["--paper_repo", paper_repo] if paper_oscd else [])
    scene = shlex.split(
        f"--device {device} --models segmenter_vit_{size}_patch8_128 "
        f"change_detector_vit_{size}_patch8_128 --dtypes {pick('float32', 'bfloat16')} "
        f"--size {pick(128, 2048)} --rounds 1 --batch_size {pick(4, 64)} --threads {pick(1, 8)}"
    )
    finetune = shlex.split(
        f"--model {pick('vit_tiny_patch8_96', 'vit_base_patch8_128')} --input_size {pick(32, 128)} "
        f"--batch_size {pick(4, 128)} --steps {pick(1, 10)} --warmup {pick(1, 3)} "
        f"--device {device} --dtype {pick('float32', 'bfloat16')} "
        f"--eval_samples {pick(2000, 118065)}"
    )
    return {
        "tests": {"argv": ["-m", "cuda", "tests/test_cuda.py"]},
        "pretrain": {"configs": vit_b, "batches": pick([2, 4, 8], [64, 128, 256]),
                     "compile": [False, True], "dtype": pick("float32", "bfloat16"),
                     "steps": pick(1, 10), "warmup": pick(1, 3), "device": device},
        "paper": {"input_size": 128, "batches": pick([2, 4, 8], [64, 128, 256]),
                  "steps": pick(1, 5), "warmup": pick(1, 2), "device": device},
        "scale": {"sizes": sizes, "input_size": pick(16, 128), "sweep_max": pick(4, 4096),
                  "dtype": pick("float32", "bfloat16"), "steps": 1, "warmup": 1, "device": device},
        "dense": {"argv": dense},
        "scene": {"argv": scene},
        "finetune": {"argv": finetune, "compile": [False, True]},
    }  # fmt: skip


def _skipped_compile(dry: bool, compile: bool) -> str | None:
    if dry and compile:
        return "dry run: inductor's CPU compile alone would exceed the time budget"
    return None


# ----------------------------------------------------------------------------------------------
# sections: each returns its rows (loops append them to ctx["rows"] as they come, so a section
# stopped at its time limit keeps them); a row whose status is not "ok" says why it has no numbers
# ----------------------------------------------------------------------------------------------
def _oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)


def _allow_recompiles() -> None:
    """Regional compile caches one graph per block shape and batch size; the rows of one section
    need more entries than dynamo's default limit (8), past which it would run them eagerly."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.accumulated_cache_size_limit = max(
        torch._dynamo.config.accumulated_cache_size_limit, 512
    )


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _scale_args(model: str, input_size: int, cfg: dict, dry: bool, **extra: Any) -> Any:
    import bench_scale

    args = bench_scale.get_args(
        ["--model", model, "--input_size", str(input_size), "--dtype", cfg["dtype"],
         "--steps", str(cfg["steps"]), "--warmup", str(cfg["warmup"])]
    )  # fmt: skip
    args.device = torch.device(cfg["device"])
    args.distributed, args.world_size = False, 1
    args.probe_size = 128 if dry else args.probe_size  # CPU GEMM probe for the MFU column
    for k, v in extra.items():
        setattr(args, k, v)
    return args


def section_tests(cfg: dict, ctx: dict) -> list[dict]:
    """``pytest -v`` on the CUDA tests, stopped (and what finished counted) before the section's
    own time limit; outcomes from its per-test lines, skip reasons from its ``-rs`` summary."""
    log = Path(ctx["out"]) / "tests.log"
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-rs", *cfg["argv"]]
    timeout = None if ctx["timeout"] is None else max(ctx["timeout"] - 15, 5)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # pytest and the torchrun it may have started
            proc.wait()
            code = None
    text = log.read_text()
    log.unlink()
    print(text[-8000:])
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures, reasons = [], set()
    for m in re.finditer(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", text, re.M):
        outcome = {"ERROR": "failed", "XFAIL": "passed", "XPASS": "failed"}.get(m[2], m[2].lower())
        counts[outcome] += 1
        if outcome == "failed":
            failures.append(m[1])
    reasons = sorted(set(re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", text, re.M)))
    ctx["rows"].append({"collected": sum(counts.values()), **counts, "failures": failures,
                        "skip_reasons": reasons, "exit_code": code})  # fmt: skip
    if code is None or code not in (0, 1, 5):  # 1: some failed; 5: none collected
        how = "stopped at the section's time limit" if code is None else f"exited {code}"
        raise RuntimeError(f"pytest {how} after {sum(counts.values())} tests")
    return ctx["rows"]


def section_pretrain(cfg: dict, ctx: dict) -> list[dict]:
    import bench_scale

    rows = ctx["rows"]
    torch.set_default_device(cfg["device"])  # models initialised on the GPU: seconds, not minutes
    _allow_recompiles()
    for label, model, px in cfg["configs"]:
        for compile in cfg["compile"]:
            for batch in cfg["batches"]:
                base = {"label": label, "model": model, "input_size": px, "batch_size": batch,
                        "compile": compile, "dtype": cfg["dtype"]}  # fmt: skip
                reason = _skipped_compile(ctx["dry"], compile)
                if reason:
                    rows.append({**base, "status": "skipped", "reason": reason})
                    continue
                args = _scale_args(model, px, cfg, ctx["dry"], compile=compile)
                try:
                    r = bench_scale.run_config(args, batch, False)
                    rows.append({**base, **_pick(r, "img_per_s", "step_time_ms", "mfu", "tflops",
                                                 "peak_mem_gib", "device"), "status": "ok"})  # fmt: skip
                except Exception as e:  # noqa: BLE001 - an OOM row, or the error, and go on
                    rows.append(
                        {**base, "status": "oom" if _oom(e) else "error", "reason": str(e)[:300]}
                    )
                _free()
                print(f"[pretrain] {rows[-1]}", flush=True)
    return rows


def section_paper(cfg: dict, ctx: dict) -> list[dict]:
    import bench_pretrain

    if not ctx["paper_repo"]:
        return [{"status": "skipped", "reason": "no --paper_repo given"}]
    rows = ctx["rows"]
    for batch in cfg["batches"]:
        argv = ["--paper_repo", ctx["paper_repo"], "--input_size", str(cfg["input_size"]),
                "--batch_size", str(batch), "--steps", str(cfg["steps"]),
                "--warmup", str(cfg["warmup"]), "--device", cfg["device"]]  # fmt: skip
        base = {"label": f"paper ViT-B/8 {cfg['input_size']} px", "batch_size": batch}
        try:
            r = bench_pretrain.run(bench_pretrain.get_args(argv))
            rows.append({**base, **_pick(r, "model", "input_size", "dtype", "img_per_s",
                                         "step_time_ms", "mfu", "peak_mem_gib", "device"),
                         "status": "ok"})  # fmt: skip
        except Exception as e:  # noqa: BLE001
            rows.append({**base, "status": "oom" if _oom(e) else "error", "reason": str(e)[:300]})
        _free()
        print(f"[paper] {rows[-1]}", flush=True)
    return rows


def section_scale(cfg: dict, ctx: dict) -> list[dict]:
    import bench_scale

    rows = ctx["rows"]
    torch.set_default_device(cfg["device"])  # ViT-H's 0.6 B parameters: initialised on the GPU
    for label, model, start in cfg["sizes"]:
        for ckpt in (False, True):
            base = {"label": label, "model": model, "input_size": cfg["input_size"],
                    "grad_checkpointing": ckpt, "dtype": cfg["dtype"]}  # fmt: skip
            args = _scale_args(model, cfg["input_size"], cfg, ctx["dry"], batch_size=[start],
                               sweep_max=cfg["sweep_max"])  # fmt: skip
            try:
                r = bench_scale.sweep(args, ckpt)
                largest = r["largest_batch"]
                rows.append({**base, "largest_batch": largest,
                             "capped": largest * 2 > cfg["sweep_max"],
                             **_pick(r, "img_per_s", "peak_mem_gib", "mfu"), "status": "ok"})  # fmt: skip
            except Exception as e:  # noqa: BLE001
                rows.append({**base, "status": "error", "reason": str(e)[:300]})
            _free()
            print(f"[scale] {rows[-1]}", flush=True)
    return rows


def section_dense(cfg: dict, ctx: dict) -> list[dict]:
    import bench_dense

    rows = bench_dense.cli(cfg["argv"])
    batch = int(cfg["argv"][cfg["argv"].index("--batch_size") + 1])
    return [{**_pick(r, "variant", "dtype", "img_per_s", "step_s", "peak_mib", "gflop"),
             "batch_size": batch, "status": "ok"} for r in rows]  # fmt: skip


def section_scene(cfg: dict, ctx: dict) -> list[dict]:
    if importlib.util.find_spec("rasterio") is None:
        return [{"status": "skipped", "reason": WHEELS_HINT}]
    import bench_predict

    with tempfile.TemporaryDirectory(prefix="gpu_suite_scene_") as work:  # the scene: not in OUT
        rows = bench_predict.main([*cfg["argv"], "--workdir", work])
    return [{**_pick(r, "model", "dtype", "device", "tiles", "tile", "tiles_per_s", "km2_per_s",
                     "seconds"), "status": "ok"} for r in rows]  # fmt: skip


def section_finetune(cfg: dict, ctx: dict) -> list[dict]:
    import bench_finetune

    rows = ctx["rows"]
    _allow_recompiles()
    for compile in cfg["compile"]:
        reason = _skipped_compile(ctx["dry"], compile)
        if reason:
            rows.append({"compile": compile, "status": "skipped", "reason": reason})
            continue
        r = bench_finetune.main(cfg["argv"] + (["--compile"] if compile else []))
        rows.append({**r, "status": "ok"})
        _free()
    return rows


def _pick(row: dict, *keys: str) -> dict:
    return {k: row.get(k) for k in keys}


# ----------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------
def _environment(args: argparse.Namespace, argv: list[str]) -> dict:
    cuda = torch.cuda.is_available() and not args.dry_run
    return {
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()})",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "bash benchmarks/gpu_suite.sh " + shlex.join(argv),
        "budget_s": args.budget_s,
        "seconds": 0.0,
    }


class _Rows(list):
    """A section's rows; with ``path``, rewritten there after each one (kept if it times out)."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.path = path

    def append(self, row: dict) -> None:
        super().append(row)
        if self.path is not None:
            self.path.write_text(json.dumps({"status": "running", "rows": self}, default=str))


def _run_in_process(
    name: str, cfg: dict, ctx: dict, log: Path | None, part: Path | None = None
) -> dict:
    """Run section ``name``: its output goes to ``log`` (``None``: to stdout, which a child's
    parent sends to the log), its rows also to ``part`` as they come."""
    buf = io.StringIO() if log is not None else None
    t0 = time.perf_counter()
    ctx = {**ctx, "rows": _Rows(part)}
    try:
        with contextlib.redirect_stdout(buf) if buf is not None else contextlib.nullcontext():
            rows = globals()[f"section_{name}"](cfg, ctx)
        res = {"status": "ok", "rows": list(rows)}
    except BaseException as e:  # noqa: BLE001 - SystemExit of a benchmark too: report, go on
        if isinstance(e, KeyboardInterrupt):
            raise
        trace = traceback.format_exc()
        buf.write(trace) if buf is not None else print(trace, flush=True)
        res = {"status": "error", "reason": f"{type(e).__name__}: {str(e)[:300]}",
               "rows": list(ctx["rows"])}  # fmt: skip
    if buf is not None:
        with open(log, "a") as f:
            f.write(f"===== {name} =====\n{buf.getvalue()}\n")
    return {**res, "seconds": time.perf_counter() - t0}


def _run_isolated(name: str, argv: list[str], ctx: dict, timeout: float, log: Path) -> dict:
    """The section in a child process (own process group, killed whole at ``timeout``)."""
    part = Path(ctx["out"]) / f".{name}.json"
    part.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, *argv, "--_section", name, "--_timeout", str(timeout)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"===== {name} =====\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=timeout)
            res = None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the section and whatever it started
            proc.wait()
            res = {"status": "timeout", "reason": f"stopped after {timeout:.0f} s"}
    done = json.loads(part.read_text()) if part.is_file() else {"rows": []}
    part.unlink(missing_ok=True)
    if res is None and (proc.returncode != 0 or done.get("status") == "running"):
        res = {"status": "error", "reason": f"exit code {proc.returncode}, see suite.log"}
    res = {**done, **(res or {}), "rows": done.get("rows", [])}  # the rows it had finished
    return {**res, "seconds": time.perf_counter() - t0}


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="output_gpu_suite", help="folder of results.json/.md")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="CPU, tiny models, same plan (CI)")  # fmt: skip
    p.add_argument("--paper_repo", default=None, help="checkout of the paper's repository")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--budget_s", type=float, default=480, help="time limit of the whole suite")
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each section in its own process, stopped at its time limit (default: on a GPU "
        "yes, in a dry run no)",
    )
    p.add_argument("--_section", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_timeout", type=float, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args(argv)
    if args.paper_repo:
        args.paper_repo = str(Path(args.paper_repo).expanduser().resolve())
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.dry_run, args.paper_repo)
    ctx = {"dry": args.dry_run, "paper_repo": args.paper_repo, "out": str(out),
           "timeout": args._timeout}  # fmt: skip
    if args._section:  # child process of an isolated section: run it, write its rows
        part = out / f".{args._section}.json"
        res = _run_in_process(args._section, plan[args._section], ctx, None, part)
        part.write_text(json.dumps(res, default=str))
        return res
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: no CUDA device here; use --dry-run to check the plan on CPU")
    log = out / "suite.log"
    log.write_text("")
    results = {"suite": _environment(args, argv), "sections": {}, "targets": []}
    t0 = time.perf_counter()
    child_argv = argv + ["--out", str(out)]  # resolved: the children run in the repository
    if args.paper_repo:
        child_argv += ["--paper_repo", args.paper_repo]
    for name in args.sections:
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 10:
            res = {"status": "skipped", "reason": "time budget spent", "rows": [], "seconds": 0.0}
        elif not (args.isolate if args.isolate is not None else not args.dry_run):
            res = _run_in_process(name, plan[name], {**ctx, "timeout": left}, log)
        else:
            res = _run_isolated(name, child_argv, ctx, min(CAP_S[name], left), log)
        results["sections"][name] = res
        results["suite"]["seconds"] = time.perf_counter() - t0
        results["targets"] = targets(results)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (out / "results.md").write_text(markdown(results))
        print(f"[gpu_suite] {name}: {res['status']} in {res['seconds']:.0f} s "
              f"({len(res['rows'])} rows) {res.get('reason', '')}", flush=True)  # fmt: skip
    print(f"[gpu_suite] done in {results['suite']['seconds']:.0f} s: {out / 'results.md'}")
    for t in results["targets"]:
        print(f"[gpu_suite] target: {t['target']}: {t['status']} ({t['value']})")
    return results


if __name__ == "__main__":
    main()
