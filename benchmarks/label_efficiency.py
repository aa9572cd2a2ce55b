"""Label efficiency of pretrained encoders vs random initialisation (kNN, linear probe, finetune).

Evaluate checkpoints on a classification dataset of the registry at 1 / 10 / 100 % of the labels
(stratified, seeded subsets), 3 seeds, and print one table (mean ± std over seeds); write the rows
as JSON and a PNG plot. The logic lives in :mod:`evaluation.label_efficiency`.

    # your checkpoints on your data (normalisation: the first checkpoint's record by default)
    python benchmarks/label_efficiency.py --checkpoint pretrain/checkpoint-last.pth \
        --dataset eurosat --data_root DATA/eurosat --out results/label_eff.json

    # the self-contained preset: synthetic fMoW-like scenes, a tiny MAE pretrained on them,
    # synthetic EuroSAT-like classes; about 10 minutes on 2 CPU cores
    python benchmarks/label_efficiency.py --quick --out label_eff_quick.json

Output JSON: a list of rows ``{"init", "protocol", "fraction", "mean", "std", "n"}`` (percent,
``fraction`` in (0, 1]); the per-seed values, the setup and the notes go next to it
(``<out>.details.json``) and the plot to ``<out>.png`` unless ``--plot`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.label_efficiency import PROTOCOLS, FinetuneConfig  # noqa: E402
from evaluation.label_efficiency import run as run_evaluation  # noqa: E402
from evaluation.label_efficiency_report import format_table, plot_rows  # noqa: E402
from util.training.args import HelpFormatter  # noqa: E402
from util.training.cli import add_debug_arg, run  # noqa: E402
from util.training.sensor_input import add_sensor_args, sensor_of  # noqa: E402

logger = logging.getLogger("label_efficiency")

# The --quick preset: data sizes and schedules chosen for ~10 minutes on 2 CPU cores.
QUICK = {
    "fmow_num": 1000,
    "fmow_size": 48,
    "eurosat_num": 2000,  # 1200 train / 400 val / 400 test
    "eurosat_size": 32,
    "model": "mae_vit_tiny_patch8_96",
    "input_size": 32,
    "pretrain_epochs": 30,
    "pretrain_batch_size": 32,
    "pretrain_lr": 1.5e-3,
    "mask_ratio": 0.75,
    "finetune": FinetuneConfig(epochs=3, min_updates=20, max_updates=40, batch_size=32),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "label_efficiency",
        description="kNN / linear probe / finetune accuracy at label fractions, pretrained vs "
        "random initialisation, mean ± std over seeds.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        nargs="*",
        default=[],
        metavar="[NAME=]CKPT",
        help="pretrained checkpoints (this project's or the paper's); NAME labels the column",
    )
    p.add_argument("--no_random", action="store_true", help="skip the random-init baseline")
    p.add_argument("--dataset", default="eurosat", help="classification dataset of the registry")
    p.add_argument("--data_root", default=None, help="dataset folder (official layout)")
    p.add_argument(
        "--native_size",
        type=int,
        default=None,
        help="image side of this copy of the dataset when not the published one (synthetic data)",
    )
    p.add_argument("--train_split", default="train", help="split the label subsets come from")
    p.add_argument("--eval_split", default="val", help="split accuracy is measured on")
    p.add_argument("--model", default=None, help="default: the first checkpoint's model")
    p.add_argument("--input_size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument(
        "--normalization",
        default=None,
        help="default: the first checkpoint's recorded normalisation (else the dataset's own)",
    )
    p.add_argument(
        "--fractions", type=float, nargs="+", default=[1, 10, 100], help="label percentages"
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (subsets, random inits)")
    p.add_argument("--seed", type=int, default=0, help="base seed: data, pretraining, subsets")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--k", type=int, default=20, help="kNN neighbours")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature")
    g = p.add_argument_group("finetune protocol (short schedule)")
    ft = FinetuneConfig()
    g.add_argument("--ft_epochs", type=int, default=ft.epochs)
    g.add_argument("--ft_min_updates", type=int, default=ft.min_updates)
    g.add_argument("--ft_max_updates", type=int, default=ft.max_updates)
    g.add_argument("--ft_batch_size", type=int, default=ft.batch_size)
    g.add_argument("--ft_lr", type=float, default=ft.lr)
    g.add_argument("--ft_layer_decay", type=float, default=ft.layer_decay)
    g.add_argument(
        "--ft_head_init",
        default=ft.head_init,
        choices=("probe", "fresh"),
        help="probe: head starts from the linear probe of the subset (LP-FT); fresh: std 2e-5",
    )
    add_sensor_args(p)
    p.add_argument("--batch_size", type=int, default=64, help="feature extraction batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on CUDA)")
    p.add_argument("--out", default=None, help="JSON rows (default: print only)")
    p.add_argument("--plot", default=None, help="PNG plot (default: <out>.png)")
    q = p.add_argument_group("--quick preset (synthetic data + tiny pretraining, ~10 min on CPU)")
    q.add_argument("--quick", action="store_true", help="generate data, pretrain, evaluate")
    q.add_argument("--workdir", default="output_label_efficiency", help="--quick: data + runs")
    add_debug_arg(p)
    return p


def _parse_inits(args: argparse.Namespace) -> dict[str, str | None]:
    inits: dict[str, str | None] = {}
    for item in args.checkpoint:
        name, _, path = item.rpartition("=")
        name = name or ("pretrained" if len(args.checkpoint) == 1 else Path(path).stem)
        if not Path(path).is_file():
            raise FileNotFoundError(f"--checkpoint {path}: no such file")
        inits[name] = path
    if not args.no_random:
        inits["random"] = None
    if not inits:
        raise ValueError("nothing to evaluate: give --checkpoint or drop --no_random")
    return inits


def synthetic_pretraining(
    work: Path, preset: dict[str, Any], device: str, seed: int, eurosat: bool = True
) -> Path:
    """Synthetic fMoW-like scenes -> a tiny MAE pretrained on them (and synthetic EuroSAT-like
    classes in ``work/eurosat`` when ``eurosat``); a rerun reuses what ``work`` holds. ``preset``:
    the keys of :data:`QUICK`. Returns the pretraining checkpoint."""
    import main_pretrain
    from util.data.synthetic import generate

    fmow, pre = work / "fmow", work / "pretrain"
    t0 = time.time()
    if not (fmow / "fmow-sentinel" / "train.csv").is_file():
        generate(
            "fmow_sentinel", fmow, preset["fmow_num"], preset["fmow_size"], seed, progress=True
        )
    if eurosat and not (work / "eurosat" / "eurosat-train.txt").is_file():
        generate("eurosat", work / "eurosat", preset["eurosat_num"], preset["eurosat_size"], seed + 1, progress=True)  # fmt: skip
    print(f"[synthetic] data in {work} ({time.time() - t0:.0f} s)", flush=True)
    ckpt = pre / "checkpoint-last.pth"
    epochs = preset["pretrain_epochs"]
    t0 = time.time()
    if not (ckpt.is_file() and (pre / f"checkpoint-{epochs - 1}.pth").is_file()):
        print(f"[synthetic] pretraining {preset['model']} at {preset['input_size']} px, {epochs} epochs", flush=True)  # fmt: skip
        main_pretrain.cli(
            [
                "--model", preset["model"], "--input_size", str(preset["input_size"]),
                "--mask_ratio", str(preset["mask_ratio"]), "--dataset_type", "fmow_sentinel",
                "--train_path", str(fmow), "--epochs", str(epochs), "--warmup_epochs", "2",
                "--batch_size", str(preset["pretrain_batch_size"]), "--lr", str(preset["pretrain_lr"]),
                "--num_workers", "1", "--device", device, "--seed", str(seed),
                "--print_freq", "10", "--save_every", str(epochs), "--vis_every", "0",
                "--output_dir", str(pre),
            ]
        )  # fmt: skip
        print(f"[synthetic] pretraining took {time.time() - t0:.0f} s", flush=True)
    return ckpt


def quick_setup(args: argparse.Namespace) -> None:
    """--quick: synthetic fMoW-like scenes -> tiny MAE pretraining; synthetic EuroSAT-like data."""
    work = Path(args.workdir)
    eurosat = work / "eurosat"
    ckpt = synthetic_pretraining(work, QUICK, args.device, args.seed)
    args.checkpoint = [f"pretrained={ckpt}"]
    args.dataset, args.data_root = "eurosat", str(eurosat)
    args.native_size = QUICK["eurosat_size"]
    ft: FinetuneConfig = QUICK["finetune"]
    args.ft_epochs, args.ft_min_updates, args.ft_max_updates = (
        ft.epochs,
        ft.min_updates,
        ft.max_updates,
    )
    args.ft_batch_size = ft.batch_size
    if args.out is None:
        args.out = str(work / "label_efficiency.json")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation; returns :func:`evaluation.label_efficiency.run`'s dict plus output paths."""
    import torch

    from util.training.args import resolve_dtype

    start = time.time()
    if args.quick:
        quick_setup(args)
    if not args.data_root:
        raise ValueError("--data_root is required (or --quick)")
    from util.data import resolve_name

    try:
        args.dataset = resolve_name(args.dataset)
    except KeyError as err:
        raise ValueError(f"--dataset: {err.args[0]}") from None
    inits = _parse_inits(args)
    device = torch.device(args.device)
    ft = FinetuneConfig(
        epochs=args.ft_epochs,
        min_updates=args.ft_min_updates,
        max_updates=args.ft_max_updates,
        batch_size=args.ft_batch_size,
        lr=args.ft_lr,
        layer_decay=args.ft_layer_decay,
        head_init=args.ft_head_init,
    )
    result = run_evaluation(
        inits,
        args.dataset,
        args.data_root,
        train_split=args.train_split,
        eval_split=args.eval_split,
        model=args.model,
        input_size=args.input_size,
        normalization=args.normalization,
        fractions=[f / 100.0 for f in args.fractions],
        seeds=[args.seed + i for i in range(args.seeds)],
        protocols=args.protocols,
        k=args.k,
        temperature=args.temperature,
        finetune=ft,
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        batch_size=args.batch_size,
        native_size=args.native_size,
        sensor=sensor_of(args),
        log=lambda line: print(line, flush=True),
    )
    setup = result["setup"]
    sizes = ", ".join(f"{100 * float(f):g} % = {n}" for f, n in result["subset_sizes"].items())
    title = (
        f"{args.dataset}: {setup['model']} @ {setup['input_size']} px, {setup['normalization']}; "
        f"{args.seeds} seeds" + (f"; as {setup['sensor']}" if setup.get("sensor") else "")
    )
    print()
    print(f"{title}; training samples per fraction: {sizes}")
    for note in result["notes"]:
        print(f"note: {note}")
    table = format_table(result["rows"], result["metric"])
    print(table)
    result["table"] = table
    result["seconds"] = round(time.time() - start, 1)
    print(f"took {result['seconds']:.0f} s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result["rows"], indent=1) + "\n")
        details = out.with_name(out.stem + ".details.json")
        details.write_text(
            json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1, default=str)
        )
        plot = Path(args.plot) if args.plot else out.with_suffix(".png")
        plot_rows(result["rows"], plot, title)
        result["out"], result["plot"] = out, plot
        print(f"wrote {out}, {details} and {plot}")
    elif args.plot:
        result["plot"] = plot_rows(result["rows"], args.plot, title)
    return result


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run :func:`main`; user errors are one ``error: ...`` line and exit code 2."""
    args = get_args_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING  # per-cell lines are printed anyway
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    return run(main, args)


if __name__ == "__main__":
    cli()
