"""SegMunich (TUM_128): 10-band images and label-code rasters per split, the paper's code remap
and the fill of the two missing bands; and a synthetic copy of that layout."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.data import synthetic_scenes as scenes
from util.data.base import IGNORE_INDEX, SentinelDataset, read_index_lines
from util.data.contract import InputContract
from util.data.errors import LabelError, ShapeMismatchError
from util.data.raster import raster_georef, read_raster
from util.data.sentinel2 import MODEL_BANDS

__all__ = [
    "SEGMUNICH_CLASSES",
    "SEGMUNICH_CODES",
    "SEGMUNICH_FILE_BANDS",
    "SEGMUNICH_FILL",
    "SegMunich",
    "write_synthetic",
]

#: Bands of the SegMunich (TUM_128) images, in file order (maintainer, SpectralGPT issue #31).
SEGMUNICH_FILE_BANDS: tuple[str, ...] = (
    "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12",
)  # fmt: skip
#: Raw label code -> training index (the paper's remap; all 13 codes of the data set).
SEGMUNICH_CODES: dict[int, int] = {
    0: 0, 21: 1, 22: 2, 23: 3, 31: 4, 5: 5, 32: 6, 33: 7, 41: 8, 13: 9, 14: 10, 11: 11, 12: 12,
}  # fmt: skip
SEGMUNICH_CLASSES: tuple[str, ...] = (
    "background",
    "arable land",
    "permanent crops",
    "pastures",
    "forests",
    "water",
    "shrub and herbaceous vegetation",
    "open spaces with little or no vegetation",
    "wetlands",
    "mine, dump and construction sites",
    "artificial non-agricultural vegetated areas",
    "urban fabric",
    "industrial, commercial and transport units",
)  # fmt: skip  (CORINE level-2 reading of the codes; the paper names none)
#: Raw label code (0..255) -> training index, -1 for codes the data set does not use.
_CODE_LUT = np.full(256, -1, dtype=np.int64)
_CODE_LUT[list(SEGMUNICH_CODES)] = list(SEGMUNICH_CODES.values())
_CODE_LUT[IGNORE_INDEX] = IGNORE_INDEX
#: How the two bands SegMunich lacks (B01, B09) are filled (see README, "Differences").
SEGMUNICH_FILL = {
    "neighbour": {"B01": "B02", "B09": "B8A"},  # nearest measured wavelength, same units
    "band_mean": None,  # per-pixel mean of the 10 bands (the paper's value, put in the right slots)
}


class SegMunich(SentinelDataset):
    """SegMunich (TUM_128): ``<root>/<mode>/img/<stem>.tif`` (10 bands), ``label/<stem>.tif``.

    The 10 bands B02..B12 are placed in their model slots; B01 and B09 are filled by ``fill``:
    ``"neighbour"`` (default: B01 <- B02, B09 <- B8A, the nearest measured wavelengths, so the value
    range and per-band min-max behave like real bands) or ``"band_mean"`` (per-pixel mean over the
    10 bands - the paper's filler, but placed in the B01/B09 slots instead of appended). Label codes
    are remapped to 0..12 (255 stays ignore; any other code is a :class:`LabelError`).

    Args:
        split: ``train`` / ``test``: stems from ``<root>/dataset/<split>.txt``; images under
            ``<root>/<split>/``.
        index: explicit stem list; images are then looked up under ``<root>/<split or index stem>``.
    """

    name = "segmunich"
    file_bands = SEGMUNICH_FILE_BANDS
    #: the input contract of the files' 10 bands (B01/B09 are filled after the check)
    contract = InputContract(bands=SEGMUNICH_FILE_BANDS)
    num_classes = len(SEGMUNICH_CLASSES)
    classes = SEGMUNICH_CLASSES
    default_normalization = "minmax"
    split_files = ("dataset/{split}.txt",)

    def _set_options(self, fill: str = "neighbour") -> None:
        if fill not in SEGMUNICH_FILL:
            raise ValueError(f"fill must be one of {tuple(SEGMUNICH_FILL)}, got {fill!r}")
        self.fill = fill

    def _read_index(self, index: Path, explicit: bool) -> None:
        self.mode = self.split  # folder of img/ and label/: the split, or the index file's stem
        self.stems = [Path(s).stem for s in read_index_lines(index)]

    def _model_band_indices(self) -> list[int]:
        present = {b: i for i, b in enumerate(self.file_bands)}
        rule = SEGMUNICH_FILL[self.fill]
        out = []
        for b in MODEL_BANDS:
            if b in present:
                out.append(present[b])
            elif rule is None:
                out.append(-1)  # the appended per-pixel band mean
            elif rule.get(b) in present:
                out.append(present[rule[b]])
            else:
                raise KeyError(f"band {b} is neither stored nor fillable from {self.file_bands}")
        return out

    def __len__(self) -> int:
        return len(self.stems)

    def scene_info(self, index: int) -> dict[str, Any]:
        """``name`` (file stem) plus :func:`raster_georef` of the image file."""
        path = self.root / self.mode / "img" / f"{self.stems[index]}.tif"
        return {"name": self.stems[index], **raster_georef(path)}

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        stem = self.stems[index]
        base = self.root / self.mode
        img_path = base / "img" / f"{stem}.tif"
        raw = read_raster(
            img_path, len(self.file_bands), dtypes=self.dtypes, contract=self.contract,
            strict=self.strict_input,
        )  # fmt: skip
        if self.fill == "band_mean":
            mean = raw.mean(axis=0, keepdims=True)
            raw = np.concatenate([raw, mean])  # index -1 picks the mean
        image = torch.from_numpy(np.ascontiguousarray(raw[self._model_idx]))
        lab_path = base / "label" / f"{stem}.tif"
        codes = read_raster(lab_path, expected_bands=1)[0]
        if codes.shape != tuple(image.shape[1:]):
            raise ShapeMismatchError(
                lab_path, f"label {codes.shape} != image {tuple(image.shape[1:])}"
            )
        if codes.min() < 0 or codes.max() > 255 or not np.array_equal(codes, np.round(codes)):
            raise LabelError(lab_path, "label codes must be integers in 0..255")
        mask = _CODE_LUT[codes.astype(np.int64)]
        if (mask < 0).any():
            bad = sorted(set(np.unique(codes[mask < 0]).astype(int).tolist()))
            raise LabelError(
                lab_path, f"unknown label codes {bad}; known {sorted(SEGMUNICH_CODES)}"
            )
        return {"image": image, "mask": torch.from_numpy(mask)}


# --------------------------------------------------------------------------------------------------
# Synthetic copy
# --------------------------------------------------------------------------------------------------

#: SegMunich label code a synthetic pixel gets for its cover.
SEGMUNICH_COVER_CODE = {
    "cloud": 0, "water": 5, "built_up": 11, "industrial": 12, "bare_soil": 13, "road": 14,
    "annual_crop": 21, "permanent_crop": 22, "grassland": 23, "forest": 31, "herbaceous": 32,
    "sand": 33, "wetland": 41,
}  # fmt: skip
assert set(SEGMUNICH_COVER_CODE.values()) == set(SEGMUNICH_CODES)


def write_synthetic(
    root: Path,
    num: int,
    size: int,
    rng: np.random.Generator,
    progress: bool = False,
    covers: Sequence[str] | None = None,
) -> None:
    """Write ``num`` synthetic images in the SegMunich layout (label codes from the rendered
    cover, drawn from ``covers`` or all 13), about a fifth in ``test``, the rest in ``train``."""
    pool = tuple(covers) if covers else tuple(SEGMUNICH_COVER_CODE)
    unknown = set(pool) - set(SEGMUNICH_COVER_CODE)
    if unknown:
        raise ValueError(
            f"unknown segmunich covers {sorted(unknown)}; known {list(SEGMUNICH_COVER_CODE)}"
        )
    stems = {"train": [], "test": []}
    written: list[tuple[str, np.ndarray, np.ndarray, tuple[float, float]]] = []
    for i in scenes.progress_bar(num, "segmunich", progress):
        covers = scenes.choose(rng, pool, int(rng.integers(3, 6)))
        cover, refl, _ = scenes.render_scene(
            rng, size, size, covers, rng.normal(0.0, 0.5, size=len(covers))
        )
        codes = np.array([SEGMUNICH_COVER_CODE[c] for c in covers], dtype=np.uint8)[cover]
        written.append(
            (
                f"{i:05d}",
                scenes.to_dn(scenes.select_bands(refl, SEGMUNICH_FILE_BANDS)),
                codes,
                scenes.random_origin(rng),
            )
        )
    present = [set(np.unique(codes).tolist()) for _, _, codes, _ in written]
    n_test = num // 5 if num >= 2 else 0
    test = set(scenes.covering_split(present, {"test": n_test, "train": 0}, rng)["test"].tolist())
    for i, (stem, image, codes, origin) in enumerate(written):
        split = "test" if i in test else "train"
        scenes.write_geotiff(root / split / "img" / f"{stem}.tif", image, 10.0, origin)
        scenes.write_geotiff(root / split / "label" / f"{stem}.tif", codes, 10.0, origin)
        stems[split].append(stem)
    (root / "dataset").mkdir(parents=True, exist_ok=True)
    for split, s in stems.items():
        (root / "dataset" / f"{split}.txt").write_text("".join(f"{x}\n" for x in s))
