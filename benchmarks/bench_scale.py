"""Scaling benchmark: img/s, step time, peak memory, TFLOP/s and MFU per configuration, a largest-
batch sweep on GPU, and a memory model of parameters, gradients, AdamW state and activations.

Each configuration (model, input size, mask ratio, batch, dtype, strategy, activation
checkpointing, compile) runs the real training step (``engine_pretrain.train_one_epoch`` through
``util.training.runtime.wrap_model`` and ``util.training.optim.OptimStep``) on one resident random batch and prints one
JSON line (``"kind": "run"``). FLOPs are the model's (forward + backward, counted with
FlopCounterMode on a batch of 1 and scaled; activation recomputation is not counted, as usual for
MFU). The peak is the device's dense peak from ``util.training.logger.peak_flops`` on GPU, and on CPU a
peak measured here with a GEMM probe (``--probe_size``) at the same dtype and thread count.
Peak memory is CUDA max allocated, or on CPU the peak RSS of a child process per configuration.

``--memory_model`` prints, per size (``--mm_sizes``) and strategy, the per-GPU bytes of parameters,
gradients, AdamW state, communication buffers and activations (``"kind": "memory_model"``) for
``--mm_world`` GPUs at ``--mm_batch`` images per GPU. Parameter counts come from the models,
activations from the tensors autograd saves for backward in one real forward (counted with
``saved_tensors_hooks``). On CPU every run row also carries ``predicted_gib`` (the same model for
that run + the process's memory before the model is built), to check the model against the
measured peak.

Examples::

    # CPU: tiny and base, with and without activation checkpointing, + the memory model
    python benchmarks/bench_scale.py --model mae_vit_tiny_patch8_96 --input_size 32 --batch_size 16
    python benchmarks/bench_scale.py --model mae_vit_base_patch8_128 --batch_size 4 \\
        --grad_checkpointing off on --memory_model

    # GPU: 8 GPUs, FSDP vs DDP, bf16, with/without checkpointing; largest batch that fits
    torchrun --nproc_per_node 8 benchmarks/bench_scale.py --model mae_vit_large_patch8_128 \\
        --strategy fsdp --dtype bfloat16 --batch_size 64 --grad_checkpointing off on --sweep
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models_mae_spectral  # noqa: E402
from engine_pretrain import train_one_epoch  # noqa: E402
from util.training.args import DTYPES, resolve_dtype  # noqa: E402
from util.training.logger import measure_flops, peak_flops  # noqa: E402
from util.training.optim import OptimStep, autocast, create_adamw, pretrain_param_groups  # noqa: E402
from util.training.runtime import (  # noqa: E402
    cleanup_distributed,
    default_device,
    init_distributed,
    is_main_process,
    setup_backends,
    transformer_blocks,
    wrap_model,
)

GIB = 2**30


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="mae_vit_base_patch8_128", help="pretraining model name")
    p.add_argument("--input_size", type=int, default=None, help="default: the model's size")
    p.add_argument("--mask_ratio", type=float, default=0.90)
    p.add_argument(
        "--batch_size", type=int, nargs="*", default=[8], help="per process (none: no runs)"
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA")
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="used under torchrun")
    p.add_argument("--no_reshard_after_forward", dest="reshard_after_forward", action="store_false")
    p.add_argument(
        "--grad_checkpointing", nargs="+", choices=("off", "on"), default=["off"],
        help="settings to run (e.g. 'off on')",
    )  # fmt: skip
    p.add_argument("--compile", action="store_true", help="regional torch.compile")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument(
        "--sweep", action="store_true",
        help="GPU: double the batch from --batch_size until out of memory; report the largest fit",
    )  # fmt: skip
    p.add_argument("--sweep_max", type=int, default=4096)
    p.add_argument("--probe_size", type=int, default=2048, help="CPU GEMM probe matrix side")
    p.add_argument("--memory_model", action="store_true", help="print the memory model rows")
    p.add_argument("--mm_sizes", nargs="+", default=["base", "large", "huge"])
    p.add_argument("--mm_input_size", type=int, default=128, help="image side of the memory model")
    p.add_argument("--mm_world", type=int, default=8, help="GPUs of the memory model")
    p.add_argument("--mm_batch", type=int, default=64, help="images per GPU of the memory model")
    p.add_argument("--mm_dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# memory model
# ----------------------------------------------------------------------------------------------
def _saved_bytes(
    model: torch.nn.Module, batch: int, mask_ratio: float, dtype: torch.dtype, device: Any
) -> dict[str, int]:
    """Bytes of the tensors autograd saves in one forward of ``batch`` images, each storage once,
    parameters excluded: outside the blocks, per block, and the blocks' inputs."""
    size = model.patch_embed.img_size[0]
    x = torch.rand(batch, 12, size, size, device=device)
    noise = torch.rand(batch, model.num_patches, device=device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    current: list[int | None] = [None]
    per_block: dict[int, int] = defaultdict(int)
    totals = {"outside": 0, "inputs": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            n = t.untyped_storage().nbytes()
            if current[0] is None:
                totals["outside"] += n
            else:
                per_block[current[0]] += n
        return t

    handles = []
    for i, blk in enumerate(transformer_blocks(model)):

        def pre(_m, args, i=i):
            current[0] = i
            totals["inputs"] += args[0].untyped_storage().nbytes()

        handles.append(blk.register_forward_pre_hook(pre))
        handles.append(blk.register_forward_hook(lambda *_: current.__setitem__(0, None)))
    was = model.grad_checkpointing
    model.grad_checkpointing = False
    try:
        with autocast(torch.device(device).type, dtype):
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, _, _ = model(x, mask_ratio=mask_ratio, noise=noise)
    finally:
        model.grad_checkpointing = was
        for h in handles:
            h.remove()
    del loss
    return {
        "plain": totals["outside"] + sum(per_block.values()),
        "checkpointed": totals["outside"] + totals["inputs"] + max(per_block.values(), default=0),
    }


def activation_bytes(
    model: torch.nn.Module, mask_ratio: float, dtype: torch.dtype, device: Any
) -> dict[str, float]:
    """Activation memory model: bytes kept for backward = ``fixed + batch * per_image``.

    Counted from the tensors autograd saves in real forwards of 1 and 2 images (parameters
    excluded). ``fixed`` is what does not grow with the batch: autocast's low-precision weight
    copies. ``*_ckpt`` under activation checkpointing: the saves outside the blocks, each block's
    input, and the largest block's saves (they exist again while it is recomputed in backward).
    """
    one = _saved_bytes(model, 1, mask_ratio, dtype, device)
    two = _saved_bytes(model, 2, mask_ratio, dtype, device)
    out: dict[str, float] = {}
    for key, name in (("plain", ""), ("checkpointed", "_ckpt")):
        out["per_image" + name] = two[key] - one[key]
        out["fixed" + name] = max(0, 2 * one[key] - two[key])
    return out


def predicted_activations(act: dict[str, float], batch: int, ckpt: bool) -> float:
    """Bytes of activations for ``batch`` images (see :func:`activation_bytes`)."""
    name = "_ckpt" if ckpt else ""
    return act["fixed" + name] + batch * act["per_image" + name]


def state_bytes(model: torch.nn.Module) -> dict[str, int]:
    """fp32 parameters, fp32 gradients, AdamW ``exp_avg`` + ``exp_avg_sq``, largest block."""
    n = sum(p.numel() for p in model.parameters())
    block = max(
        (sum(p.numel() for p in b.parameters()) for b in transformer_blocks(model)), default=0
    )
    return {"params": 4 * n, "grads": 4 * n, "optim": 8 * n, "n_params": n, "block_params": block}


def memory_model_rows(args: argparse.Namespace, device: Any) -> list[dict[str, Any]]:
    """Per-GPU memory of each size under DDP and FSDP on ``--mm_world`` GPUs."""
    rows = []
    dtype = DTYPES[args.mm_dtype]
    low = torch.tensor([], dtype=dtype).element_size()
    world = args.mm_world
    for size in args.mm_sizes:
        name = f"mae_vit_{size}_patch8_128"
        torch.manual_seed(0)
        model = models_mae_spectral.create_model(name, img_size=args.mm_input_size).to(device)
        st = state_bytes(model)
        act = activation_bytes(model, args.mask_ratio, dtype, device)
        del model
        for strategy in ("ddp", "fsdp"):
            shard = world if strategy == "fsdp" else 1
            if strategy == "ddp":
                comm = st["grads"]  # gradient buckets (gradient_as_bucket_view=False)
            else:
                # gathered low-precision params of the current + prefetched block, and a block's
                # unsharded fp32 gradients before its reduce-scatter
                comm = 2 * low * st["block_params"] + 4 * st["block_params"]
            states = (st["params"] + st["grads"] + st["optim"]) / shard
            for ckpt in (False, True):
                a = predicted_activations(act, args.mm_batch, ckpt)
                if (
                    strategy == "fsdp"
                ):  # params are all-gathered in low precision: no autocast copies
                    a -= act["fixed_ckpt" if ckpt else "fixed"]
                rows.append(
                    {
                        "kind": "memory_model",
                        "size": size,
                        "model": name,
                        "input_size": args.mm_input_size,
                        "strategy": strategy,
                        "world": world,
                        "batch_per_gpu": args.mm_batch,
                        "dtype": args.mm_dtype,
                        "mask_ratio": args.mask_ratio,
                        "grad_checkpointing": ckpt,
                        "n_params_m": st["n_params"] / 1e6,
                        "params_gib": st["params"] / shard / GIB,
                        "grads_gib": st["grads"] / shard / GIB,
                        "optim_gib": st["optim"] / shard / GIB,
                        "states_gib": states / GIB,
                        "comm_gib": comm / GIB,
                        "act_per_img_mib": act["per_image_ckpt" if ckpt else "per_image"] / 2**20,
                        "activations_gib": a / GIB,
                        "total_gib": (states + comm + a) / GIB,
                    }
                )
    return rows


# ----------------------------------------------------------------------------------------------
# one configuration
# ----------------------------------------------------------------------------------------------
def cpu_peak_flops(dtype: torch.dtype, n: int) -> float:
    """Best FLOP/s of an ``n x n`` GEMM in ``dtype`` on this process's CPU threads."""
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_config(args: argparse.Namespace, batch: int, ckpt: bool) -> dict[str, Any]:
    """Train ``--steps`` steps of one configuration; the JSON row."""
    device = args.device
    dtype = resolve_dtype(args.dtype, device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the model
    torch.manual_seed(0)
    kw = {"img_size": args.input_size} if args.input_size else {}
    model = models_mae_spectral.create_model(args.model, **kw).to(device)
    size = model.patch_embed.img_size[0]

    # model FLOPs of one micro-step: batch 1 (linear in the batch), plain model, no recompute
    x1 = torch.rand(1, 12, size, size, device=device)
    n1 = torch.rand(1, model.num_patches, device=device)

    def fwd_bwd() -> None:
        with autocast(device.type, dtype):
            loss, _, _ = model(x1, mask_ratio=args.mask_ratio, noise=n1)
        loss.backward()

    flops = measure_flops(fwd_bwd) * batch
    model.zero_grad(set_to_none=True)
    predicted = None
    if device.type == "cpu" and not args.distributed:
        act = activation_bytes(model, args.mask_ratio, dtype, device)
        st = state_bytes(model)
        states = st["params"] + st["grads"] + st["optim"]
        predicted = (base_rss + states + predicted_activations(act, batch, ckpt)) / GIB

    net = wrap_model(
        model,
        args.compile,
        args.distributed,
        device,
        strategy=args.strategy,
        grad_checkpointing=ckpt,
        reshard_after_forward=args.reshard_after_forward,
        param_dtype=dtype,
    )
    opt = create_adamw(pretrain_param_groups(model, 0.05), lr=1e-4)
    step = OptimStep(net, opt, device_type=device.type, dtype=dtype)
    batches = [{"image": torch.rand(batch, 12, size, size, device=device)}]
    common = dict(device=device, mask_ratio=args.mask_ratio, print_freq=10**9)
    train_one_epoch(net, batches * args.warmup, step, epoch=0, **common)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    stats = train_one_epoch(net, batches * args.steps, step, epoch=1, **common)
    _sync(device)
    step_time = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        mem, mem_kind = torch.cuda.max_memory_allocated() / GIB, "cuda max allocated"
        peak, source = peak_flops(device, dtype), "device table"
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        mem_kind = "peak RSS"
        peak, source = cpu_peak_flops(dtype, args.probe_size), "cpu gemm probe"
    achieved = flops / step_time
    return {
        "kind": "run",
        "model": args.model,
        "input_size": size,
        "mask_ratio": args.mask_ratio,
        "batch_size": batch,
        "world_size": args.world_size,
        "dtype": str(dtype).replace("torch.", ""),
        "strategy": args.strategy if args.distributed else "single",
        "grad_checkpointing": ckpt,
        "compile": args.compile,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "img_per_s": batch * args.world_size / step_time,
        "step_time_ms": step_time * 1e3,
        "peak_mem_gib": mem,
        "mem_kind": mem_kind,
        "predicted_gib": predicted,
        "gflop_per_step": flops / 1e9,
        "tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": source if peak else None,
        "mfu": achieved / peak if peak else None,
        "loss": stats["loss"],
    }


def sweep(args: argparse.Namespace, ckpt: bool) -> dict[str, Any]:
    """Largest per-GPU batch (doubling from ``--batch_size``) that trains without running out of
    memory, and its row."""
    batch, best = args.batch_size[0], None
    while batch <= args.sweep_max:
        try:
            row = run_config(args, batch, ckpt)
        except torch.cuda.OutOfMemoryError:
            row = None
        torch.cuda.empty_cache()
        fits = torch.tensor(float(row is not None), device=args.device)
        if args.distributed:  # every rank must agree
            torch.distributed.all_reduce(fits, op=torch.distributed.ReduceOp.MIN)
        if not bool(fits):
            break
        best, batch = row, batch * 2
    return {**(best or {}), "kind": "sweep", "largest_batch": best["batch_size"] if best else 0}


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    if args.child:  # one configuration in this (fresh) process: its own peak RSS
        cfg = json.loads(args.child)
        args.device = torch.device(args.device or default_device())
        args.distributed, args.world_size = False, 1
        torch.set_num_threads(cfg["threads"])
        print(json.dumps(run_config(args, cfg["batch"], cfg["ckpt"])), flush=True)
        return
    args.device = args.device or default_device()
    init_distributed(args)
    setup_backends(args.device)
    if args.sweep and args.device.type != "cuda":
        raise SystemExit("error: --sweep finds the largest batch that fits on a GPU; no CUDA here")
    try:
        for batch in args.batch_size:
            for ckpt in (c == "on" for c in args.grad_checkpointing):
                if args.sweep:
                    row = sweep(args, ckpt)
                elif args.device.type == "cpu" and not args.distributed:
                    cfg = {"batch": batch, "ckpt": ckpt, "threads": torch.get_num_threads()}
                    cmd = [
                        sys.executable,
                        __file__,
                        *(argv or sys.argv[1:]),
                        "--child",
                        json.dumps(cfg),
                    ]
                    out = subprocess.run(
                        cmd, check=True, capture_output=True, text=True, env=os.environ.copy()
                    )
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                else:
                    row = run_config(args, batch, ckpt)
                if is_main_process():
                    print(json.dumps(row), flush=True)
            if args.sweep:
                break
        if args.memory_model and is_main_process():
            for row in memory_model_rows(args, "cpu" if args.distributed else args.device):
                print(json.dumps(row), flush=True)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
