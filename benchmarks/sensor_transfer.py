"""What the wavelength adapter buys: a Sentinel-2 classifier applied to other sensors' bands.

Two questions on (synthetic) EuroSAT, each sensor's images made from the same Sentinel-2 samples
(:class:`util.data.sensor_view.SensorView`: rendered at the sensor's band centres, then mapped
onto the model's 12 slots):

1. **transfer** - a classifier finetuned on the 12 Sentinel-2 bands (from the pretrained encoder,
   all training labels) is evaluated on the test scenes as Landsat-8 OLI, HLS (Prithvi's 6
   bands), 4-band RGBN (PlanetScope) and Sentinel-2's 10 m bands only, with the missing slots
   (a) ``zeros``: slots with a band within 25 nm take it, the others are 0 (after normalisation),
   (b) ``nearest``: every slot copies the band nearest in wavelength,
   (c) ``adapter``: linear interpolation over wavelength, spectral groups without a band dropped
   from the token sequence (:class:`util.data.band_adapter.BandAdapter`);
2. **finetuning on each sensor** (adapter + group dropping) from the pretrained encoder vs random
   initialisation at 10 % of the labels (``evaluation.label_efficiency``'s finetune protocol).

Mean ± std over seeds (3 by default). Examples::

    # CI size (tiny data and model, 16 px, 2 seeds): well under a minute on a CPU
    python benchmarks/sensor_transfer.py --quick --out sensor_transfer_quick.json
    # the CPU-sized study of docs/sensors.md: synthetic data, a tiny MAE pretrained on synthetic
    # fMoW within the script (or --pretrained CKPT), 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/sensor_transfer.py --out sensor_transfer.json
    # your pretrained encoder on your EuroSAT copy
    python benchmarks/sensor_transfer.py --pretrained SpectralGPT+.pth --model vit_base_patch8_128 \\
        --data_root DATA/eurosat --input_size 128 --out transfer.json

Output: the table on stdout, ``--out`` (rows as JSON), ``<out>.details.json`` (per-seed values,
setup) and ``<out>.png`` (the plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.label_efficiency import synthetic_pretraining  # noqa: E402
from evaluation.label_efficiency import FinetuneConfig  # noqa: E402
from evaluation.label_efficiency_report import result_figure  # noqa: E402
from util.training.cli import add_debug_arg, run  # noqa: E402

#: rows: key -> (label, sensor id or None for the 12 Sentinel-2 bands, bands of that sensor)
SENSORS: dict[str, tuple[str, str | None, str | None]] = {
    "sentinel2": ("Sentinel-2 L2A, 12 bands (reference)", None, None),
    "landsat8": ("Landsat 8 OLI, 7 bands", "landsat8", None),
    "hls": ("HLS, Prithvi's 6 bands", "hls_prithvi6", None),
    "rgbn": ("RGBN, PlanetScope 4 bands", "planetscope_superdove", "blue,green,red,nir"),
    "s2_10m": ("Sentinel-2 10 m bands only", "sentinel2_l2a", "B02,B03,B04,B08"),
}
MAPS = ("zeros", "nearest", "adapter")
INITS = ("pretrained", "random")
COLUMNS = MAPS + INITS

# Presets. "full" is sized for a few minutes of CPU time (one thread); "quick" for CI.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "fmow_num": 600, "fmow_size": 48, "eurosat_num": 1000, "eurosat_size": 32,
        "model": "mae_vit_tiny_patch8_96", "input_size": 32, "pretrain_epochs": 20,
        "pretrain_batch_size": 32, "pretrain_lr": 1.5e-3, "mask_ratio": 0.75, "seeds": 3,
        "s2_finetune": FinetuneConfig(epochs=5, min_updates=60, max_updates=100, batch_size=32,
                                      head_init="fresh"),
        "sensor_finetune": FinetuneConfig(epochs=3, min_updates=20, max_updates=40, batch_size=32),
    },
    "quick": {
        "fmow_num": 24, "fmow_size": 24, "eurosat_num": 200, "eurosat_size": 16,
        "model": "mae_vit_tiny_patch8_96", "input_size": 16, "pretrain_epochs": 1,
        "pretrain_batch_size": 8, "pretrain_lr": 1.5e-3, "mask_ratio": 0.75, "seeds": 2,
        "s2_finetune": FinetuneConfig(epochs=1, min_updates=3, max_updates=3, batch_size=16,
                                      head_init="fresh"),
        "sensor_finetune": FinetuneConfig(epochs=1, min_updates=2, max_updates=2, batch_size=8,
                                          head_init="fresh"),
    },
}  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "sensor_transfer",
        description="A Sentinel-2 classifier on Landsat-8 / HLS / RGBN / S2-10 m bands: zero "
        "filling vs nearest band vs the wavelength adapter; and finetuning on each sensor from "
        "the pretrained encoder vs random init. Mean ± std over seeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI size: tiny data, 16 px, 2 seeds")
    p.add_argument("--pretrained", default=None, metavar="CKPT",
                   help="pretrained encoder (default: pretrain a tiny MAE on synthetic fMoW here)")  # fmt: skip
    p.add_argument("--data_root", default=None,
                   help="EuroSAT folder (default: synthetic EuroSAT written to --workdir)")  # fmt: skip
    p.add_argument("--native_size", type=int, default=None,
                   help="image side of --data_root when not the published 64 px")  # fmt: skip
    p.add_argument("--model", default=None, help="default: the checkpoint's (or the preset's)")
    p.add_argument("--input_size", type=int, default=None, help="default: the preset's")
    p.add_argument("--normalization", default=None,
                   help="default: the checkpoint's recorded normalisation")  # fmt: skip
    p.add_argument("--sensors", nargs="+", default=list(SENSORS), choices=list(SENSORS))
    p.add_argument("--fraction", type=float, default=10.0,
                   help="label percentage of the finetuning-on-each-sensor part")  # fmt: skip
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (preset: 3; quick 2)")
    p.add_argument("--seed", type=int, default=0, help="base seed: data, pretraining, subsets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on CUDA)")
    p.add_argument("--workdir", default="output_sensor_transfer", help="synthetic data + runs")
    p.add_argument("--out", default=None, help="JSON rows (default: print only)")
    p.add_argument("--plot", default=None, help="PNG plot (default: <out>.png)")
    add_debug_arg(p)
    return p


# --------------------------------------------------------------------------------------------
# the two parts
# --------------------------------------------------------------------------------------------
def _eval_set(setup: dict[str, Any], sensor: str | None, bands: str | None, how: str):
    """The test split as ``sensor`` sees it, through slot map ``how``; and the model's groups."""
    from util.data import build_dataset
    from util.data.sensor_view import SensorView
    from util.data.sensors import get_sensor
    from util.data.transforms import build_transforms

    tf = build_transforms("eurosat", False, setup["input_size"], setup["normalization"])
    groups = None
    if sensor is not None:
        tf = SensorView(tf, get_sensor(sensor, bands), how)
        groups = tf.groups
    ds = build_dataset("eurosat", setup["root"], split="test", transforms=tf, **setup["opts"])
    return ds, groups


