"""BigEarthNet v2 (reBEN, 2024): the layout bigearth.net serves today, and a synthetic copy of it.

Layout (Sentinel-2 part; Sentinel-1 is not read)::

    <root>/metadata.parquet                  patch_id, labels (19-class names), split
                                             (train/validation/test), country, s1_name,
                                             s2v1_name, contains_seasonal_snow,
                                             contains_cloud_or_shadow
    <root>/metadata_for_patches_with_snow_cloud_or_shadow.parquet   patches left out of v2
    <root>/BigEarthNet-S2/<tile>/<patch>/<patch>_B01.tif ... _B12.tif, _B8A.tif  (10/20/60 m)
    <root>/Reference_Maps/<tile>/<patch>/<patch>_reference_map.tif  (CLC level-3 code per pixel)

``<tile>`` is the patch id without its last two ``_``-fields (``S2A_MSIL2A_20170613T101031_N9999_
R022_T33UUP`` for ``..._T33UUP_26_57``). Labels are the 19-class nomenclature spelled as in the v2
description (``"Transitional woodland, shrub"``), mapped onto :data:`~util.data.bigearthnet.
BEN19_CLASSES`; reference-map codes are mapped to the same 19 classes through the CORINE level-3
codes of the 43 v1 names (:data:`CLC_CODES`), codes outside the 19 classes to ``IGNORE_INDEX``.
Facts (column names, folders, removed patches) as in TorchGeo's ``BigEarthNetV2`` and the reBEN
release; the code is ours.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.data import synthetic_scenes as scenes
from util.data.base import IGNORE_INDEX
from util.data.bigearthnet import (
    BEN19_CLASSES,
    BEN43_CLASSES,
    BEN43_TO_19,
    BEN_COVER_LABELS,
    BEN_V2_METADATA,
    BEN_V2_S2,
    BigEarthNet,
    write_band_files,
)
from util.data.errors import IndexFileError, LabelError, ShapeMismatchError
from util.data.raster import BandGroups, first_existing, read_raster

logger = logging.getLogger(__name__)

__all__ = [
    "BEN_V2_CLASSES",
    "BEN_V2_EXCLUDED",
    "BEN_V2_REFERENCE_MAPS",
    "CLC_CODES",
    "CLC_TO_19",
    "BigEarthNetV2",
    "clc_to_19",
    "write_synthetic",
]

BEN_V2_REFERENCE_MAPS = "Reference_Maps"
#: Metadata of the patches v2 leaves out (seasonal snow, clouds or cloud shadows).
BEN_V2_EXCLUDED = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
#: The 19 classes as v2 spells them, in :data:`BEN19_CLASSES` order.
BEN_V2_CLASSES: tuple[str, ...] = tuple(
    "Transitional woodland, shrub" if n == "Transitional woodland/shrub" else n
    for n in BEN19_CLASSES
)
#: v2 (and v1) spellings of the 19 names -> 19-class index.
V2_NAME_TO_19: dict[str, int] = {
    **{n: i for i, n in enumerate(BEN19_CLASSES)},
    **{n: i for i, n in enumerate(BEN_V2_CLASSES)},
}
#: CORINE level-3 code of each of the 43 v1 names, in :data:`BEN43_CLASSES` order.
CLC_CODES: tuple[int, ...] = (
    111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142, 211, 212, 213, 221, 222, 223, 231, 241,
    242, 243, 244, 311, 312, 313, 321, 322, 323, 324, 331, 332, 333, 334, 411, 412, 421, 422, 423,
    511, 512, 521, 522, 523,
)  # fmt: skip
#: CORINE level-3 code -> 19-class index (codes absent here have no 19-class label).
CLC_TO_19: dict[int, int] = {
    code: BEN43_TO_19[name] for code, name in zip(CLC_CODES, BEN43_CLASSES) if name in BEN43_TO_19
}
_CLC_LUT = np.full(max(CLC_CODES) + 1, IGNORE_INDEX, dtype=np.int64)
_CLC_LUT[list(CLC_TO_19)] = list(CLC_TO_19.values())
#: split names accepted -> the value of the ``split`` column
_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
_TARGETS = ("labels", "reference_map", "both")


def clc_to_19(codes: np.ndarray) -> np.ndarray:
    """Map CORINE level-3 codes to 19-class indices (int64), anything else to ``IGNORE_INDEX``."""
    codes = np.asarray(codes).astype(np.int64)
    ok = (codes >= 0) & (codes < len(_CLC_LUT))
    return np.where(ok, _CLC_LUT[np.clip(codes, 0, len(_CLC_LUT) - 1)], IGNORE_INDEX)


def tile_of(patch: str) -> str:
    """Tile folder of a v2 patch id (the id without its last two ``_`` fields)."""
    return patch.rsplit("_", 2)[0]


def read_parquet(path: Path, columns: Sequence[str]) -> Any:
    """The ``columns`` of ``path`` that exist, as a ``pyarrow.Table`` (one-line errors)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is in requirements.txt
        raise IndexFileError(
            path, "reading BigEarthNet v2 needs pyarrow: pip install pyarrow"
        ) from err
    if not path.is_file():
        raise IndexFileError(path, "BigEarthNet v2 metadata not found")
    try:
        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in columns if c in names])
    except (OSError, ValueError) as err:  # pyarrow's errors derive from these
        raise IndexFileError(path, f"cannot read parquet ({err})") from err


