"""Linear-probe learning-rate sweep on synthetic EuroSAT (how the probe's defaults were chosen).

Each configuration runs ``main_finetune --linear_probe`` with a random-init tiny encoder on the
same synthetic EuroSAT folder for every seed and prints the best / last top-1 accuracy::

    python benchmarks/probe_lr_sweep.py "--probe_optimizer lars --blr 0.1" \\
        "--probe_optimizer adamw --blr 0.01" "--probe_optimizer adamw --blr 0.1"

Options: ``--root`` (data folder, written if missing), ``--num``, ``--size``, ``--epochs``,
``--batch_size``, ``--seeds``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from main_finetune import get_args_parser, main  # noqa: E402
from util.data.synthetic import generate  # noqa: E402


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", default=[""], help="extra main_finetune flags per run")
    p.add_argument("--root", default=None, help="synthetic EuroSAT folder (default: a temp dir)")
    p.add_argument("--num", type=int, default=300)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.root or tempfile.mkdtemp(prefix="probe_sweep_"))
    if not (root / "eurosat-train.txt").is_file():
        generate("eurosat", root, num=args.num, size=args.size, seed=1)
    for config in args.configs:
        accs, start = [], time.time()
        for seed in args.seeds:
            out = tempfile.mkdtemp(prefix="probe_run_")
            ft = get_args_parser().parse_args(
                [
                    "--model", "vit_tiny_patch8_96", "--input_size", str(args.size),
                    "--native_size", str(args.size), "--device", "cpu", "--num_workers", "0",
                    "--train_path", str(root), "--test_path", str(root), "--linear_probe",
                    "--epochs", str(args.epochs), "--warmup_epochs", "1",
                    "--batch_size", str(args.batch_size), "--print_freq", "1000",
                    "--no_progress", "--save_every", "1000", "--output_dir", out,
                    "--seed", str(seed), *shlex.split(config),
                ]
            )  # fmt: skip
            logging.disable(logging.CRITICAL)
            with contextlib.redirect_stdout(io.StringIO()):
                res = main(ft)
            accs.append(f"{res['best']['acc1']:.1f}/{res['last']['acc1']:.1f}")
        per_run = (time.time() - start) / len(args.seeds)
        print(
            f"{config or 'defaults'}: lr {ft.lr:.3g}, best/last top-1 per seed {', '.join(accs)} "
            f"({per_run:.0f} s/run)",
            flush=True,
        )


if __name__ == "__main__":
    cli()
