"""Finetuning speed: training-step throughput (finetune vs linear probe) and the cost of
dataset-level metrics on a BigEarthNet-sized evaluation set.

Examples::

    python benchmarks/bench_finetune.py --model vit_tiny_patch8_96 --input_size 32 --device cpu
    python benchmarks/bench_finetune.py --model vit_base_patch8_128 --batch_size 64 --compile

Prints one line per measurement (``--json OUT`` also writes them to OUT). ``--compile`` compiles
each transformer block, as ``main_finetune --compile`` does. Synthetic tensors only (no data
loading: see bench_loader.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models_vit_tensor  # noqa: E402
from engine_finetune import make_linear_probe  # noqa: E402
from evaluation.metrics import build_metrics  # noqa: E402
from util.training.args import resolve_dtype  # noqa: E402
from util.training.optim import OptimStep, create_adamw, layer_decay_param_groups  # noqa: E402
from util.training.runtime import wrap_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(args: argparse.Namespace, linear_probe: bool) -> float:
    """Images per second of the finetuning step (forward, backward, AdamW, layer decay)."""
    device = torch.device(args.device)
    model = models_vit_tensor.create_model(
        args.model, img_size=args.input_size, num_classes=10, drop_path_rate=0.1
    )
    if linear_probe:
        make_linear_probe(model)
    model.to(device)
    groups = layer_decay_param_groups(model, 0.05, 0.75)
    optimizer = create_adamw(groups, lr=1e-4, betas=(0.9, 0.999))
    net = wrap_model(model, compile=args.compile, device=device)  # the trainers' regional compile
    dtype = resolve_dtype(args.dtype, device)
    step = OptimStep(net, optimizer, device_type=device.type, dtype=dtype)
    x = torch.randn(args.batch_size, 12, args.input_size, args.input_size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    for i in range(args.warmup):
        step(i, lambda: loss_fn(net(x), y))
    _sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i, lambda: loss_fn(net(x), y))
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def bench_metrics(num: int, num_classes: int, batch: int) -> tuple[float, float]:
    """Seconds to update + compute dataset-level multi-label metrics over ``num`` samples."""
    metrics = build_metrics(num_classes, multilabel=True)
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(num, num_classes, generator=g) < 0.15).long()
    logits = torch.randn(num, num_classes, generator=g) + 2 * target
    start = time.perf_counter()
    for lo, t in zip(logits.split(batch), target.split(batch)):
        metrics.update(lo, t)
    mid = time.perf_counter()
    metrics.compute()
    return mid - start, time.perf_counter() - mid


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch8_96")
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--eval_samples", type=int, default=118065, help="BigEarthNet val size")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(
        f"device {args.device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}"
    )
    result: dict = {
        "model": args.model, "input_size": args.input_size, "batch_size": args.batch_size,
        "dtype": str(resolve_dtype(args.dtype, args.device)).replace("torch.", ""),
        "compile": args.compile, "device": args.device,
    }  # fmt: skip
    for lp in (False, True):
        ips = bench_train(args, linear_probe=lp)
        result["linear_probe_img_per_s" if lp else "finetune_img_per_s"] = ips
        print(
            f"train step {args.model} {args.input_size}px batch {args.batch_size} "
            f"{'linear probe' if lp else 'finetune'}: {ips:.1f} images/s"
        )
    upd, comp = bench_metrics(args.eval_samples, 19, 256)
    result.update(metrics_samples=args.eval_samples, metrics_update_s=upd, metrics_compute_s=comp)
    print(
        f"dataset-level mAP/F1 (micro+macro+per-class) over {args.eval_samples} x 19: "
        f"update {upd:.2f} s, compute {comp:.2f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
