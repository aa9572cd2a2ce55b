"""BigEarthNet-S2 v1: one GeoTIFF per band (or the paper's pre-stacked 12-band file), CORINE
labels in JSON metadata, the 19- and 43-class nomenclatures; and a synthetic copy of that layout.

:class:`BigEarthNet` also tells v1 from v2 (reBEN, :mod:`util.data.bigearthnet_v2`) by the folder
(:func:`detect_ben_version`) and becomes a :class:`~util.data.bigearthnet_v2.BigEarthNetV2` on a
v2 folder, so ``--dataset_type bigearthnet`` reads either."""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.data import synthetic_scenes as scenes
from util.data.base import SentinelDataset, read_index_lines
from util.data.errors import IndexFileError, LabelError
from util.data.fmow import FMOW_COLUMNS
from util.data.raster import (
    BandGroups,
    check_resampling,
    first_existing,
    read_band_groups,
    require_file,
)
from util.data.sentinel2 import BANDS, L1C_BANDS, MODEL_BANDS

logger = logging.getLogger(__name__)

__all__ = [
    "BEN19_CLASSES",
    "BEN43_CLASSES",
    "BEN43_TO_19",
    "BigEarthNet",
    "detect_ben_version",
    "write_synthetic",
]

#: Folder of the official archive that holds the patch folders (``<root>`` may be above it).
BEN_SUBDIR = "BigEarthNet-v1.0"
#: v2 (reBEN): labels and splits of every patch, and the folder of ``<tile>/<patch>/`` folders.
BEN_V2_METADATA = "metadata.parquet"
BEN_V2_S2 = "BigEarthNet-S2"
#: What each layout is recognised by, as the unknown-layout error names it.
BEN_LAYOUTS = (
    "v1: bigearthnet-{train,val,test}.csv (or the paper's bigearthnet_{train,val,test}.txt) with "
    f"patch folders [{BEN_SUBDIR}/]<patch>/",
    f"v2: {BEN_V2_METADATA} + {BEN_V2_S2}/<tile>/<patch>/",
)

#: BigEarthNet's 43 CORINE land-cover names, in the official label-index order.
BEN43_CLASSES: tuple[str, ...] = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports",
    "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
    "Sport and leisure facilities", "Non-irrigated arable land", "Permanently irrigated land",
    "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland", "Moors and heathland", "Sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock", "Sparsely vegetated areas",
    "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes", "Salines", "Intertidal flats",
    "Water courses", "Water bodies", "Coastal lagoons", "Estuaries", "Sea and ocean",
)  # fmt: skip

#: BigEarthNet-19 nomenclature, in index order (spec §5.5).
BEN19_CLASSES: tuple[str, ...] = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland/shrub",
    "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
)  # fmt: skip

_BEN_GROUPS = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": (
        "Vineyards", "Fruit trees and berry plantations", "Olive groves",
        "Annual crops associated with permanent crops",
    ),
    "Natural grassland and sparsely vegetated areas": ("Natural grassland", "Sparsely vegetated areas"),
    "Moors, heathland and sclerophyllous vegetation": ("Moors and heathland", "Sclerophyllous vegetation"),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water bodies", "Water courses"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}  # fmt: skip

#: 43-name -> 19-class index; names absent here (roads, ports, bare rock, ...) have no 19-class label.
BEN43_TO_19: dict[str, int] = {
    **{n: BEN19_CLASSES.index(n) for n in BEN43_CLASSES if n in BEN19_CLASSES},
    **{n: BEN19_CLASSES.index(g) for g, names in _BEN_GROUPS.items() for n in names},
}


def parse_ben_version(value: Any) -> int | None:
    """``1``, ``2``, or ``None`` (detect) from ``ben_version`` (``1``/``"v1"``, ``2``/``"v2"``,
    ``None``/``"auto"``/``0``)."""
    key = str(value).strip().lower().lstrip("v") if value is not None else "auto"
    if key in ("auto", "0", "none", ""):
        return None
    if key in ("1", "2"):
        return int(key)
    raise ValueError(f"ben_version must be 1, 2 or auto, got {value!r}")