def transfer(setup: dict[str, Any], sensors: list[str], seed: int, log) -> dict[str, dict]:
    """Part 1 for one seed: finetune on the 12 bands, evaluate every sensor x slot map."""
    from engine_finetune import evaluate
    from evaluation.label_efficiency import build_classifier, finetune_scores
    from evaluation.metrics import build_metrics
    from util.data import build_dataset, collate
    from util.data.transforms import build_transforms
    from util.training.loader import build_eval_loader
    from util.training.optim import autocast
    from util.training.sensor_input import set_input_groups

    cfg: FinetuneConfig = setup["s2_finetune"]
    size, norm = setup["input_size"], setup["normalization"]
    train = build_dataset("eurosat", setup["root"], split="train",
                          transforms=build_transforms("eurosat", True, size, norm), **setup["opts"])  # fmt: skip
    s2_test, _ = _eval_set(setup, None, None, "adapter")
    net = build_classifier(setup["model"], size, train.num_classes, setup["checkpoint"], seed,
                           cfg.drop_path)  # fmt: skip
    res = finetune_scores(net, train, s2_test, build_metrics(train.num_classes, False), False, cfg,
                          seed, setup["device"], setup["dtype"])  # fmt: skip
    log(f"seed {seed}: finetuned on 12 bands ({res['updates']} updates): top-1 {res['acc1']:.1f}")
    out: dict[str, dict] = {}
    for key in sensors:
        _, sensor, bands = SENSORS[key]
        out[key] = {}
        for how in MAPS:
            if sensor is None:  # the 12 bands: every map is the identity
                out[key][how] = res["acc1"]
                continue
            ds, groups = _eval_set(setup, sensor, bands, how)
            set_input_groups(net, groups)
            loader = build_eval_loader(ds, 64, collate_fn=collate)
            metrics = build_metrics(train.num_classes, False)
            amp = partial(autocast, setup["device"].type, setup["dtype"])
            out[key][how] = evaluate(net, loader, metrics, setup["device"], False, amp)["acc1"]
            log(f"seed {seed}: {key:>9s} {how:8s} top-1 {out[key][how]:.1f}")
        set_input_groups(net, None)
    return out


