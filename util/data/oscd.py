"""Onera Satellite Change Detection (OSCD): two dates per city, one GeoTIFF per band, a change map
PNG; city lists, whole cities or overlapping tiles; and a synthetic copy of that layout."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.data import synthetic_scenes as scenes
from util.data.base import SentinelDataset, read_index_lines
from util.data.errors import IndexFileError, ShapeMismatchError
from util.data.raster import first_existing, raster_georef, read_band_files, read_png_mask
from util.data.sentinel2 import L1C_BANDS, MODEL_BANDS
from util.inference.tiling import tile_starts

logger = logging.getLogger(__name__)

__all__ = ["OSCD", "OSCD_IMAGES", "OSCD_LABELS", "write_synthetic"]

OSCD_IMAGES = "Onera Satellite Change Detection dataset - Images"
OSCD_LABELS = (
    "Onera Satellite Change Detection dataset - Train Labels",
    "Onera Satellite Change Detection dataset - Test Labels",
)
#: Folders of a city's two co-registered acquisitions (one ``<band>.tif`` per band).
OSCD_DATES = ("imgs_1_rect", "imgs_2_rect")


class OSCD(SentinelDataset):
    """Onera Satellite Change Detection: two dates per city, one GeoTIFF per band, change map PNG.

    Reads the official layout (``<root>/Onera ... - Images/<city>/imgs_{1,2}_rect/B01.tif``,
    ``<root>/Onera ... - {Train,Test} Labels/<city>/cm/cm.png``, city lists ``train.txt`` /
    ``test.txt`` = one comma-separated line) or the paper's merged copy (everything under
    ``<root>/<city>/``, lists in ``<root>``). Without the city lists (some mirrors ship only the
    folders) the official layout's cities are the folders of ``... - Train Labels`` /
    ``... - Test Labels``, as in TorchGeo. The ``_rect`` bands are already co-registered on the
    10 m grid and are read as they are (no second zoom, spec §7.1).

    Args:
        split: ``train`` or ``test`` (city list file).
        index: explicit city-list file.
        patch_size: if set, the dataset yields ``patch_size`` tiles with ``stride`` (default
            ``patch_size // 2 - 1`` as in the paper), the last row/column aligned to the border so
            every pixel is covered; ``None`` yields whole city images (sizes differ per city).
            With tiles, each worker keeps the cities it has read in memory as float32
            (~35 MB for a 600 x 600 px city; the 14 training cities fit in ~0.5 GB).
    """

    name = "oscd"
    file_bands = MODEL_BANDS  # one file per band; B10 is never read
    num_classes = 2
    classes = ("no change", "change")
    default_normalization = "minmax"

    def _set_options(self, patch_size: int | None = None, stride: int | None = None) -> None:
        self.patch_size = patch_size
        self.stride = (
            stride if stride is not None else (patch_size // 2 - 1 if patch_size else None)
        )

    @property
    def image_base(self) -> Path:
        """Folder holding the city folders: the official images folder, else ``root``."""
        return first_existing([self.root / OSCD_IMAGES, self.root])

    def split_file(self, split: str) -> Path:
        """City list of ``split``: ``<split>.txt`` next to the cities, else in ``root``."""
        return first_existing([self.image_base / f"{split}.txt", self.root / f"{split}.txt"])

    def _cities_from_labels(self, index: Path) -> list[str]:
        """Cities of the split from its label folder (official layout without ``<split>.txt``)."""
        split = self.split.lower()
        if split not in ("train", "test"):
            raise IndexFileError(index, "index/split file not found (OSCD's splits: train, test)")
        labels = self.root / OSCD_LABELS[split == "test"]
        if not labels.is_dir():
            raise IndexFileError(
                index,
                f"index/split file not found, and no {labels.name!r} folder to take the "
                f"{split} cities from",
            )
        cities = sorted(d.name for d in labels.iterdir() if d.is_dir())
        if not cities:
            raise IndexFileError(labels, "no city folders (and no city list file)")
        logger.info(
            "OSCD: no %s; %d %s cities taken from the folder %r",
            index.name, len(cities), self.split, labels.name,
        )  # fmt: skip
        return cities

    def _read_index(self, index: Path, explicit: bool) -> None:
        if not explicit and not index.is_file() and (self.root / OSCD_IMAGES).is_dir():
            cities = self._cities_from_labels(index)
        else:
            cities = [
                c.strip() for ln in read_index_lines(index) for c in ln.split(",") if c.strip()
            ]
        if not cities:
            raise IndexFileError(index, "no city names")
        self.cities = cities
        self.image_dirs = [self.image_base / c for c in cities]
        self.layout = "official" if (self.root / OSCD_IMAGES).is_dir() else "merged"
        if (
            self.layout == "official"
        ):  # change maps under "... - Train Labels" / "... - Test Labels"
            first = OSCD_LABELS[1] if self.split.lower().startswith("test") else OSCD_LABELS[0]
            subs = (first, *(d for d in OSCD_LABELS if d != first))
        else:  # the paper's merged copy: <root>/<city>/cm/cm.png
            subs = ("",)
        self.label_files = [
            first_existing([self.root / sub / c / "cm" / "cm.png" for sub in subs]) for c in cities
        ]
        self.tiles: list[tuple[int, int, int]] = []
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        if self.patch_size is not None:
            for ci, d in enumerate(self.image_dirs):
                georef = raster_georef(d / OSCD_DATES[0] / "B04.tif")
                for r in tile_starts(georef["height"], self.patch_size, self.stride):
                    for c in tile_starts(georef["width"], self.patch_size, self.stride):
                        self.tiles.append((ci, r, c))

    def __len__(self) -> int:
        return len(self.tiles) if self.patch_size is not None else len(self.cities)

    def scene_info(self, index: int) -> dict[str, Any]:
        """Whole-city record: ``name`` (city) plus :func:`raster_georef` of date 1's B04."""
        return {
            "name": self.cities[index],
            **raster_georef(self.image_dirs[index] / OSCD_DATES[0] / "B04.tif"),
        }

    def _read_date(self, folder: Path) -> torch.Tensor:
        # official `_rect` names are B01.tif ...; the paper also accepts "<prefix>B01.tif"
        names = os.listdir(folder) if folder.is_dir() else []
        paths = []
        for band in MODEL_BANDS:
            hits = sorted(n for n in names if n.endswith(f"{band}.tif"))
            paths.append(folder / (hits[0] if hits else f"{band}.tif"))  # missing -> named error
        return read_band_files(
            paths, resampling=None, dtypes=self.dtypes, contract=self.contract,
            strict=self.strict_input,
        )  # fmt: skip

    def _load_city(self, ci: int) -> dict[str, torch.Tensor]:
        d = self.image_dirs[ci]
        d1, d2 = (self._read_date(d / date) for date in OSCD_DATES)
        if d1.shape != d2.shape:
            raise ShapeMismatchError(
                d / OSCD_DATES[1], f"date 2 is {tuple(d2.shape[1:])}, date 1 {tuple(d1.shape[1:])}"
            )
        cm = read_png_mask(self.label_files[ci])
        if cm.shape != tuple(d1.shape[1:]):
            raise ShapeMismatchError(
                self.label_files[ci], f"change map {cm.shape} != image {tuple(d1.shape[1:])}"
            )
        return {
            "image": torch.stack([d1, d2]),
            "mask": torch.from_numpy((cm != 0).astype(np.int64)),
        }

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        if self.patch_size is None:
            return self._load_city(index)
        ci, r, c = self.tiles[index]
        if ci not in self._cache:  # whole cities are small (<= ~1.2k px side); keep them
            self._cache[ci] = self._load_city(ci)
        city = self._cache[ci]
        p = self.patch_size
        return {
            "image": city["image"][..., r : r + p, c : c + p].clone(),
            "mask": city["mask"][r : r + p, c : c + p].clone(),
        }


# --------------------------------------------------------------------------------------------------
# Synthetic copy
# --------------------------------------------------------------------------------------------------

OSCD_CITIES = (
    "abudhabi", "aguasclaras", "beihai", "beirut", "bercy", "bordeaux", "brasilia", "chongqing",
    "cupertino", "dubai", "hongkong", "lasvegas", "milano", "montpellier", "mumbai", "nantes",
    "norcia", "paris", "pisa", "rennes", "rio", "saclay_e", "saclay_w", "valencia",
)  # fmt: skip


def write_synthetic(
    root: Path,
    num: int,
    size: int,
    rng: np.random.Generator,
    layout: str = "official",
    progress: bool = False,
) -> None:
    """Write ``num`` synthetic cities in the OSCD layout (``official``, or the paper's ``merged``
    copy): date 2 has some blobs built over or cleared, the change map marks where the cover
    changed; city sides vary in ``[0.8, 1.25] * size``."""
    if layout not in ("official", "merged"):
        raise ValueError(f"oscd layout must be 'official' or 'merged', got {layout!r}")
    if num > len(OSCD_CITIES):
        raise ValueError(f"oscd has at most {len(OSCD_CITIES)} cities, asked for {num}")
    from PIL import Image

    cities = [OSCD_CITIES[i] for i in sorted(rng.choice(len(OSCD_CITIES), size=num, replace=False))]
    n_test = max(1, round(0.4 * num)) if num > 1 else 0
    test = set(cities[:: max(1, num // max(1, n_test))][:n_test])
    images = root if layout == "merged" else root / OSCD_IMAGES
    for k in scenes.progress_bar(num, "oscd", progress):
        city = cities[k]
        h = int(size * rng.uniform(0.8, 1.25))
        w = int(size * rng.uniform(0.8, 1.25))
        covers = scenes.choose(
            rng, scenes.GROUND_COVERS, 4, exclude=("built_up", "industrial", "bare_soil")
        )
        covers += ["built_up", "industrial", "bare_soil"]
        bias = [0.5, 0.0, 0.0, -0.5, -0.5, -3.0, -3.0]
        cover1, refl1, logits = scenes.render_scene(rng, h, w, covers, bias)
        # date 2: some blobs are built over / cleared
        change_field = scenes.smooth_fields(rng, 1, h, w, max(4.0, min(h, w) / 6.0))[0]
        region = change_field > np.quantile(change_field, 0.9)
        new_cover = rng.choice([4, 5, 6], size=(h, w))
        logits2 = logits.copy()
        for c in (4, 5, 6):
            sel = region & (new_cover == c)
            logits2[c][sel] = logits[:, sel].max(0) + 5.0
        cover2, refl2, _ = scenes.render_scene(rng, h, w, covers, logits=logits2)
        change = (cover1 != cover2).astype(np.uint8) * 255
        origin = scenes.random_origin(rng)
        for date, refl in zip(OSCD_DATES, (refl1, refl2)):
            for band in L1C_BANDS:
                scenes.write_geotiff(
                    images / city / date / f"{band}.tif",
                    scenes.to_dn(refl[L1C_BANDS.index(band)]),
                    10.0,
                    origin,
                )
        (images / city / "dates.txt").write_text("date_1: 20151120\ndate_2: 20171010\n")
        if layout == "merged":
            label_dir = images / city / "cm"
        else:
            label_dir = root / OSCD_LABELS[city in test] / city / "cm"
        label_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(change, mode="L").save(label_dir / "cm.png")
    train = [c for c in cities if c not in test]
    (images / "train.txt").write_text(",".join(train) + "\n")
    (images / "test.txt").write_text(",".join(c for c in cities if c in test) + "\n")
