"""Train-step benchmark of the dense models: ours and the paper-compatible ones vs the paper's way.

One train step = forward + backward + AdamW step on random data (cross-entropy on random labels).
Variants, each run in its own subprocess (peak memory per variant), alternated round by round with
each one's best kept (:func:`bench_model.run_rounds`):

* ``segmenter``       - ``segmenter_vit_{size}_patch8_128`` (our default; fused AdamW via OptimStep).
* ``change_detector`` - ``change_detector_vit_{size}_patch8_128`` (one encoder pass over 2N).
* ``paper_segmunich`` - ``paper_segmunich_vit_base_patch8_128`` (the paper's function, our code).
* ``paper_oscd``      - ``paper_oscd_vit_base_patch8_128`` (the paper's function, our code).
* ``paper_style``     - a re-creation of the paper's OSCD computation for timing only (spec §2.2,
  §7.2, §7.4): separate q/k/v linears with explicit softmax attention, Conv3d patch embedding, the
  encoder run twice (once per date), LogSoftmax + weighted NLL, ``torch.optim.AdamW`` with its
  for-loop implementation. Float32 only: the paper's code has no CPU bf16 path, so bf16 rows are
  compared with the float32 paper-style step.
* ``paper_code``      - the paper's own OSCD model and train step, imported from a checkout of its
  repository given by ``--paper_repo`` (nothing of it is shipped here: it is GPL-licensed).
  As its ``train.py`` builds it: ``vit_base_patch16()``, ``convert_model`` (SyncBatchNorm),
  ``DataParallel``, ``NLLLoss`` with class weights [0.2, 1.8], ``torch.optim.AdamW`` defaults.
  Float32, ViT-B, 128 px only. The reference row whenever it runs.

Allocator (``--allocator``): our training scripts call ``util.training.runtime.keep_freed_memory`` on CPU
(glibc keeps freed activations for reuse instead of unmapping them and faulting them in again
next step). ``project`` (default) runs each variant as its own code runs: ours with it, the
paper's without; ``all`` gives the paper's variants the same allocator (like for like);
``none`` runs every variant with glibc's defaults. Each row says which it had.

Example (the issue's setting, CPU, against the paper's code checked out in ../SpectralGPT)::

    python benchmarks/bench_dense.py --dtypes float32 bfloat16 --rounds 3 \
        --variants paper_code paper_style paper_oscd change_detector --paper_repo ../SpectralGPT

Prints each run (with the 1-minute load average) and a table of the best runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_model import DTYPES, PaperAttention, print_table, run_rounds, time_steps  # noqa: E402

from downstream_tasks import models_dense  # noqa: E402
from util.training.optim import OptimStep, create_adamw  # noqa: E402
from util.training.runtime import keep_freed_memory  # noqa: E402

VARIANTS = ["paper_style", "paper_oscd", "change_detector", "segmenter", "paper_segmunich"]
PAPER_VARIANTS = ("paper_code", "paper_style")  # the paper's code (float32 only)
PAPER_OSCD_DIR = Path("downstream_tasks", "OSCD")


def load_paper_oscd(repo: str | Path) -> torch.nn.Module:
    """The paper's OSCD network, built as its ``downstream_tasks/OSCD/train.py`` builds it.

    Its modules import top-level packages named ``util`` and ``model``; ours are set aside while
    they load and restored after, so both code bases live in this process.
    """
    import importlib

    root = Path(repo).expanduser().resolve() / PAPER_OSCD_DIR
    if not (root / "model" / "models_vit_tensor_CD.py").is_file():
        raise SystemExit(
            f"--paper_repo {repo}: no {PAPER_OSCD_DIR}/model/models_vit_tensor_CD.py there; "
            "give the root of a checkout of the paper's repository (IEEE_TPAMI_SpectralGPT)"
        )

    def clashes(name: str) -> bool:
        return name.split(".")[0] in ("util", "model", "sync_batchnorm")

    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if clashes(k)]}
    saved_path = sys.path[:]
    # its util/ has no __init__.py: a regular package named util anywhere on the path would win
    sys.path[:] = [str(root)] + [
        p for p in sys.path if not (Path(p or ".") / "util" / "__init__.py").is_file()
    ]
    try:
        cd = importlib.import_module("model.models_vit_tensor_CD")
        sync_bn = importlib.import_module("sync_batchnorm.batchnorm")
        net = sync_bn.convert_model(cd.vit_base_patch16())
    finally:
        sys.path[:] = saved_path
        for k in [k for k in sys.modules if clashes(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    return torch.nn.parallel.DataParallel(net)


class PaperStyleOSCD(models_dense.PaperOSCD):
    """The paper's OSCD forward: Conv3d patch embedding, each date through the encoder separately."""

    def _encode_one(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        tokens = enc.patch_embed.proj(enc.to_5d(x)).flatten(2).transpose(1, 2)  # (N, P, D)
        tokens = enc.forward_blocks(tokens + enc.pos_embed_full())
        return models_dense.tokens_to_maps(tokens, enc.grid, "linear", self.fc[0])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        x1, x2 = self._split_dates(x1, x2)
        return F.log_softmax(self.decode(self._encode_one(x1) - self._encode_one(x2)), dim=1)


def build(variant: str, size: str, img_size: int) -> torch.nn.Module:
    if variant == "segmenter":
        return models_dense.create_model(f"segmenter_vit_{size}_patch8_128", img_size=img_size)
    if variant == "change_detector":
        return models_dense.create_model(
            f"change_detector_vit_{size}_patch8_128", img_size=img_size
        )
    if variant == "paper_style":
        model = models_dense.create_model("paper_oscd_vit_base_patch8_128", img_size=img_size)
        model.__class__ = PaperStyleOSCD
        for blk in model.encoder.blocks:
            blk.attn = PaperAttention(blk.attn.qkv.in_features, blk.attn.num_heads)
        return model
    return models_dense.create_model(f"{variant}_vit_base_patch8_128", img_size=img_size)


def run_child(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    paper = args.variant in PAPER_VARIANTS
    tuned = device.type == "cpu" and (
        args.allocator == "all" or (args.allocator == "project" and not paper)
    )
    if tuned:
        keep_freed_memory()
    n, s = args.batch_size, args.input_size
    if args.variant == "paper_code":
        if s != 128:
            raise SystemExit("paper_code: the paper's OSCD model is fixed at --input_size 128")
        model = load_paper_oscd(args.paper_repo).to(device).train()
        change, num_classes = True, 2
    else:
        model = build(args.variant, args.size, s).to(device).train()
        change, num_classes = model.task == "change", model.num_classes
    x = torch.rand(n, 2, 12, s, s, device=device) if change else torch.rand(n, 12, s, s)
    x = x.to(device)
    y = torch.randint(0, num_classes, (n, s, s), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.variant == "paper_code":  # its train.py: default AdamW, NLLLoss(weight) on its output
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5)
        criterion = torch.nn.NLLLoss(weight=torch.tensor([0.2, 1.8], device=device))

        def step() -> None:
            opt.zero_grad()
            criterion(model(x[:, 0], x[:, 1]), y).backward()
            opt.step()

    elif args.variant == "paper_style":  # the paper's loop: plain AdamW, NLL on log-probabilities
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-5, foreach=False)
        weight = torch.tensor([0.2, 1.8], device=device)

        def step() -> None:
            F.nll_loss(model(x), y, weight=weight).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    else:
        opt = create_adamw(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-5)
        optim_step = OptimStep(
            model, opt, device_type=device.type, dtype=dtype, compute_grad_norm=False
        )

        def step() -> None:
            optim_step(0, lambda: F.cross_entropy(model(x).float(), y))

    flops = 0
    if args.warmup:  # count the step's FLOPs (matmuls, convs, attention) on the first warm-up
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    row = time_steps(step, device, max(args.warmup - 1, 0), args.steps)
    allocator = "kept" if tuned else "default"
    return {
        "variant": args.variant,
        "dtype": args.dtype,
        "gflop": flops / 1e9,
        "allocator": allocator,
        **row,
    }


def gemm_rate(dtype: torch.dtype, m: int = 256, k: int = 768, n: int = 3072) -> float:
    """GFLOP/s (per CPU second) of one ViT-B MLP-sized matrix product in ``dtype`` (best of 3)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):  # CPU seconds of this process: robust to other jobs (one thread)
        t0 = time.process_time()
        a @ b
        best = min(best, time.process_time() - t0)
    return 2 * m * k * n / best / 1e9


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size",
        default="base",
        choices=["tiny", "base", "large"],
        help="encoder size of our default models (the paper models are base)",
    )
    p.add_argument("--input_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument(
        "--variants",
        nargs="+",
        default=VARIANTS,
        choices=VARIANTS + ["paper_code"],
        help="paper_code needs --paper_repo",
    )
    p.add_argument(
        "--paper_repo",
        help="root of a checkout of the paper's repository, for the paper_code variant",
    )
    p.add_argument(
        "--allocator",
        default="project",
        choices=["project", "all", "none"],
        help="glibc allocator set-up per variant on CPU (see the module docstring)",
    )
    p.add_argument("--steps", type=int, default=2, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat all variants, alternating; best run kept"
    )
    p.add_argument(
        "--gemm_rate", action="store_true", help="only print float32/bf16 GEMM GFLOP/s and exit"
    )
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> list[dict]:
    if args.gemm_rate:
        rates = {d: gemm_rate(DTYPES[d]) for d in args.dtypes}
        print(
            "GEMM 256x768 @ 768x3072: "
            + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items())
            + f" (threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()})"
        )
        return [rates]
    if args.variant:
        row = run_child(args)
        print(json.dumps(row))
        return [row]
    print(
        f"dense train step: size={args.size} input={args.input_size} batch={args.batch_size} "
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}",
        flush=True,
    )
    if "paper_code" in args.variants and not args.paper_repo:
        raise SystemExit(
            "--variants paper_code needs --paper_repo (a checkout of the paper's code)"
        )
    child_args = []
    for k in ("size", "input_size", "batch_size", "device", "steps", "warmup", "allocator"):
        child_args += [f"--{k}", str(getattr(args, k))]
    if args.paper_repo:
        child_args += ["--paper_repo", str(Path(args.paper_repo).expanduser().resolve())]
    skip = {(v, d) for v in PAPER_VARIANTS for d in args.dtypes if d != "float32"}
    rows = run_rounds(
        __file__, args.variants, args.dtypes, args.rounds, child_args, args.batch_size, skip
    )
    ref = "paper_code" if "paper_code" in args.variants else "paper_style"
    print_table(rows, ref, ref_dtype="float32")
    print(
        "\nAllocator per variant: "
        + ", ".join(
            f"{r['variant']} {r['allocator']}" for r in rows if r["dtype"] == rows[0]["dtype"]
        )
    )
    print("\nFLOPs per step (forward + backward, counted by torch.utils.flop_counter):")
    for row in rows:
        print(f"  {row['variant']:16s} {row['dtype']:9s} {row['gflop']:.0f} GFLOP")
    return rows


def cli(argv: list[str] | None = None) -> list[dict]:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    cli()
