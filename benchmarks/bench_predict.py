"""Throughput and memory of whole-scene prediction (``predict.py``): tiles/s, km^2/s, peak RSS.

A synthetic 12-band scene (``--size`` px square at 10 m, a stacked GeoTIFF) is predicted by each
model x dtype variant, each in its own process (so peak RSS is per variant), variants alternating
round by round (``--rounds``; each keeps its best). Weights are random (speed does not depend on
them); the checkpoint carries the metadata ``predict.py`` reads.

Examples::

    # ViT-B segmenter on CPU, float32 vs bf16 autocast
    python benchmarks/bench_predict.py --size 512 --models segmenter_vit_base_patch8_128 \
        --dtypes float32 bfloat16
    # memory of a 4096 x 4096 scene with the tiny model
    python benchmarks/bench_predict.py --size 4096 --models segmenter_vit_tiny_patch8_128 \
        --dtypes float32 --rounds 1

Columns: tiles/s and km^2/s (scene area / wall time, at 10 m), achieved GFLOP/s (forward FLOPs
per tile counted by FlopCounterMode x tiles / wall time), CPU seconds per tile and GFLOP per CPU
second (robust to other processes' load), RSS after loading the model, peak RSS, and the time a
10980 x 10980 px Sentinel-2 tile would take at that rate. Every run is also appended to
``WORKDIR/results.jsonl``; ``--json OUT`` writes the best run of each variant to OUT.
``--device cuda`` predicts on the GPU (RSS columns are then host memory). A change detector
predicts the scene against itself (two dates, one file).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util.inference.model_loading import load_model  # noqa: E402
from util.inference.predict import predict_scene  # noqa: E402
from util.inference.tiling import tile_starts  # noqa: E402

S2_TILE = 10980  # px side of a Sentinel-2 granule at 10 m


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_scene(path: Path, size: int, seed: int = 0, height: int | None = None) -> Path:
    """A ``height x size`` px 13-band synthetic scene (uint16 DN), written strip by strip."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from util.data.sentinel2 import L1C_BANDS
    from util.data.synthetic import COVERS, render_scene

    rng = np.random.default_rng(seed)
    height = height or size
    strip = min(height, 512)
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=size, count=13, dtype="uint16",
        crs=CRS.from_epsg(32632), transform=Affine(10, 0, 6e5, 0, -10, 5.1e6), tiled=True,
        interleave="band",
    ) as dst:  # fmt: skip
        for r in range(0, height, strip):
            n = min(strip, height - r)
            _, refl, _ = render_scene(rng, n, size, list(COVERS)[:6])
            dn = np.clip(np.rint(refl * 10000), 1, 65535).astype(np.uint16)
            dst.write(dn, window=rasterio.windows.Window(0, r, size, n))
        for i, b in enumerate(L1C_BANDS, 1):
            dst.set_band_description(i, b)
    return path


def make_checkpoint(path: Path, name: str) -> tuple[Path, str]:
    """Random weights of ``name`` with the metadata predict.py reads; returns (path, task)."""
    import models_registry
    from util.training.checkpoint import save_checkpoint

    module_name = models_registry.find_module(name)
    model = models_registry.build_model(module_name, name, {})
    task = getattr(model, "task", None) or (
        "pretrain" if module_name == "models_mae_spectral" else "classify"
    )
    enc = getattr(model, "encoder", model)
    size = int(enc.patch_embed.img_size[0])
    n = getattr(model, "num_classes", 0) or 0
    meta = dict(
        model=name, model_module=module_name, model_kwargs=dict(img_size=size), task=task,
        input_size=size, bands=list(enc.bands), normalization="minmax",
        classes=[f"class {i}" for i in range(n)], dataset="synthetic",
    )  # fmt: skip
    save_checkpoint(path, {"format": "spectralgpt-v2", "model": model.state_dict(), "meta": meta})
    return path, task