class BigEarthNetV2(BigEarthNet):
    """BigEarthNet v2 (reBEN) Sentinel-2 patches: the v1 sample dict from the v2 layout.

    ``BigEarthNet(root, ...)`` returns this class on a v2 folder; the options are v1's (without
    43 classes or stacked files) plus ``target``.

    Args:
        root: folder holding ``metadata.parquet`` and ``BigEarthNet-S2/``.
        split: ``train``, ``val`` (= ``validation``), ``test`` (the ``split`` column), or
            ``all``; with a ``.parquet`` index and no split, every row of that file.
        index: a ``.parquet`` file with v2's columns, or a list of patch ids (one per line, as
            :mod:`util.data.subset` writes; v1 names are looked up in ``s2v1_name``).
        target: ``"labels"`` (multi-hot ``label``, default), ``"reference_map"`` (``mask``:
            ``(H, W)`` int64 19-class index per pixel, ``IGNORE_INDEX`` where CORINE has no
            19-class label), or ``"both"``.

    Patches flagged ``contains_seasonal_snow`` / ``contains_cloud_or_shadow``, or listed in
    ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``, are left out (the release's rule).
    """

    ben_version = 2
    split_files = (BEN_V2_METADATA,)

    def __init__(self, root: str | os.PathLike, split: str | None = "train", *args, **kwargs):
        self._split_arg = split  # None with an explicit index: every row of that index
        super().__init__(root, split, *args, **kwargs)

    def _check_options(self, num_classes: int, stacked: bool | None, target: str) -> None:
        """v2: 19-class labels, one file per band, ``target`` labels / reference_map / both."""
        if num_classes != 19:
            raise ValueError(
                f"BigEarthNet v2 has 19-class labels only, got num_classes={num_classes} "
                "(the 43 CORINE names are v1's)"
            )
        if stacked:
            raise ValueError("BigEarthNet v2 has one file per band, no stacked <patch>.tif")
        if target not in _TARGETS:
            raise ValueError(f"bigearthnet target must be one of {_TARGETS}, got {target!r}")

    # ---------------------------------------------------------------------------------------
    # index
    # ---------------------------------------------------------------------------------------
    def _read_index(self, index: Path, explicit: bool) -> None:
        columns = ("patch_id", "labels", "split", "s2v1_name",
                   "contains_seasonal_snow", "contains_cloud_or_shadow")  # fmt: skip
        split = self._split_arg
        if index.suffix.lower() == ".parquet" or not explicit:
            self.metadata_path = index
            table = read_parquet(index, columns)
            rows = self._kept_rows(table, index)
            if split is not None and str(split).lower() != "all":
                rows &= self._split_rows(table, index, split)
            if self.load_labels is None:
                self.load_labels = True
        else:  # a patch-id list: rows of <root>/metadata.parquet, in the list's order
            ids, is_pretrain_csv = self._parse_index(index)
            if self.load_labels is None:
                self.load_labels = not is_pretrain_csv
            self.metadata_path = self.root / BEN_V2_METADATA
            table = read_parquet(self.metadata_path, columns)
            rows = self._id_rows(table, ids, index)
        if "patch_id" not in table.column_names:
            raise IndexFileError(self.metadata_path, "no patch_id column")
        if isinstance(rows, np.ndarray) and rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if len(rows) == 0:
            raise IndexFileError(index, f"no BigEarthNet v2 patches for split {split!r}")
        table = table.take(rows)
        self.patches = [str(p) for p in table.column("patch_id").to_pylist()]
        self._store_labels(table)
        logger.info(
            "BigEarthNet v2: %d patches (split %s) from %s", len(self.patches), split, index
        )

    def _kept_rows(self, table: Any, path: Path) -> np.ndarray:
        """Rows not removed from v2 (snow / cloud / shadow flags, the excluded-patches file)."""
        keep = np.ones(table.num_rows, dtype=bool)
        for flag in ("contains_seasonal_snow", "contains_cloud_or_shadow"):
            if flag in table.column_names:
                keep &= ~np.asarray(table.column(flag).fill_null(False).to_numpy(), dtype=bool)
        excluded = path.parent / BEN_V2_EXCLUDED
        if excluded.is_file() and "patch_id" in table.column_names:
            gone = set(read_parquet(excluded, ("patch_id",)).column("patch_id").to_pylist())
            keep &= np.array([p not in gone for p in table.column("patch_id").to_pylist()], bool)
        if not keep.all():
            logger.info("BigEarthNet v2: %d patches with snow/cloud/shadow left out", (~keep).sum())
        return keep

    @staticmethod
    def _split_rows(table: Any, path: Path, split: str) -> np.ndarray:
        key = str(split).lower()
        if key not in _SPLITS:
            raise ValueError(f"BigEarthNet v2 split must be train, val, test or all, got {split!r}")
        if "split" not in table.column_names:
            raise IndexFileError(path, f"no split column to select split {split!r} from")
        values = [_SPLITS.get(str(v).lower(), v) for v in table.column("split").to_pylist()]
        return np.array([v == _SPLITS[key] for v in values], dtype=bool)

    def _id_rows(self, table: Any, ids: list[str], index: Path) -> np.ndarray:
        keep = self._kept_rows(table, self.metadata_path)
        row_of: dict[str, int] = {}
        if "s2v1_name" in table.column_names:  # v1 names of the same patches
            row_of.update((str(n), i) for i, n in enumerate(table.column("s2v1_name").to_pylist()))
        row_of.update((str(p), i) for i, p in enumerate(table.column("patch_id").to_pylist()))
        rows = []
        for pid in ids:
            i = row_of.get(pid)
            if i is None or not keep[i]:
                why = "not in" if i is None else "removed from v2 (snow/cloud/shadow) in"
                raise IndexFileError(index, f"patch {pid} is {why} {self.metadata_path}")
            rows.append(i)
        return np.array(rows, dtype=np.int64)

    def _store_labels(self, table: Any) -> None:
        """Labels as compact arrays: names, per-row offsets into codes of those names."""
        self._label_names: list[str] = []
        self._label_offsets = np.zeros(len(self.patches) + 1, dtype=np.int64)
        self._label_codes = np.zeros(0, dtype=np.int32)
        if not (self.load_labels and self.target != "reference_map"):
            return
        if "labels" not in table.column_names:
            raise IndexFileError(self.metadata_path, "no labels column")
        import pyarrow.compute as pc

        lists = table.column("labels").combine_chunks()
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
        self._label_offsets[1:] = np.cumsum(lengths)
        encoded = pc.list_flatten(lists).cast("string").dictionary_encode()
        self._label_names = [str(n) for n in encoded.dictionary.to_pylist()]
        self._label_codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)

    # ---------------------------------------------------------------------------------------
    # samples
    # ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.patches)

    def patch_dir(self, patch: str) -> Path:
        """``<root>/BigEarthNet-S2/<tile>/<patch>`` (or ``BigEarthNet-S2/<patch>`` if so stored)."""
        base = self.root / BEN_V2_S2
        return first_existing([base / tile_of(patch) / patch, base / patch])

    def reference_map_path(self, patch: str) -> Path:
        """``<root>/Reference_Maps/<tile>/<patch>/<patch>_reference_map.tif``."""
        folder = self.root / BEN_V2_REFERENCE_MAPS / tile_of(patch) / patch
        return folder / f"{patch}_reference_map.tif"

    def label_names(self, index: int) -> list[str]:
        """The metadata's label names of sample ``index``."""
        lo, hi = self._label_offsets[index], self._label_offsets[index + 1]
        return [self._label_names[c] for c in self._label_codes[lo:hi]]

    def _target(self, index: int) -> torch.Tensor:
        target = torch.zeros(19, dtype=torch.float32)
        for name in self.label_names(index):
            if name not in V2_NAME_TO_19:
                raise LabelError(
                    self.metadata_path, f"{self.patches[index]}: unknown label name {name!r}"
                )
            target[V2_NAME_TO_19[name]] = 1.0
        return target

    def labels_of(self, folder: Path, patch: str) -> torch.Tensor:
        """Multi-hot target of ``patch`` from the metadata (``folder`` is not read)."""
        if getattr(self, "_row_of", None) is None:
            self._row_of = {p: i for i, p in enumerate(self.patches)}
        return self._target(self._row_of[patch])

    def reference_map(self, patch: str, shape: tuple[int, int]) -> torch.Tensor:
        """``(H, W)`` int64 19-class map of ``patch`` (``IGNORE_INDEX`` where unmapped)."""
        path = self.reference_map_path(patch)
        codes = read_raster(path, expected_bands=1)[0]
        if codes.shape != tuple(shape):
            raise ShapeMismatchError(path, f"reference map {codes.shape} != image {tuple(shape)}")
        return torch.from_numpy(clc_to_19(codes))

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        patch = self.patches[index]
        image = self._read_bands(self.patch_dir(patch), patch)
        sample: dict[str, Any] = {"image": image}
        if self.target != "reference_map" and self.load_labels:
            sample["label"] = self._target(index)
        if self.target != "labels":
            shape = image.shape if isinstance(image, BandGroups) else tuple(image.shape[-2:])
            sample["mask"] = self.reference_map(patch, shape)
        return sample


