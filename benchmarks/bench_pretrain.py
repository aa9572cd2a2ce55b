"""Pretraining throughput benchmark: the real training step on synthetic input, no data loading.

Runs ``engine_pretrain.train_one_epoch`` (masking noise, autocast, backward, fused AdamW, schedule)
on one resident random batch and prints images/s, time per step, peak memory (CUDA max allocated,
or the process's peak RSS on CPU) and MFU (FLOPs of one step counted with FlopCounterMode, peak
FLOP/s from the device name; n/a on CPU).

Examples::

    python benchmarks/bench_pretrain.py --model mae_vit_tiny_patch8_96 --input_size 32 --batch_size 16
    python benchmarks/bench_pretrain.py --model mae_vit_base_patch8_96 --batch_size 128 \
        --dtype bfloat16 --compile --device cuda

``--paper_repo PATH`` times the paper's own pretraining step instead, from a checkout of its
repository (nothing of it is shipped here: it is GPL-licensed): its model
(``models_mae_spectral.<--paper_model>()``, default ``mae_vit_base_patch8_<input_size>``, built
as its ``main_pretrain.py`` builds it, without arguments), and its step as its
``engine_pretrain.py`` runs it: fp16 autocast (on CUDA), ``GradScaler``, the total gradient norm
after unscaling, ``torch.optim.AdamW`` (betas 0.9, 0.95; no decay for biases and 1-d
parameters), ``zero_grad`` and ``torch.cuda.synchronize()`` every step. The model draws its own
masks. Example (the same GPU and batch as ours)::

    python benchmarks/bench_pretrain.py --paper_repo ../SpectralGPT --input_size 128 \
        --batch_size 128 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models_mae_spectral  # noqa: E402
from engine_pretrain import train_one_epoch  # noqa: E402
from util.training.args import DTYPES, resolve_dtype  # noqa: E402
from util.training.logger import measure_flops, peak_flops  # noqa: E402
from util.training.optim import OptimStep, create_adamw, pretrain_param_groups  # noqa: E402
from util.training.runtime import default_device, setup_backends  # noqa: E402


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mae_vit_base_patch8_96")
    p.add_argument("--input_size", type=int, default=None, help="default: the model's size")
    p.add_argument("--batch_size", type=int, default=32, help="per step")
    p.add_argument("--mask_ratio", type=float, default=0.90)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, autotune)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    p.add_argument("--paper_repo", default=None, help="time the paper's step (see above)")
    p.add_argument("--paper_model", default=None, help="default mae_vit_base_patch8_<input_size>")
    return p.parse_args(argv)


def load_paper_mae(repo: str | Path, name: str) -> torch.nn.Module:
    """``models_mae_spectral.<name>()`` from the root of a checkout of the paper's repository.

    Its modules import a top-level ``util`` package; ours is set aside while they load (and
    restored after), so both code bases live in this process.
    """
    root = Path(repo).expanduser().resolve()
    if not (root / "models_mae_spectral.py").is_file():
        raise SystemExit(
            f"--paper_repo {repo}: no models_mae_spectral.py there; give the root of a checkout "
            "of the paper's repository (IEEE_TPAMI_SpectralGPT)"
        )

    def clashes(mod: str) -> bool:
        return mod.split(".")[0] in ("util", "models_mae_spectral")

    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if clashes(k)]}
    saved_path = sys.path[:]
    # a regular package named util (ours) anywhere on the path would win over its util/
    sys.path[:] = [str(root)] + [
        p for p in sys.path if not (Path(p or ".") / "util" / "__init__.py").is_file()
    ]
    try:
        module = importlib.import_module("models_mae_spectral")
        if not hasattr(module, name):
            raise SystemExit(f"--paper_model {name}: the paper's models_mae_spectral has no {name}")
        with contextlib.redirect_stdout(io.StringIO()):  # it prints on construction
            return getattr(module, name)()
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if clashes(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


def run_paper(args: argparse.Namespace) -> dict:
    """Images/s, memory and MFU of the paper's own pretraining step (module docstring)."""
    device = torch.device(args.device or default_device())
    size = args.input_size or 128
    name = args.paper_model or f"mae_vit_base_patch8_{size}"
    model = load_paper_mae(args.paper_repo, name).to(device).train()
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32  # torch.cuda.amp.autocast(): CUDA only
    opt = torch.optim.AdamW(pretrain_param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.rand(args.batch_size, 12, size, size, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss, _, _ = model(x, mask_ratio=args.mask_ratio)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad.detach() for p in params if p.grad is not None]
        torch.norm(torch.stack([torch.norm(g, 2) for g in grads]), 2)  # its logged grad norm
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if cuda:
            torch.cuda.synchronize()

    def fwd_bwd() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            loss, _, _ = model(x, mask_ratio=args.mask_ratio)
        loss.backward()

    with contextlib.redirect_stdout(io.StringIO()):  # its forward may print shapes
        flops = measure_flops(fwd_bwd)
        opt.zero_grad()
        for _ in range(args.warmup):
            step()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        elapsed = time.perf_counter() - t0
    row = _row(args, device, dtype, size, elapsed, flops, peak_flops(device, dtype), False)
    return {"variant": "paper_code", "model": name, **row}


def _row(
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    size: int,
    elapsed: float,
    flops: float,
    peak: float | None,
    compiled: bool,
) -> dict:
    """The figures of a timed run of ``args.steps`` steps (both rows, ours and the paper's):
    speed, peak memory (CUDA: max allocated; CPU: the process's peak RSS), FLOPs and MFU."""
    step_time = elapsed / args.steps
    if device.type == "cuda":
        mem_gib, mem_kind = torch.cuda.max_memory_allocated() / 2**30, "max allocated"
    else:  # ru_maxrss is in KiB on Linux
        mem_gib, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS"
    achieved = flops / step_time
    return {
        "input_size": size,
        "batch_size": args.batch_size,
        "mask_ratio": args.mask_ratio,
        "dtype": str(dtype).replace("torch.", ""),
        "compile": compiled,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "img_per_s": args.batch_size / step_time,
        "step_time_ms": step_time * 1e3,
        "peak_mem_gib": mem_gib,
        "mem_kind": mem_kind,
        "gflop_per_step": flops / 1e9,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
    }


def run(args: argparse.Namespace) -> dict:
    if args.paper_repo:
        return run_paper(args)
    device = torch.device(args.device or default_device())
    dtype = resolve_dtype(args.dtype, device)
    setup_backends(device)
    kw = {"img_size": args.input_size} if args.input_size else {}
    model = models_mae_spectral.create_model(args.model, **kw).to(device)
    size = model.patch_embed.img_size[0]
    opt = create_adamw(pretrain_param_groups(model, 0.05), lr=1e-4)
    train_model = torch.compile(model) if args.compile else model
    step = OptimStep(train_model, opt, device_type=device.type, dtype=dtype)
    x = torch.rand(args.batch_size, 12, size, size, device=device)
    batch = {"image": x}

    noise = torch.rand(args.batch_size, model.num_patches, device=device)

    def fwd_bwd() -> None:
        with step.autocast():
            loss, _, _ = model(x, mask_ratio=args.mask_ratio, noise=noise)
        loss.backward()

    flops = measure_flops(fwd_bwd)
    model.zero_grad(set_to_none=True)
    peak = peak_flops(device, dtype)

    common = dict(device=device, mask_ratio=args.mask_ratio, print_freq=10**9)
    train_one_epoch(train_model, [batch] * args.warmup, step, epoch=0, **common)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    stats = train_one_epoch(
        train_model,
        [batch] * args.steps,
        step,
        epoch=1,
        flops_per_step=flops,
        peak_flops=peak,
        **common,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    row = _row(args, device, dtype, size, elapsed, flops, peak, args.compile)
    return {"model": args.model, **row, "final_loss": stats["loss"]}


def main(argv: list[str] | None = None) -> None:
    r = run(get_args(argv))
    if "--json" in (argv if argv is not None else sys.argv):
        print(json.dumps(r))
        return
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no known peak)"
    print(
        f"{r['model']} {r['input_size']}px batch {r['batch_size']} mask {r['mask_ratio']} "
        f"{r['dtype']} compile={r['compile']} on {r['device']} ({r['threads']} threads)\n"
        f"  {r['img_per_s']:.1f} img/s | {r['step_time_ms']:.1f} ms/step | "
        f"{r['peak_mem_gib']:.2f} GiB {r['mem_kind']} | {r['gflop_per_step']:.2f} GFLOP/step | "
        f"{r['achieved_tflops']:.3f} TFLOP/s | MFU {mfu}"
    )


if __name__ == "__main__":
    main()