def finetune_on_sensors(setup: dict[str, Any], sensors: list[str], seeds: list[int], log):
    """Part 2: finetune on each sensor's bands (adapter), pretrained vs random, at the fraction."""
    from evaluation.label_efficiency import run as run_label_efficiency
    from util.data.sensors import get_sensor

    out: dict[str, dict[str, list[float]]] = {}
    for i, key in enumerate(sensors):
        _, sensor, bands = SENSORS[key]

        def prefixed(line: str, key: str = key, first: bool = i == 0) -> None:
            if first or not line.startswith("note:"):  # the notes are the same for every sensor
                log(f"{key:>9s} {line}")

        res = run_label_efficiency(
            {"pretrained": setup["checkpoint"], "random": None}, "eurosat", setup["root"],
            train_split="train", eval_split="test", model=setup["model"],
            input_size=setup["input_size"], normalization=setup["normalization"],
            fractions=[setup["fraction"]], seeds=seeds, protocols=("finetune",),
            finetune=setup["sensor_finetune"], device=setup["device"], dtype=setup["dtype"],
            native_size=setup["native_size"], log=prefixed,
            sensor=None if sensor is None else get_sensor(sensor, bands),
        )  # fmt: skip
        out[key] = {init: [r["value"] for r in res["results"] if r["init"] == init]
                    for init in INITS}  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# summary, table, plot
# --------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": round(float(v.mean()), 3), "std": round(std, 3), "n": int(v.size)}