# --------------------------------------------------------------------------------------------------
# Synthetic copy
# --------------------------------------------------------------------------------------------------

_COUNTRIES = ("Austria", "Belgium", "Finland", "Ireland", "Lithuania", "Portugal", "Serbia")
_TILES = ("T33UUP", "T32TQT", "T32TNS", "T32TQR", "T29SNB", "T35VLG")


def _tile_name(rng: np.random.Generator, k: int) -> tuple[str, str]:
    """A v2 tile folder name (``S2A_MSIL2A_<date>_N9999_R<orbit>_<tile>``) and its S1 prefix."""
    sat = "AB"[int(rng.integers(0, 2))]
    date = f"2017{int(rng.integers(6, 13)):02d}{int(rng.integers(1, 29)):02d}T10{int(rng.integers(0, 60)):02d}21"
    tile = _TILES[k % len(_TILES)]
    return (
        f"S2{sat}_MSIL2A_{date}_N9999_R{int(rng.integers(1, 143)):03d}_{tile}",
        f"S1{sat}_IW_GRDH_1SDV_{date[:9]}165043_{tile[1:]}",
    )


def write_synthetic(
    root: Path,
    num: int,
    size: int,
    rng: np.random.Generator,
    removed: int = 2,
    progress: bool = False,
) -> None:
    """Write ``num`` synthetic patches in the BigEarthNet v2 layout, plus ``removed`` more that
    the release leaves out (on disk, listed only in the snow/cloud/shadow metadata file).

    Band files at their native resolutions (120/60/20 px for a 120 px patch), a reference map of
    CORINE codes drawn from the rendered covers, labels = the 19-class names of the codes present
    in the map, ``metadata.parquet`` with v2's columns and its train/validation/test split (every
    split holding every label where the counts allow).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if size % 6:
        raise ValueError(f"bigearthnet size must be a multiple of 6 (60 m bands), got {size}")
    n_tiles = max(1, min(len(_TILES), (num + removed) // 4))
    tiles = [_tile_name(rng, k) for k in range(n_tiles)]
    records: list[dict[str, Any]] = []
    for i in scenes.progress_bar(num + removed, "bigearthnet v2", progress):
        k, j = i % n_tiles, i // n_tiles
        (tile, s1_tile), (row, col) = tiles[k], divmod(j, 10)
        patch = f"{tile}_{26 + row}_{57 + col}"
        covers = scenes.choose(rng, scenes.GROUND_COVERS, int(rng.integers(2, 5)))
        cover, refl, _ = scenes.render_scene(
            rng, size, size, covers, rng.normal(0.0, 0.7, len(covers))
        )
        variant = int(rng.integers(0, 3))
        names = [BEN_COVER_LABELS[c][variant % len(BEN_COVER_LABELS[c])] for c in covers]
        codes = np.array([CLC_CODES[BEN43_CLASSES.index(n)] for n in names], dtype=np.uint16)
        ref = codes[cover]
        present = sorted({CLC_TO_19[int(c)] for c in np.unique(ref) if int(c) in CLC_TO_19})
        origin = scenes.random_origin(rng)
        write_band_files(root / BEN_V2_S2 / tile / patch, patch, refl, origin)
        ref_dir = root / BEN_V2_REFERENCE_MAPS / tile / patch
        scenes.write_geotiff(ref_dir / f"{patch}_reference_map.tif", ref, 10.0, origin)
        gone = i >= num
        records.append({
            "patch_id": patch,
            "labels": [BEN_V2_CLASSES[c] for c in present],
            "split": "train",
            "country": _COUNTRIES[k % len(_COUNTRIES)],
            "s1_name": f"{s1_tile}_{31 + row}_{39 + col}",
            "s2v1_name": f"{tile[:26]}_{31 + row + 10 * k}_{39 + col}",
            "contains_seasonal_snow": gone and i % 2 == 0,
            "contains_cloud_or_shadow": gone and i % 2 == 1,
        })  # fmt: skip
    kept = records[:num]
    n_held = max(1, num // 5) if num >= 3 else 0
    splits = scenes.covering_split(
        [set(r["labels"]) for r in kept], {"test": n_held, "validation": n_held, "train": 0}, rng
    )
    for split, idx in splits.items():
        for j in idx:
            kept[j]["split"] = split
    for name, rows in ((BEN_V2_METADATA, kept), (BEN_V2_EXCLUDED, records[num:])):
        columns = {key: [r[key] for r in rows] for key in records[0]}
        schema = pa.schema(
            [(key, pa.list_(pa.string()) if key == "labels" else
              pa.bool_() if key.startswith("contains") else pa.string()) for key in columns]
        )  # fmt: skip
        pq.write_table(pa.table(columns, schema=schema), root / name)
