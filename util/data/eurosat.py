"""EuroSAT-MS: class folders of 13-band 64 px GeoTIFFs (B8A stored last), torchgeo split files or
the paper's index files; and a synthetic copy of that layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from util.data import synthetic_scenes as scenes
from util.data.base import RasterClassificationDataset, read_index_lines
from util.data.errors import IndexFileError
from util.data.raster import first_existing

__all__ = ["EUROSAT_CLASSES", "EUROSAT_FILE_BANDS", "EuroSAT", "write_synthetic"]

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
    "PermanentCrop", "Residential", "River", "SeaLake",
)  # fmt: skip
#: Band order inside the official EuroSAT-MS GeoTIFFs: B8A is stored LAST (spec §5.1).
EUROSAT_FILE_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)  # fmt: skip
EUROSAT_SUBDIR = "ds/images/remote_sensing/otherDatasets/sentinel_2"


class EuroSAT(RasterClassificationDataset):
    """EuroSAT-MS: class folders ``tif/<Class>/<Class>_<n>.tif`` of 13-band 64 px GeoTIFFs.

    ``root`` may be the extracted archive root (``<root>/ds/images/.../sentinel_2/tif``) or the
    folder holding ``tif/`` directly (the paper's ``data/``).

    Args:
        split: ``train``/``val``/``test``: torchgeo split files ``<root>/eurosat-<split>.txt``
            listing ``<Class>_<n>.jpg`` names; ``all``: every tif of the class folders.
        index: the paper's index file (``<relative path><whitespace><label>`` per line, paths like
            ``tif/Residential/Residential_2029.tif`` relative to ``root``); overrides ``split``.
        file_bands: band order of the files (default: official order, B8A last); pass
            ``util.data.sentinel2.L1C_BANDS`` for copies re-ordered with B8A after B08.
    """

    name = "eurosat"
    file_bands = EUROSAT_FILE_BANDS
    num_classes = 10
    classes = EUROSAT_CLASSES
    default_normalization = "zscore_eurosat"
    native_size = 64  # every EuroSAT-MS image is 64 x 64 px
    split_files = ("eurosat-{split}.txt",)

    def _read_index(self, index: Path, explicit: bool) -> None:
        base = first_existing([self.root / EUROSAT_SUBDIR, self.root])
        self.paths, self.labels = [], []
        if explicit:
            self._read_paper_index(index, base)
        elif self.split == "all":  # every tif of the class folders (no split files needed)
            self.index_path = base / "tif"
            for label, cls in enumerate(EUROSAT_CLASSES):
                found = sorted((base / "tif" / cls).glob("*.tif"))
                self.paths += found
                self.labels += [label] * len(found)
            if not self.paths:
                raise IndexFileError(base / "tif", "no <Class>/<Class>_<n>.tif files found")
        else:  # torchgeo split file: <Class>_<n>.jpg per line
            for n, ln in enumerate(read_index_lines(index), start=1):
                stem = Path(ln).stem
                cls = stem.rsplit("_", 1)[0]
                if cls not in EUROSAT_CLASSES:
                    raise IndexFileError(index, f"line {n}: unknown EuroSAT class in {ln!r}")
                self.paths.append(base / "tif" / cls / f"{stem}.tif")
                self.labels.append(EUROSAT_CLASSES.index(cls))

    def _read_paper_index(self, index: Path, base: Path) -> None:
        """``<path> <label>`` lines; relative paths resolve against ``root``, then ``base``."""
        for n, ln in enumerate(read_index_lines(index), start=1):
            parts = ln.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise IndexFileError(index, f"line {n}: expected '<path> <label>', got {ln!r}")
            label = int(parts[1])
            if not 0 <= label < self.num_classes:
                raise IndexFileError(index, f"line {n}: label {label} outside 0..9")
            rel = Path(parts[0])
            self.paths.append(
                rel if rel.is_absolute() else first_existing([self.root / rel, base / rel])
            )
            self.labels.append(label)


# --------------------------------------------------------------------------------------------------
# Synthetic copy
# --------------------------------------------------------------------------------------------------

#: The land use that fills a synthetic image of each class (same order as the classes).
EUROSAT_LAND_USE = dict(zip(EUROSAT_CLASSES, scenes.LAND_USES))


def write_synthetic(
    root: Path,
    num: int,
    size: int,
    rng: np.random.Generator,
    complete_splits: bool = True,
    progress: bool = False,
) -> None:
    """Write ``num`` synthetic images (classes in turn) in the EuroSAT-MS layout, with torchgeo
    split files ``eurosat-{train,val,test}.txt`` and the paper's ``{train,val}_euro_result.txt``.

    Every split holds every class (TorchGeo's EuroSAT refuses a split that lacks one): val and
    test take a fifth of the images each, at least one per class, so ``num`` must be at least
    30; ``complete_splits=False`` allows fewer (tiny copies whose val/test lack classes).

    Raises:
        ValueError: ``num`` < 30 with ``complete_splits``.
    """
    n_classes = len(EUROSAT_CLASSES)
    if complete_splits and num < 3 * n_classes:
        raise ValueError(
            f"eurosat: {num} images cannot give train, val and test every one of the "
            f"{n_classes} classes; use --num {3 * n_classes} or more (or complete_splits=False "
            "for a tiny copy)"
        )
    base = root / EUROSAT_SUBDIR / "tif"
    counters = dict.fromkeys(EUROSAT_CLASSES, 0)
    files: list[tuple[str, int]] = []
    targets = [EUROSAT_CLASSES[i % n_classes] for i in rng.permutation(num)]
    for k in scenes.progress_bar(num, "eurosat", progress):
        cls = targets[k]  # the class is the land use that fills the patch
        refl = scenes.render_land_use(rng, size, size, [EUROSAT_LAND_USE[cls]])
        counters[cls] += 1
        name = f"{cls}_{counters[cls]}"
        scenes.write_geotiff(
            base / cls / f"{name}.tif",
            scenes.to_dn(scenes.select_bands(refl, EUROSAT_FILE_BANDS)),
            10.0,
            scenes.random_origin(rng),
        )
        files.append((name, EUROSAT_CLASSES.index(cls)))
    n_held = max(n_classes, num // 5) if complete_splits else max(1, num // 5)
    splits = scenes.covering_split(  # every split holds every class when there are >= 3 of it
        [{label} for _, label in files], {"test": n_held, "val": n_held, "train": 0}, rng
    )
    if complete_splits:  # cannot fail with >= 3 images per class; a guard for the split rule
        for split, idx in splits.items():
            if len({files[j][1] for j in idx}) < n_classes:
                raise ValueError(f"eurosat: the synthetic {split} split lacks a class")
    for split, idx in splits.items():
        (root / f"eurosat-{split}.txt").write_text(
            "".join(f"{files[j][0]}.jpg\n" for j in sorted(idx))
        )
    # the paper's index files: "<path relative to the sentinel_2 folder>    <label>"
    for split, name in (("train", "train_euro_result.txt"), ("val", "val_euro_result.txt")):
        lines = [
            f"tif/{files[j][0].rsplit('_', 1)[0]}/{files[j][0]}.tif    {files[j][1]}"
            for j in splits[split]
        ]
        (root / name).write_text("\n".join(lines) + "\n")
