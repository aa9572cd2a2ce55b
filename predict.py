"""Apply a checkpoint to your own Sentinel-2 scene: GeoTIFF / SAFE bands in, georeferenced GeoTIFF out.

Examples::

    # land-cover segmentation of an L2A granule (bands found by name in the SAFE folders)
    python predict.py --checkpoint segmunich/checkpoint-best.pth \\
        --input S2B_MSIL2A_20230601T101559_N0509_R065_T32UPU_20230601T124511.SAFE --output classes.tif
    # change between two dates on one grid
    python predict.py --checkpoint oscd/checkpoint-best.pth --input 2019/ --input2 2023/ \\
        --output change.tif --probabilities
    # a Landsat 8/9 Collection 2 Level-2 product folder or an HLS granule (sensor from the names;
    # bands mapped onto the model's by wavelength, QA_PIXEL / Fmask clouds as nodata)
    python predict.py --checkpoint segmunich/checkpoint-best.pth \\
        --input LC08_L2SP_195027_20230601_20230607_02_T1 --output classes.tif
    # token embeddings (any checkpoint, e.g. the released SpectralGPT+.pth)
    python predict.py --checkpoint SpectralGPT+.pth --model mae_vit_base_patch8_128 \\
        --task embed --input scene.tif --output embeddings.tif

Wiring only: the logic is in ``util/inference/model_loading.py`` (checkpoint -> model),
``util/inference/predict.py`` (tiling, blending, writing) and ``util/inference/scene.py``
(band discovery and windowed reading).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch

from util.data.transforms import NORMALIZATIONS
from util.inference.model_loading import TASKS, load_model
from util.inference.predict import default_probabilities_path, format_summary, predict_scene
from util.inference.scene import RESAMPLING
from util.inference.tiling import BLEND_MODES
from util.training.args import DTYPES, HelpFormatter, resolve_dtype
from util.training.cli import add_debug_arg, parse_and_run
from util.training.runtime import default_device, setup_backends


def _offset(value: str) -> str | float:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number, got {value!r}") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "predict.py",
        description="Run a SpectralGPT checkpoint over a Sentinel-2 scene and write a GeoTIFF "
        "on the scene's grid (classes, change, probabilities or token embeddings).",
        formatter_class=HelpFormatter,
    )
    io = parser.add_argument_group("input / output")
    io.add_argument("--checkpoint", required=True, help="checkpoint written by this project "
                    "(any task) or the paper's (then also --model)")  # fmt: skip
    io.add_argument(
        "--input", required=True, nargs="+", metavar="PATH",
        help="a stacked GeoTIFF (band descriptions name the bands), per-band files (*_B02.tif, "
        "B02.jp2, ...) or a folder holding them (searched recursively: a .SAFE granule works); "
        "20/60 m bands are resampled to the 10 m grid",
    )  # fmt: skip
    io.add_argument("--input2", nargs="+", metavar="PATH", default=None,
                    help="second date for --task change (same pixel grid as --input)")  # fmt: skip
    io.add_argument("--output", required=True, help="GeoTIFF to write")
    io.add_argument(
        "--probabilities", nargs="?", const="auto", default=None, metavar="PATH",
        help="also write the blended class/change probabilities as float16 bands (default path: "
        "OUTPUT with suffix _probabilities)",
    )  # fmt: skip
    io.add_argument("--input_bands", default=None, metavar="B01,B02,...",
                    help="band order of a stacked input without band descriptions")  # fmt: skip
    io.add_argument(
        "--dn_offset", default="auto", metavar="auto|N", type=_offset,
        help="added to every band's digital numbers; auto: the product's BOA/RADIO_ADD_OFFSET "
        "from its MTD_MSIL*.xml (-1000 since processing baseline 04.00), else 0",
    )  # fmt: skip
    io.add_argument("--sensor", default=None, metavar="ID|name:nm,...",
                    help="the input's sensor (landsat8, hls_s30, rgbn, ... or custom name:nm "
                    "bands; util/data/sensors.py); default: a Landsat C2 L2 / HLS product recognised "
                    "by its file names, else the sensor the checkpoint was trained on, else "
                    "Sentinel-2")  # fmt: skip
    io.add_argument("--resampling", default="bilinear", choices=RESAMPLING,
                    help="resampling of 20/60 m bands onto the 10 m grid")  # fmt: skip
    io.add_argument("--strict_input", action="store_true",
                    help="refuse a scene on another scale than the model's (e.g. float "
                    "reflectance 0-1 for a model trained on digital numbers) instead of "
                    "converting it with one log line; 8-bit and out-of-range scenes are always "
                    "refused")  # fmt: skip

    model = parser.add_argument_group("model")
    model.add_argument("--task", default="auto", choices=TASKS,
                       help="auto: the checkpoint's task (a pretraining checkpoint embeds)")  # fmt: skip
    model.add_argument("--model", default=None,
                       help="factory name, when the checkpoint does not record it (the paper's files)")  # fmt: skip
    model.add_argument("--input_size", type=int, default=None,
                       help="tile size in pixels (default: the checkpoint's input size)")  # fmt: skip
    model.add_argument("--normalization", default=None, choices=sorted(NORMALIZATIONS),
                       help="default: the normalisation recorded in the checkpoint")  # fmt: skip
    model.add_argument("--norm_stats", default="scene", choices=("scene", "tile"),
                       help="statistics of a per-image normalisation (minmax): the whole scene's "
                       "valid pixels, or each tile's own (closer to models trained on small "
                       "patches, e.g. SegMunich)")  # fmt: skip
    model.add_argument("--embed_groups", default="mean", choices=("mean", "all"),
                       help="--task embed: mean over the spectral groups, or all groups' features")  # fmt: skip

    run = parser.add_argument_group("tiling / runtime")
    run.add_argument("--overlap", type=int, default=None,
                     help="pixels shared by neighbouring tiles (default: a quarter tile, whole "
                     "patches for --task embed; 0 for classification)")  # fmt: skip
    run.add_argument("--blend", default=None, choices=BLEND_MODES,
                     help="weights of overlapping tiles (default: cosine; uniform for classification)")  # fmt: skip
    run.add_argument("--batch_size", type=int, default=16, help="tiles per forward pass")
    run.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    run.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                     help="default: bfloat16 autocast on CUDA, float32 on CPU")  # fmt: skip
    run.add_argument("--num_threads", type=int, default=None, help="CPU threads for torch")
    run.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_arg(parser)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model, predict the scene, write the outputs; returns the summary dict."""
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device or default_device())
    setup_backends(device)
    dtype = resolve_dtype(args.dtype, device)
    lm = load_model(
        args.checkpoint,
        task=args.task,
        model_name=args.model,
        input_size=args.input_size,
        normalization=args.normalization,
    )
    probs = args.probabilities
    if probs == "auto":
        probs = default_probabilities_path(args.output)
    file_bands = [b for b in args.input_bands.split(",") if b] if args.input_bands else None
    logging.getLogger(__name__).info(
        "task %s, %s px tiles, normalisation %s, %s on %s",
        lm.task, lm.input_size, lm.normalization, str(dtype).replace("torch.", ""), device,
    )  # fmt: skip
    summary = predict_scene(
        lm,
        args.input,
        args.output,
        inputs2=args.input2,
        probabilities_path=probs,
        overlap=args.overlap,
        blend=args.blend,
        batch_size=args.batch_size,
        device=device,
        dtype=dtype,
        embed_groups=args.embed_groups,
        file_bands=file_bands,
        resampling=args.resampling,
        norm_stats=args.norm_stats,
        dn_offset=args.dn_offset,
        progress=not args.no_progress,
        sensor=args.sensor,
        strict_input=args.strict_input,
    )
    print(format_summary(summary), flush=True)
    return summary


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    return parse_and_run(get_args_parser(), main, argv)


if __name__ == "__main__":
    cli()