def detect_ben_version(
    root: str | os.PathLike, index: str | os.PathLike | None = None, ben_version: Any = None
) -> int:
    """BigEarthNet layout of ``root``: 2 for reBEN (``metadata.parquet`` + ``BigEarthNet-S2/``, or
    a ``.parquet`` index), 1 for v1 (its split files or ``BigEarthNet-v1.0/``, or any other
    index file); ``ben_version`` 1 or 2 forces it.

    Raises:
        IndexFileError: neither layout is there (one line naming what both need).
    """
    forced = parse_ben_version(ben_version)
    if forced is not None:
        return forced
    root = Path(root)
    if index is not None and Path(index).suffix.lower() == ".parquet":
        return 2
    has_v2 = (root / BEN_V2_METADATA).is_file() and (root / BEN_V2_S2).is_dir()
    v1_files = [
        root / name.format(split=split)
        for name in BigEarthNet.split_files
        for split in ("train", "val", "test")
    ]
    has_v1 = any(p.is_file() for p in v1_files) or (root / BEN_SUBDIR).is_dir()
    if has_v2:
        if has_v1:
            logger.info("%s holds BigEarthNet v1 and v2; reading v2 (--ben_version 1: v1)", root)
        return 2
    if has_v1 or index is not None:
        return 1
    found = [n for n in (BEN_V2_METADATA, BEN_V2_S2) if (root / n).exists()]
    raise IndexFileError(
        root,
        "not a BigEarthNet folder: looked for "
        + " and ".join(BEN_LAYOUTS)
        + (f" (found only {' and '.join(found)})" if found else ""),
    )