def worker(args: argparse.Namespace) -> None:
    """One variant: load, count FLOPs of one tile, predict the scene, print a JSON line."""
    from util.training.logger import measure_flops

    torch.set_num_threads(args.threads)
    lm = load_model(args.checkpoint, task=args.task)
    t = lm.input_size
    x = torch.zeros(1, 12, t, t) if lm.task != "change" else torch.zeros(1, 2, 12, t, t)
    model = lm.model
    if lm.task == "embed":
        enc = getattr(model, "encoder", model)
        flops = measure_flops(lambda: enc.norm(enc.forward_features(x)))
    else:
        with torch.no_grad():
            flops = measure_flops(lambda: model(x))
    loaded = _rss_mb()
    out = Path(args.workdir) / f"out_{os.getpid()}.tif"
    cpu0 = time.process_time()
    s = predict_scene(
        lm, args.scene, out, inputs2=args.scene if lm.task == "change" else None,
        overlap=args.overlap, batch_size=args.batch_size, device=args.device,
        dtype=getattr(torch, args.dtype), progress=False,
    )  # fmt: skip
    cpu = time.process_time() - cpu0
    out.unlink(missing_ok=True)
    out.with_suffix(".qml").unlink(missing_ok=True)
    result = dict(
        model=Path(args.checkpoint).stem, dtype=args.dtype, threads=args.threads, device=args.device,
        tiles=s["tiles"], seconds=s["seconds"], tiles_per_s=s["tiles_per_s"],
        km2_per_s=s["km2_per_s"], cpu_seconds=cpu, flops_per_tile=flops, loaded_rss_mb=loaded,
        peak_rss_mb=_rss_mb(), stride=s["stride"], tile=s["tile"], load=os.getloadavg()[0],
    )  # fmt: skip
    with open(Path(args.workdir) / "results.jsonl", "a") as f:  # every run, for the record
        f.write(json.dumps(result) + "\n")
    print("RESULT " + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--size", type=int, default=512, help="scene width (and height) in pixels (10 m)"
    )
    p.add_argument(
        "--height", type=int, default=None,
        help="scene height (default --size); memory depends on the width only (one strip of "
        "tiles is held), so a wide, short scene measures a wide scene's peak RSS quickly",
    )  # fmt: skip
    p.add_argument("--models", nargs="+", default=["segmenter_vit_base_patch8_128"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--task", default="auto")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", default="bench_predict_tmp")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, metavar="OUT", help="write the best runs here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--scene", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return []
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    height = args.height or args.size
    scene = make_scene(work / f"scene_{height}x{args.size}.tif", args.size, height=height)
    print(f"scene {height} x {args.size} px written in {time.time() - t0:.1f} s", flush=True)
    ckpts = {m: make_checkpoint(work / f"{m}.pth", m) for m in args.models}
    best: dict[tuple[str, str], dict] = {}
    for rnd in range(args.rounds):
        for m in args.models:
            for dt in args.dtypes:
                cmd = [
                    sys.executable, __file__, "--worker", "--checkpoint", str(ckpts[m][0]),
                    "--scene", str(scene), "--dtype", dt, "--task", args.task,
                    "--overlap", str(args.overlap), "--batch_size", str(args.batch_size),
                    "--threads", str(args.threads), "--workdir", str(work), "--device", args.device,
                ]  # fmt: skip
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"{m} {dt} failed:\n{res.stderr[-3000:]}")
                r = json.loads(res.stdout.split("RESULT ", 1)[1])
                print(f"round {rnd} {m} {dt}: {r['tiles_per_s']:.3f} tiles/s", flush=True)
                key = (m, dt)
                if key not in best or r["tiles_per_s"] > best[key]["tiles_per_s"]:
                    best[key] = r
    load = os.getloadavg()
    print(
        f"\nscene {height} x {args.size} px ({height * args.size * 1e-4:.2f} km2 at 10 m), overlap "
        f"{args.overlap}, batch {args.batch_size}, {args.threads} threads, best of {args.rounds} "
        f"round(s); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        "| model | dtype | tiles | tiles/s | km2/s | GFLOP/tile | GFLOP/s | CPU s/tile "
        "| GFLOP per CPU s | RSS loaded (MB) | peak RSS (MB) | 10980 px S2 tile (h) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (m, dt), r in best.items():
        s2_tiles = len(tile_starts(S2_TILE, r["tile"], r["stride"])) ** 2
        hours = s2_tiles / r["tiles_per_s"] / 3600
        gflop = r["flops_per_tile"] / 1e9
        print(
            f"| {m} | {dt} | {r['tiles']} | {r['tiles_per_s']:.3f} | {r['km2_per_s']:.4f} | "
            f"{gflop:.1f} | {gflop * r['tiles_per_s']:.0f} | {r['cpu_seconds'] / r['tiles']:.2f} | "
            f"{gflop * r['tiles'] / r['cpu_seconds']:.0f} | {r['loaded_rss_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {hours:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(list(best.values()), indent=1) + "\n")
    return list(best.values())


if __name__ == "__main__":
    main()