def summarise(per_seed: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    """One row per sensor: its bands and groups, mean / std of every column, and whether the
    adapter beats zero filling by more than the seed spread (the larger of the two stds)."""
    from util.data.band_adapter import BandAdapter
    from util.data.sensors import get_sensor

    rows = []
    for key, cols in per_seed.items():
        label, sensor, bands = SENSORS[key]
        s = get_sensor(sensor or "sentinel2_l2a", bands)
        row: dict[str, Any] = {"sensor": key, "label": label, "bands": list(s.band_names),
                               "groups": list(BandAdapter(s).present_groups)}  # fmt: skip
        row.update({c: _stats(cols[c]) for c in COLUMNS if c in cols})
        if sensor is not None and "adapter" in row and "zeros" in row:
            gain = row["adapter"]["mean"] - row["zeros"]["mean"]
            spread = max(row["adapter"]["std"], row["zeros"]["std"])
            row["adapter_minus_zeros"] = round(gain, 3)
            row["adapter_beats_zeros"] = bool(gain > spread)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], fraction: float) -> str:
    """Markdown table of :func:`summarise`'s rows."""
    head = ["sensor (bands)", "groups", "zeros", "nearest", "adapter", "adapter - zeros",
            f"finetuned on it, {fraction:g} %: pretrained", "random init"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [f"{r['label']} ({', '.join(r['bands'])})" if r["sensor"] != "sentinel2"
                 else r["label"], ",".join(map(str, r["groups"]))]  # fmt: skip
        for c in COLUMNS:
            cells.append(f"{r[c]['mean']:.1f} ± {r[c]['std']:.1f}" if c in r else "-")
        if "adapter_minus_zeros" in r:
            verdict = "> spread" if r["adapter_beats_zeros"] else "within spread"
            cells.insert(5, f"{r['adapter_minus_zeros']:+.1f} ({verdict})")
        else:
            cells.insert(5, "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(test top-1 %, mean ± std over seeds)"


def plot_rows(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG: grouped bars per sensor (zeros, nearest, adapter; finetuned pretrained / random)."""
    width = 0.8 / len(COLUMNS)
    x = np.arange(len(rows))
    names = {"pretrained": "finetuned on it: pretrained", "random": "finetuned on it: random init"}
    with result_figure(path, (8, 4), title) as ax:
        for j, c in enumerate(COLUMNS):
            means = [r[c]["mean"] if c in r else np.nan for r in rows]
            stds = [r[c]["std"] if c in r else 0.0 for r in rows]
            ax.bar(x + (j - (len(COLUMNS) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
                   label=names.get(c, f"S2 classifier: {c}"), color=f"C{j}")  # fmt: skip
        ax.set_xticks(x, [r["sensor"] for r in rows])
        ax.set_ylabel("test top-1 (%)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return Path(path)


# --------------------------------------------------------------------------------------------
# the whole study
# --------------------------------------------------------------------------------------------
def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Data, pretrained checkpoint and settings of the run (the preset's, overridden by flags)."""
    import torch

    from evaluation.label_efficiency import checkpoint_info
    from util.training.args import resolve_dtype

    preset = dict(PRESETS["quick" if args.quick else "full"])
    work = Path(args.workdir)
    if not 0 < args.fraction <= 100:
        raise ValueError(f"--fraction must be a percentage in (0, 100], got {args.fraction}")
    if args.pretrained is not None and not Path(args.pretrained).is_file():
        raise FileNotFoundError(f"--pretrained {args.pretrained}: no such file")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise FileNotFoundError(f"--data_root {args.data_root}: no such folder")
    ckpt = args.pretrained
    if ckpt is None:  # synthetic fMoW -> tiny MAE (+ synthetic EuroSAT unless --data_root)
        ckpt = synthetic_pretraining(work, preset, args.device, args.seed, args.data_root is None)
    elif args.data_root is None:
        from util.data.synthetic import generate

        if not (work / "eurosat" / "eurosat-train.txt").is_file():
            generate("eurosat", work / "eurosat", preset["eurosat_num"], preset["eurosat_size"],
                     args.seed + 1)  # fmt: skip
    recorded = checkpoint_info(ckpt)
    root = args.data_root or str(work / "eurosat")
    native = args.native_size if args.data_root else preset["eurosat_size"]
    from evaluation.label_efficiency import dataset_options

    device = torch.device(args.device)
    return {
        "checkpoint": str(ckpt), "root": root, "native_size": native,
        "opts": dataset_options("eurosat", native),
        "model": args.model or recorded.get("model") or preset["model"],
        "input_size": args.input_size or (preset["input_size"] if args.pretrained is None
                                          else recorded.get("input_size")) or preset["input_size"],
        "normalization": args.normalization or recorded.get("normalization") or "minmax",
        "fraction": args.fraction / 100.0, "device": device,
        "dtype": resolve_dtype(args.dtype, device),
        "seeds": [args.seed + i for i in range(args.seeds or preset["seeds"])],
        "s2_finetune": preset["s2_finetune"], "sensor_finetune": preset["sensor_finetune"],
    }  # fmt: skip


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run both parts; print the table, write JSON and the plot; returns rows, per-seed values,
    the table and the setup."""
    start = time.time()
    setup = resolve(args)

    def log(line: str) -> None:
        print(line, flush=True)

    per_seed: dict[str, dict[str, list[float]]] = {
        k: {c: [] for c in COLUMNS} for k in args.sensors
    }
    for seed in setup["seeds"]:
        for key, cols in transfer(setup, args.sensors, seed, log).items():
            for how, value in cols.items():
                per_seed[key][how].append(value)
    for key, cols in finetune_on_sensors(setup, args.sensors, setup["seeds"], log).items():
        per_seed[key].update(cols)
    rows = summarise(per_seed)
    table = format_table(rows, 100 * setup["fraction"])
    title = (f"synthetic EuroSAT: {setup['model']} @ {setup['input_size']} px, "
             f"{setup['normalization']}; {len(setup['seeds'])} seeds")  # fmt: skip
    print(f"\n{title}\n{table}")
    seconds = round(time.time() - start, 1)
    print(f"took {seconds:.0f} s")
    plain_setup = {
        k: (v.__dict__ if isinstance(v, FinetuneConfig) else v) for k, v in setup.items()
    }
    result = {"rows": rows, "per_seed": per_seed, "table": table, "seconds": seconds,
              "setup": plain_setup}  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")
        details = out.with_name(out.stem + ".details.json")
        details.write_text(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1,
                                      default=str) + "\n")  # fmt: skip
        result["plot"] = plot_rows(rows, Path(args.plot) if args.plot else out.with_suffix(".png"),
                                   title)  # fmt: skip
        print(f"wrote {out}, {details} and {result['plot']}")
    elif args.plot:
        result["plot"] = plot_rows(rows, args.plot, title)
    return result


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run :func:`main`; user errors are one ``error: ...`` line and exit code 2."""
    import logging

    args = get_args_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    return run(main, args)


if __name__ == "__main__":
    cli()