class BigEarthNet(SentinelDataset):
    """BigEarthNet-S2 v1 patches: one GeoTIFF per band, or the paper's pre-stacked 12-band tif.

    Layouts read (auto-detected per patch):

    * official: ``<root>[/BigEarthNet-v1.0]/<patch>/<patch>_B01.tif`` ... ``_B12.tif``, ``_B8A.tif``
      (10/20/60 m bands at native size: 120/60/20 px), resampled on read to the 10 m grid;
    * paper: ``<root>/<patch>/<patch>.tif`` (12 bands in model order, already on one grid).

    Labels come from ``<patch>_labels_metadata.json`` (``labels``: CORINE names).

    On a v2 folder (``metadata.parquet`` + ``BigEarthNet-S2/``, see :func:`detect_ben_version`)
    or with ``ben_version=2`` the instance is a :class:`~util.data.bigearthnet_v2.BigEarthNetV2`
    (same sample dict; its own options ``target``).

    Args:
        root: data root.
        split: ``train``/``val``/``test``: official ``<root>/bigearthnet-<split>.csv`` (rows
            ``s2_name,s1_name``), falling back to the paper's ``<root>/bigearthnet_<split>.txt``.
        index: explicit index: a plain id list (one patch id per line, the paper's
            ``bigearthnet_*.txt``), an official split CSV, or the paper's pretraining CSV with an
            ``image_path`` column (``<id>/<id>.tif``).
        num_classes: 19 (BigEarthNet-19, default) or 43 (original CORINE names).
        resampling: interpolation of the 20/60 m bands onto the 10 m grid: ``bilinear``
            (default, like torchgeo), ``cubic`` or ``nearest``. Used for raw samples and the eval
            transform; the training transform (random resized crop) instead samples every band
            bicubically from its own native grid straight to the output size.
        stacked: ``True`` reads only ``<patch>.tif``, ``False`` only the per-band files, ``None``
            (default) the stacked file when it exists.
        load_labels: ``False`` skips the metadata JSON (``label`` is then absent); ``None``
            (default) loads labels except when ``index`` is the paper's pretraining CSV.
        target: ``"labels"`` (multi-hot ``label``; the only one v1 has) - v2 also has
            ``"reference_map"`` and ``"both"``.
        ben_version: ``None``/``"auto"`` (detect from the folder), ``1`` or ``2``.
    """

    name = "bigearthnet"
    file_bands = MODEL_BANDS
    multilabel = True
    num_classes = 19
    classes = BEN19_CLASSES
    default_normalization = "sentinel_2sigma_fmow"
    pretrain_normalization = "minmax"
    split_files = ("bigearthnet-{split}.csv", "bigearthnet_{split}.txt")
    subdirs = ("", BEN_SUBDIR)
    #: layout version of this instance (2: :class:`~util.data.bigearthnet_v2.BigEarthNetV2`)
    ben_version = 1
    #: what ``inspect.signature(BigEarthNet)`` shows: the constructor's arguments, not __new__'s
    __signature__ = inspect.signature(SentinelDataset)

    def __new__(cls, *args: Any, **kwargs: Any) -> BigEarthNet:
        # BigEarthNet(root, ...) on a v2 folder builds the v2 reader (a subclass, so __init__
        # runs on it with the same arguments); unpickling calls __new__(cls) without arguments
        root = args[0] if args else kwargs.get("root")
        if cls is BigEarthNet and root is not None:
            index = args[2] if len(args) > 2 else kwargs.get("index")
            if detect_ben_version(root, index, kwargs.get("ben_version")) == 2:
                from util.data.bigearthnet_v2 import BigEarthNetV2

                cls = BigEarthNetV2
        return super().__new__(cls)

    def _set_options(
        self,
        num_classes: int = 19,
        resampling: str = "bilinear",
        stacked: bool | None = None,
        load_labels: bool | None = None,
        target: str = "labels",
        ben_version: Any = None,
    ) -> None:
        version = parse_ben_version(ben_version)
        if version not in (None, self.ben_version):
            raise ValueError(
                f"ben_version={version} is not the v{self.ben_version} reader's: "
                f"BigEarthNet(root, ..., ben_version={version}) builds the v{version} one"
            )
        self._check_options(num_classes, stacked, target)
        check_resampling(resampling, optional=False)
        self.num_classes = num_classes
        self.classes = BEN19_CLASSES if num_classes == 19 else BEN43_CLASSES
        self.resampling = resampling
        self.stacked = stacked
        self.load_labels = load_labels
        self.target = target
        self.multilabel = target != "reference_map"

    def _check_options(self, num_classes: int, stacked: bool | None, target: str) -> None:
        """Reject the options this layout cannot honour (v1: scene labels, 19 or 43 classes)."""
        if target != "labels":
            raise ValueError(
                f"bigearthnet target={target!r} needs BigEarthNet v2 (Reference_Maps/); "
                "v1 has scene labels only (target='labels')"
            )
        if num_classes not in (19, 43):
            raise ValueError(f"bigearthnet num_classes must be 19 or 43, got {num_classes}")

    def _read_index(self, index: Path, explicit: bool) -> None:
        self.patches, is_pretrain_csv = self._parse_index(index)
        if self.load_labels is None:
            self.load_labels = not is_pretrain_csv

    @staticmethod
    def _parse_index(path: Path) -> tuple[list[str], bool]:
        """Patch ids of an index file, and whether it is the paper's pretraining CSV."""
        lines = read_index_lines(path)
        first = [c.strip() for c in lines[0].split(",")]
        if set(FMOW_COLUMNS) <= set(first):
            raise IndexFileError(
                path,
                f"looks like an fMoW-Sentinel index (columns {', '.join(FMOW_COLUMNS)}), not a "
                "BigEarthNet one; use --dataset_type fmow_sentinel (the paper's "
                "'sentinel') for it, or give a BigEarthNet split file",
            )
        if "image_path" in first:  # the paper's pretraining CSV: ,category,image_path
            col = first.index("image_path")
            ids = []
            for n, ln in enumerate(lines[1:], start=2):
                cells = next(csv.reader([ln]))
                if len(cells) <= col:
                    raise IndexFileError(path, f"line {n}: expected an image_path column: {ln!r}")
                ids.append(Path(cells[col]).parent.name or Path(cells[col]).stem)
            if not ids:
                raise IndexFileError(path, "index has a header but no rows")
            return ids, True
        ids = []
        if lines[0].split(",")[0].strip().lower() in ("s2_name", "patch_id", "name", "id"):
            lines = lines[1:]  # an optional header row
            if not lines:
                raise IndexFileError(path, "index has a header but no rows")
        for n, ln in enumerate(lines, start=1):
            pid = ln.split(",")[0].strip()  # official CSV: s2_name,s1_name ; plain list: id
            if not pid or any(ch.isspace() for ch in pid) or pid.count("_") < 3:
                raise IndexFileError(path, f"line {n}: not a BigEarthNet patch id: {ln!r}")
            ids.append(pid)
        return ids, False

    def __len__(self) -> int:
        return len(self.patches)

    def patch_dir(self, patch: str) -> Path:
        """Folder holding ``patch`` (the first of ``<root>/<patch>``, ``<root>/BigEarthNet-v1.0/<patch>``)."""
        return first_existing([self.root / sub / patch for sub in self.subdirs])

    def _read_bands(self, folder: Path, patch: str) -> BandGroups:
        # grid = the 10 m bands' size (B02); 20/60 m bands are resampled onto it (to_grid), or
        # straight to the output by a transform that accepts band groups (training crop)
        paths = [folder / f"{patch}_{band}.tif" for band in MODEL_BANDS]
        return read_band_groups(
            paths, resampling=self.resampling, dtypes=self.dtypes, contract=self.contract,
            strict=self.strict_input,
        )  # fmt: skip

    def labels_of(self, folder: Path, patch: str) -> torch.Tensor:
        """Multi-hot target from ``<patch>_labels_metadata.json``."""
        path = folder / f"{patch}_labels_metadata.json"
        require_file(path)
        try:
            names = json.loads(path.read_text())["labels"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise LabelError(path, f"malformed labels metadata ({err!r})") from err
        if not isinstance(names, list):
            raise LabelError(path, "'labels' must be a list of CORINE names")
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        for name in names:
            if name not in BEN43_CLASSES:
                raise LabelError(path, f"unknown label name {name!r}")
            if self.num_classes == 43:
                target[BEN43_CLASSES.index(name)] = 1.0
            elif name in BEN43_TO_19:
                target[BEN43_TO_19[name]] = 1.0
        return target

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        patch = self.patches[index]
        folder = self.patch_dir(patch)
        stacked_file = folder / f"{patch}.tif"
        use_stacked = self.stacked if self.stacked is not None else stacked_file.is_file()
        if use_stacked:
            image = self._read_stacked(stacked_file)
        else:
            image = self._read_bands(folder, patch)
        sample = {"image": image}
        if self.load_labels:
            sample["label"] = self.labels_of(folder, patch)
        return sample


# --------------------------------------------------------------------------------------------------
# Synthetic copy
# --------------------------------------------------------------------------------------------------

BEN_BANDS = MODEL_BANDS  # BigEarthNet L2A patches: 12 bands, no B10
#: BigEarthNet-43 names a synthetic patch gets for each ground cover (one variant per patch).
BEN_COVER_LABELS = {
    "water": ("Water bodies", "Sea and ocean"), "river": ("Water courses",),
    "forest": ("Broad-leaved forest", "Coniferous forest", "Mixed forest"),
    "grassland": ("Pastures",), "herbaceous": ("Natural grassland", "Transitional woodland/shrub"),
    "annual_crop": ("Non-irrigated arable land", "Complex cultivation patterns"),
    "permanent_crop": ("Vineyards", "Fruit trees and berry plantations"),
    "bare_soil": ("Mineral extraction sites",), "built_up": ("Discontinuous urban fabric",),
    "industrial": ("Industrial or commercial units",),
    "road": ("Road and rail networks and associated land",),
    "wetland": ("Inland marshes", "Peatbogs"), "sand": ("Beaches, dunes, sands",),
}  # fmt: skip
assert all(n in BEN43_CLASSES for v in BEN_COVER_LABELS.values() for n in v)


def _ben_patch_name(rng: np.random.Generator, i: int) -> tuple[str, str]:
    """Sentinel-2 and Sentinel-1 patch names of patch ``i`` in the official pattern."""
    sat = "AB"[int(rng.integers(0, 2))]
    date = f"2017{int(rng.integers(6, 13)):02d}{int(rng.integers(1, 29)):02d}T{int(rng.integers(9, 12)):02d}{int(rng.integers(0, 60)):02d}31"
    s2 = f"S2{sat}_MSIL2A_{date}_{i // 100}_{i % 100}"
    s1 = f"S1{sat}_IW_GRDH_1SDV_{date}_33UUP_{i // 100}_{i % 100}"
    return s2, s1


def write_band_files(
    folder: Path, patch: str, refl: np.ndarray, origin: tuple[float, float]
) -> None:
    """``<folder>/<patch>_<band>.tif`` for the 12 L2A bands of ``refl`` (13-band reflectance on
    the 10 m grid), each at its native resolution (20/60 m bands block-averaged)."""
    for band in BEN_BANDS:
        res = BANDS[band].resolution_m
        data = scenes.downsample(refl[L1C_BANDS.index(band)], res // 10)
        scenes.write_geotiff(folder / f"{patch}_{band}.tif", scenes.to_dn(data), float(res), origin)


def write_synthetic(
    root: Path,
    num: int,
    size: int,
    rng: np.random.Generator,
    stacked: bool = False,
    progress: bool = False,
) -> None:
    """Write ``num`` synthetic patches in the BigEarthNet-S2 v1 layout (one file per band at its
    native size, labels from the rendered covers), official split CSVs and the paper's id lists;
    ``stacked`` also writes the paper's 12-band ``<id>/<id>.tif`` and ``bigearthnet_pretrain.csv``."""
    if size % 6:
        raise ValueError(f"bigearthnet size must be a multiple of 6 (60 m bands), got {size}")
    base = root / BEN_SUBDIR
    names: list[tuple[str, str]] = []
    patch_labels: list[list[str]] = []
    for i in scenes.progress_bar(num, "bigearthnet", progress):
        s2, s1 = _ben_patch_name(rng, i)
        names.append((s2, s1))
        covers = scenes.choose(rng, scenes.GROUND_COVERS, int(rng.integers(2, 5)))
        bias = rng.normal(0.0, 0.7, size=len(covers))
        cover, refl, _ = scenes.render_scene(rng, size, size, covers, bias)
        frac = np.bincount(cover.ravel(), minlength=len(covers)) / cover.size
        variant = int(rng.integers(0, 3))
        labels = sorted(
            {
                BEN_COVER_LABELS[c][variant % len(BEN_COVER_LABELS[c])]
                for c, f in zip(covers, frac)
                if f >= 0.05
            },
            key=BEN43_CLASSES.index,
        )
        folder = base / s2
        origin = scenes.random_origin(rng)
        write_band_files(folder, s2, refl, origin)
        if stacked:
            scenes.write_geotiff(
                folder / f"{s2}.tif",
                scenes.to_dn(scenes.select_bands(refl, BEN_BANDS)),
                10.0,
                origin,
            )
        meta = {
            "labels": labels,
            "coordinates": {
                "ulx": origin[0],
                "uly": origin[1],
                "lrx": origin[0] + 10 * size,
                "lry": origin[1] - 10 * size,
            },
            "projection": f"EPSG:{scenes.CRS_EPSG}",
            "tile_source": f"S2{s2[2]}_MSIL1C_{s2.split('_')[2]}_N0205_R022_T32UQU",
            "acquisition_date": f"{s2.split('_')[2][:4]}-{s2.split('_')[2][4:6]}-{s2.split('_')[2][6:8]} 10:00:00",
        }
        (folder / f"{s2}_labels_metadata.json").write_text(json.dumps(meta))
        patch_labels.append(labels)
    n_val = n_test = max(1, num // 5) if num >= 3 else 0
    splits = scenes.covering_split(
        [set(ls) for ls in patch_labels], {"test": n_test, "val": n_val, "train": 0}, rng
    )
    for split, idx in splits.items():
        rows = [names[j] for j in sorted(idx)]
        (root / f"bigearthnet-{split}.csv").write_text("".join(f"{a},{b}\n" for a, b in rows))
        (root / f"bigearthnet_{split}.txt").write_text(
            "\n".join(a for a, _ in rows)
        )  # paper: no final newline
    if stacked:
        lines = [",category,image_path"] + [
            f"{j},airport,{a}/{a}.tif" for j, (a, _) in enumerate(names)
        ]
        (root / "bigearthnet_pretrain.csv").write_text("\n".join(lines) + "\n")
