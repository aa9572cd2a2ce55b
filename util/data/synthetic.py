"""Synthetic Sentinel-2 data sets written in the official on-disk layouts, as real GeoTIFFs.

Scenes come from :mod:`util.data.synthetic_scenes`: land-cover maps with spatial structure, each
cover with a plausible 13-band reflectance spectrum (:data:`COVERS`), per-scene spectral variation,
texture and noise, or scenes of land uses (:data:`LAND_USES`). Labels are derived from the
generated cover (dominant cover, cover fractions, segmentation codes, changes between two dates),
so a model can learn them. Files are uint16 digital numbers (reflectance x 10000, like L1C/L2A
products) with a UTM CRS and geotransform; 20 m and 60 m bands are written at their native size
where the layout stores one file per band. Each layout's writer is ``write_synthetic`` in its
dataset's module (:mod:`util.data.fmow`, ...), next to the reader.

Library: ``generate(name, root, num=None, size=None, seed=0, **options)``.
CLI: ``python -m util.data.synthetic NAME ROOT [--num N --size S --seed K]``; BigEarthNet v2
(reBEN) layout: ``python -m util.data.synthetic bigearthnet ROOT --ben_version 2``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from util.data import bigearthnet, bigearthnet_v2, eurosat, fmow, oscd, segmunich
from util.data.registry import resolve_name
from util.data.synthetic_scenes import COVERS, LAND_USES, render_land_use, render_scene

logger = logging.getLogger(__name__)

__all__ = [
    "COVERS",
    "GENERATORS",
    "LAND_USES",
    "generate",
    "main",
    "render_land_use",
    "render_scene",
]

GENERATORS: dict[str, tuple[Callable[..., None], int, int]] = {
    # name: (writer, default num, default size)
    "fmow_sentinel": (fmow.write_synthetic, 20, 64),
    "bigearthnet": (bigearthnet.write_synthetic, 20, 60),
    "eurosat": (eurosat.write_synthetic, 30, 64),
    "oscd": (oscd.write_synthetic, 4, 96),
    "segmunich": (segmunich.write_synthetic, 10, 64),
}
#: Other versions of a layout (``ben_version=2``): (name, version) -> as in :data:`GENERATORS`.
VERSIONS: dict[tuple[str, int], tuple[Callable[..., None], int, int]] = {
    ("bigearthnet", 2): (bigearthnet_v2.write_synthetic, 20, 60),
}


def generate(
    name: str,
    root: str | os.PathLike,
    num: int | None = None,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    **options,
) -> Path:
    """Write a synthetic data set ``name`` in its official layout under ``root``.

    Args:
        name: registry name or paper alias (``fmow_sentinel``, ``bigearthnet``, ``eurosat``,
            ``oscd``, ``segmunich``).
        root: output folder (created).
        num: number of images (OSCD: cities). Defaults: 20, 20, 30, 4, 10.
        size: image side in 10 m pixels. fMoW-Sentinel: sizes vary uniformly in
            ``[0.4 * size, size]``, or pass ``(lo, hi)``. BigEarthNet: a multiple of 6 (real: 120).
            OSCD: city sides vary in ``[0.8, 1.25] * size``.
        seed: everything is deterministic given the seed.
        **options: ``stacked=True`` (bigearthnet: also write the paper's 12-band ``<id>/<id>.tif``
            and ``bigearthnet_pretrain.csv``), ``ben_version=2`` (bigearthnet: the v2 / reBEN
            layout instead, with ``removed=N`` patches flagged snow/cloud/shadow, default 2),
            ``complete_splits=False`` (eurosat: allow fewer than 30 images, whose val/test then
            lack classes), ``layout="merged"`` (oscd: the paper's merged copy),
            ``covers=(names...)`` (segmunich: draw the scenes from these covers only - fewer,
            always co-occurring classes make a quick learnability check; default all 13),
            ``progress=True`` (tqdm bar).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    key = resolve_name(name)
    writer, default_num, default_size = GENERATORS[key]
    version = bigearthnet.parse_ben_version(options.pop("ben_version", None))
    if version is not None and key != "bigearthnet":
        raise ValueError(f"ben_version is an option of bigearthnet, not of {key}")
    if version is not None and version > 1:
        writer, default_num, default_size = VERSIONS[key, version]
    num = default_num if num is None else int(num)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    size = default_size if size is None else size
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer(root, num, size, rng, **options)
    logger.info("wrote synthetic %s (%d images, size %s) to %s", key, num, size, root)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m util.data.synthetic",
        description="Write a synthetic Sentinel-2 data set in its official layout (real GeoTIFFs).",
    )
    parser.add_argument("name", help=f"one of {', '.join(GENERATORS)}")
    parser.add_argument("root", help="output folder")
    parser.add_argument("--num", type=int, default=None, help="number of images (OSCD: cities)")
    parser.add_argument("--size", type=int, default=None, help="image side in 10 m pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stacked", action="store_true", help="bigearthnet: also write stacked 12-band tifs"
    )
    parser.add_argument(
        "--ben_version",
        default=None,
        choices=("1", "2"),
        help="bigearthnet: 1 (v1 layout, default) or 2 (v2 / reBEN: metadata.parquet, "
        "BigEarthNet-S2/<tile>/<patch>/, Reference_Maps/)",
    )
    parser.add_argument(
        "--layout", default=None, choices=("official", "merged"), help="oscd layout"
    )
    from util.training.cli import add_debug_arg, run

    add_debug_arg(parser)
    args = parser.parse_args(argv)
    run(_generate_cli, args, parser=parser)


def _generate_cli(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    options = {}
    if args.stacked:
        options["stacked"] = True
    if args.layout:
        options["layout"] = args.layout
    if args.ben_version:
        options["ben_version"] = int(args.ben_version)
    try:
        root = generate(
            args.name, args.root, num=args.num, size=args.size, seed=args.seed, **options
        )
    except (KeyError, ValueError, TypeError) as err:
        parser.error(str(err))
    print(f"wrote synthetic {args.name} to {root}")


if __name__ == "__main__":
    main()
