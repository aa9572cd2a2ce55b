"""Dense-task speed: change-detection training-step throughput and whole-scene inference time.

* train step: forward + backward + AdamW (layer decay) of a two-date batch of ``--input_size``
  crops through ``OptimStep`` (what ``downstream_tasks/train.py`` runs), in images (pairs) / s;
* whole scene: ``engine_dense.predict_scene`` (sliding window, batched tiles, blend-averaged
  logits) over one ``--scene`` x ``--scene`` two-date scene (OSCD cities are ~600 px), in s.

Both for every ``--dtypes`` entry, alternated ``--rounds`` times (best kept: the machine may be
shared). FLOPs are counted once (``util.training.logger.measure_flops``) so each time can be put against a
GEMM-rate floor. Examples::

    python benchmarks/bench_dense_train.py                       # ViT-B, CPU, float32 + bf16
    python benchmarks/bench_dense_train.py --model change_detector_vit_tiny_patch8_128 --scene 200
    python benchmarks/bench_dense_train.py --device cuda --batch_size 32 --eval_batch_size 64
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downstream_tasks.engine_dense import predict_scene  # noqa: E402
from downstream_tasks.models_dense import create_model  # noqa: E402
from util.inference.tiling import tile_starts  # noqa: E402
from util.training.args import DTYPES  # noqa: E402
from util.training.logger import measure_flops  # noqa: E402
from util.training.optim import (  # noqa: E402
    OptimStep,
    autocast,
    create_adamw,
    layer_decay_param_groups,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="change_detector_vit_base_patch8_128")
    parser.add_argument("--input_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=4, help="train-step pairs")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--scene", type=int, default=600, help="scene side (px)")
    parser.add_argument("--stride", type=int, default=64, help="sliding-window stride")
    parser.add_argument("--eval_batch_size", type=int, default=16, help="windows per forward")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}, "
        f"load average {load:.2f}"
    )
    size = args.input_size
    model = create_model(args.model, img_size=size, num_classes=2).to(device)
    groups = layer_decay_param_groups(model, 0.05, 0.9)
    optimizer = create_adamw(groups, lr=1e-4, betas=(0.9, 0.999))
    x = torch.randn(args.batch_size, 2, 12, size, size, device=device)
    y = torch.randint(0, 2, (args.batch_size, size, size), device=device)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    scene = torch.rand(1, 2, 12, args.scene, args.scene, device=device)
    windows = len(tile_starts(args.scene, size, args.stride)) ** 2

    model.train()
    train_flops = 0 if args.skip_train else measure_flops(lambda: loss_fn(model(x), y).backward())
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        tile_flops = measure_flops(lambda: model(x[:1]))
    print(
        f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; "
        f"train step {train_flops / 1e9:.0f} GFLOP (batch {args.batch_size}), one {size} px "
        f"two-date window {tile_flops / 1e9:.0f} GFLOP x {windows} windows "
        f"(scene {args.scene} px, stride {args.stride})"
    )
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name in args.dtypes:
            dtype = DTYPES[name]
            if not args.skip_train:
                model.train()
                step = OptimStep(model, optimizer, device_type=device.type, dtype=dtype)
                step(0, lambda: loss_fn(model(x), y))  # warm-up
                _sync(device)
                t0 = time.perf_counter()
                for i in range(args.steps):
                    step(i, lambda: loss_fn(model(x), y))
                _sync(device)
                ips = args.steps * args.batch_size / (time.perf_counter() - t0)
                best[("train", name)] = max(best.get(("train", name), 0.0), ips)
            model.eval()
            t0 = time.perf_counter()
            predict_scene(
                model, scene, 2, size, args.stride, args.eval_batch_size, "uniform",
                lambda dtype=dtype: autocast(device.type, dtype),
            )  # fmt: skip
            _sync(device)
            sec = time.perf_counter() - t0
            best[("scene", name)] = min(best.get(("scene", name), float("inf")), sec)
    for name in args.dtypes:
        if ("train", name) in best:
            ips = best[("train", name)]
            rate = train_flops / args.batch_size * ips / 1e9
            print(
                f"train step {name}: {ips:.2f} pairs/s ({rate:.0f} GFLOP/s achieved, "
                f"{size} px, batch {args.batch_size})"
            )
        sec = best[("scene", name)]
        rate = tile_flops * windows / sec / 1e9
        print(
            f"whole scene {args.scene}x{args.scene} {name}: {sec:.1f} s ({windows} windows, "
            f"{rate:.0f} GFLOP/s achieved)"
        )


if __name__ == "__main__":
    main()
