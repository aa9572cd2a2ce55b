"""Train-step benchmark of the pretraining model: ours vs timm's math attention vs the paper's way.

One train step = forward + backward + AdamW step, on random data, for a given size, batch, mask
ratio, dtype and device. Variants, each run in its own subprocess so peak memory is per variant:

* ``ours``  - this repository: SDPA attention (fused qkv), only visible patches embedded,
  fused AdamW.
* ``math``  - the same model with timm's math attention path (``fused_attn = False``).
* ``paper`` - a re-creation of the paper's computation for timing only: separate q/k/v GEMMs,
  naive softmax attention, every patch embedded with the Conv3d before masking, ``torch.optim.AdamW``
  with default settings.

Example (the issue's reference setting, CPU, float32)::

    python benchmarks/bench_model.py --model mae_vit_base_patch8_128 --batch_size 4 \
        --mask_ratio 0.9 --dtypes float32 bfloat16 --steps 3

Prints a table: median step time (best over ``--rounds`` alternating rounds), images/s and peak memory (CUDA: max allocated; CPU: peak RSS of
the variant's process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models_mae_spectral  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PaperAttention(nn.Module):
    """The paper's attention, for timing only: separate q/k/v linears and explicit softmax."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, **_: object) -> torch.Tensor:
        n, length, dim = x.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, length, h, dim // h).permute(0, 2, 1, 3)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, length, dim)
        return self.proj(out)


class PaperStyleMAE(models_mae_spectral.MaskedAutoencoderViT):
    """Embeds every patch with the Conv3d, then masks (as the paper does)."""

    def forward_encoder(self, imgs, mask_ratio, noise=None):
        x = self.patch_embed.proj(self.to_5d(imgs))  # (N, D, t, h, w)
        x = x.flatten(3).permute(0, 2, 3, 1).flatten(1, 2)  # (N, P, D)
        x, mask, ids_restore, ids_keep = self.random_masking(x, mask_ratio, noise)
        pos = self.pos_embed_full().expand(x.shape[0], -1, -1)
        x = x + torch.gather(pos, 1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
        return self.norm(self.forward_blocks(x)), mask, ids_restore


def build(variant: str, model_name: str, img_size: int) -> nn.Module:
    model = models_mae_spectral.create_model(model_name, img_size=img_size)
    if variant == "paper":
        model.__class__ = PaperStyleMAE
        for blk in list(model.blocks) + list(model.decoder_blocks):
            dim = blk.attn.qkv.in_features
            blk.attn = PaperAttention(dim, blk.attn.num_heads)
    elif variant == "math":
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    return model


def time_steps(step, device: torch.device, warmup: int, steps: int) -> dict:
    """Run ``step`` ``warmup`` + ``steps`` times; median step wall/CPU time and peak memory.

    Peak memory: CUDA max allocated after the warm-up, else the process's peak RSS.
    """
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "step_s": statistics.median(times),
        # CPU seconds of the process per step: robust to other jobs on a shared machine when run
        # with one thread (no OpenMP spin-waiting)
        "cpu_s": statistics.median(cpu),
        "peak_mib": peak,
        "threads": torch.get_num_threads(),
    }


def run_child(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    model = build(args.variant, args.model, args.input_size).to(device)
    if args.variant == "paper":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    imgs = torch.rand(args.batch_size, 12, args.input_size, args.input_size, device=device)
    fwd = torch.compile(model) if args.compile and args.variant != "paper" else model
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    def step() -> None:
        with autocast:
            loss, _, _ = fwd(imgs, mask_ratio=args.mask_ratio)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    row = time_steps(step, device, args.warmup, args.steps)
    return {
        "variant": args.variant,
        "dtype": args.dtype,
        "img_per_s": args.batch_size / row["step_s"],
        **row,
    }


def run_rounds(
    script: str,
    variants: list[str],
    dtypes: list[str],
    rounds: int,
    child_args: list[str],
    batch_size: int,
    skip: set[tuple[str, str]] = frozenset(),
) -> list[dict]:
    """Run ``script --variant V --dtype D *child_args`` per (dtype, variant) in its own process,
    alternating the variants round by round, and keep each one's best (fastest) result.

    The child prints one JSON row (``step_s``, ``peak_mib``, ...) as its last stdout line.
    ``skip`` lists (variant, dtype) pairs not to run.
    """
    rows = []
    for dtype in dtypes:
        best: dict[str, dict] = {}
        for rnd in range(rounds):
            for variant in variants:
                if (variant, dtype) in skip:
                    continue
                cmd = [sys.executable, script, "--variant", variant, "--dtype", dtype, *child_args]
                out = subprocess.run(
                    cmd, check=True, capture_output=True, text=True, env=os.environ.copy()
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.setdefault("img_per_s", batch_size / row["step_s"])
                print(
                    f"  round {rnd} {variant:16s} {dtype:9s} step {row['step_s']:.3f} s  "
                    f"cpu {row.get('cpu_s', float('nan')):.3f} s  "
                    f"{row['img_per_s']:.2f} img/s  peak {row['peak_mib']:.0f} MiB  "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                if variant not in best or row["step_s"] < best[variant]["step_s"]:
                    best[variant] = row
        rows += [best[v] for v in variants if v in best]
    return rows


def print_table(rows: list[dict], ref_variant: str, ref_dtype: str | None = None) -> None:
    """Markdown table; speed-ups (wall and CPU time) against ``ref_variant`` in the same dtype
    (or ``ref_dtype``)."""
    print(
        f"\n| variant | dtype | step (s) | CPU s/step | img/s | peak MiB | "
        f"speed-up vs {ref_variant} (wall, CPU) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        want = ref_dtype or row["dtype"]
        ref = next((r for r in rows if r["variant"] == ref_variant and r["dtype"] == want), None)
        speed = "-"
        if ref:
            speed = f"{ref['step_s'] / row['step_s']:.2f}x, {ref['cpu_s'] / row['cpu_s']:.2f}x"
            if want != row["dtype"]:
                speed += f" (vs {want})"
        print(
            f"| {row['variant']} | {row['dtype']} | {row['step_s']:.3f} | {row['cpu_s']:.3f} "
            f"| {row['img_per_s']:.2f} | {row['peak_mib']:.0f} | {speed} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="mae_vit_base_patch8_128")
    p.add_argument("--input_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--mask_ratio", type=float, default=0.9)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument(
        "--variants",
        nargs="+",
        default=["ours", "math", "paper"],
        choices=["ours", "math", "paper"],
    )
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat all variants, alternating; best run reported"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile ours/math (not paper)")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_child(args)))
        return
    print(
        f"model={args.model} input={args.input_size} batch={args.batch_size} mask={args.mask_ratio} "
        f"device={args.device} compile={args.compile} torch={torch.__version__} "
        f"threads={torch.get_num_threads()}",
        flush=True,
    )
    child_args = []
    for k in ("model", "input_size", "batch_size", "mask_ratio", "device", "steps", "warmup"):
        child_args += [f"--{k}", str(getattr(args, k))]
    child_args += ["--compile"] if args.compile else []
    rows = run_rounds(
        __file__, args.variants, args.dtypes, args.rounds, child_args, args.batch_size
    )
    print_table(rows, "paper")


if __name__ == "__main__":
    main()
