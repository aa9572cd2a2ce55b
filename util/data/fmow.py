"""fMoW-Sentinel: 13-band L1C GeoTIFFs of varying size, indexed by CSV (spec §5.5), and a
synthetic copy of that layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from util.data import synthetic_scenes as scenes
from util.data.base import RasterClassificationDataset
from util.data.errors import IndexFileError
from util.data.sentinel2 import L1C_BANDS

logger = logging.getLogger(__name__)

__all__ = ["FMOW_CATEGORIES", "FMoWSentinel", "write_synthetic"]

FMOW_CATEGORIES: tuple[str, ...] = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture",
    "archaeological_site", "barn", "border_checkpoint", "burial_site", "car_dealership",
    "construction_site", "crop_field", "dam", "debris_or_rubble", "educational_institution",
    "electric_substation", "factory_or_powerplant", "fire_station", "flooded_road", "fountain",
    "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse", "military_facility",
    "multi-unit_residential", "nuclear_powerplant", "office_building", "oil_or_gas_facility", "park",
    "parking_lot_or_garage", "place_of_worship", "police_station", "port", "prison", "race_track",
    "railway_bridge", "recreational_facility", "road_bridge", "runway", "shipyard", "shopping_mall",
    "single-unit_residential", "smokestack", "solar_farm", "space_facility", "stadium",
    "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower", "tunnel_opening",
    "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
)  # fmt: skip
FMOW_COLUMNS = ("category", "location_id", "image_id", "timestamp")


class FMoWSentinel(RasterClassificationDataset):
    """fMoW-Sentinel (13-band L1C GeoTIFFs of varying size) indexed by the CSV of spec §5.5.

    ``root`` is the folder the CSV's ``image_path`` column is relative to (the paper's hard-coded
    prefix); absolute ``image_path`` values are used as they are. Without an ``image_path`` column
    the path is derived as ``fmow-sentinel/<split>/<cat>/<cat>_<loc>/<cat>_<loc>_<img>.tif``.

    Args:
        root: data root.
        split: ``train`` / ``val`` / ``test_gt``: reads ``<root>/fmow-sentinel/<split>.csv`` (or
            ``<root>/<split>.csv``).
        index: explicit CSV path (the paper's ``--train_path``); overrides ``split``.
        years: inclusive year range kept (paper: 2000..2020); ``None`` keeps every row.
        transforms, skip_bad_samples, file_bands, dtypes, native_size: see
            :class:`~util.data.base.SentinelDataset`.
    """

    name = "fmow_sentinel"
    file_bands = L1C_BANDS
    num_classes = len(FMOW_CATEGORIES)
    classes = FMOW_CATEGORIES
    default_normalization = "minmax"
    split_files = ("fmow-sentinel/{split}.csv", "{split}.csv")

    def _set_options(self, years: tuple[int, int] | None = (2000, 2020)) -> None:
        self.years = years

    def _read_index(self, index: Path, explicit: bool) -> None:
        import pandas as pd

        if not index.is_file():
            raise IndexFileError(index, "index CSV not found")
        try:
            df = pd.read_csv(index)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise IndexFileError(index, f"malformed CSV ({err})") from err
        missing = [c for c in FMOW_COLUMNS if c not in df.columns]
        if missing:
            raise IndexFileError(index, f"missing columns {missing}; has {list(df.columns)}")
        if len(df) == 0:
            raise IndexFileError(index, "index CSV has no rows")
        unknown = sorted(set(df["category"]) - set(FMOW_CATEGORIES))
        if unknown:
            raise IndexFileError(index, f"unknown fMoW categories {unknown[:5]}")
        years = self.years
        if years is not None:
            ts = pd.to_datetime(df["timestamp"], errors="coerce", utc=True, format="ISO8601")
            if ts.isna().any():
                bad = df["timestamp"][ts.isna()].iloc[0]
                raise IndexFileError(index, f"unparseable timestamp {bad!r}")
            keep = (ts.dt.year >= years[0]) & (ts.dt.year <= years[1])
            df = df[keep.to_numpy()]
            if len(df) == 0:
                raise IndexFileError(index, f"no rows with a year in {years[0]}..{years[1]}")
        if "image_path" in df.columns:
            rel = df["image_path"].astype(str).tolist()
        else:
            sp = self.split
            rel = [
                f"fmow-sentinel/{sp}/{c}/{c}_{loc}/{c}_{loc}_{img}.tif"
                for c, loc, img in zip(df["category"], df["location_id"], df["image_id"])
            ]
        self.root = self._image_root(rel, index)
        self.paths = [self.root / p for p in rel]  # an absolute p replaces root
        lookup = {c: i for i, c in enumerate(FMOW_CATEGORIES)}
        self.labels = [lookup[c] for c in df["category"]]

    def _image_root(self, rel: list[str], index: Path) -> Path:
        """Folder the CSV's relative ``image_path`` values resolve against.

        ``root`` first; then the CSV's folder and its parent: the official ``train.csv`` lives in
        ``<data>/fmow-sentinel/`` and its paths start with ``fmow-sentinel/...``, so they resolve
        against ``<data>``. The first folder holding the first rows' files wins (logged when it
        is not ``root``); if none does, ``root`` is kept and reads name the missing file there.
        """
        probe = [p for p in rel[:3] if not Path(p).is_absolute()]
        if not probe:
            return self.root
        candidates = [self.root, index.parent, index.parent.parent]
        for base in dict.fromkeys(candidates):
            if all((base / p).is_file() for p in probe):
                if base != self.root:
                    logger.info(
                        "%s: image paths resolved against %s (not %s), where the files are",
                        index,
                        base,
                        self.root,
                    )
                return base
        return self.root


# --------------------------------------------------------------------------------------------------
# Synthetic copy
# --------------------------------------------------------------------------------------------------

#: Category of a synthetic scene, from its dominant land use.
FMOW_LAND_USE_CATEGORY = {
    "annual_crop": "crop_field", "forest": "park", "herbaceous": "recreational_facility",
    "highway": "interchange", "industrial": "factory_or_powerplant", "pasture": "golf_course",
    "permanent_crop": "barn", "residential": "single-unit_residential", "river": "dam",
    "lake": "lake_or_pond",
}  # fmt: skip
assert set(FMOW_LAND_USE_CATEGORY.values()) <= set(FMOW_CATEGORIES)


def write_synthetic(
    root: Path,
    num: int,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    progress: bool = False,
) -> None:
    """Write ``num`` synthetic images in the fMoW-Sentinel layout with ``train.csv`` / ``val.csv``.

    Each location is a mosaic of 1-3 land uses (the category is the dominant one) seen 1-3 times,
    some acquisitions cloudy; sides vary in ``[0.4 * size, size]`` (or ``size = (lo, hi)``).
    """
    import pandas as pd

    lo, hi = size if isinstance(size, tuple) else (max(8, round(0.4 * size)), size)
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    loc_counter: dict[str, int] = {}
    i = n_locations = 0
    bar = scenes.progress_bar(num, "fmow_sentinel", progress)
    while i < num:
        land_uses = scenes.choose(rng, tuple(scenes.LAND_USES), int(rng.integers(1, 4)))
        bias = [1.5] + [0.0] * (len(land_uses) - 1)
        category = FMOW_LAND_USE_CATEGORY[land_uses[0]]  # the dominant land use
        loc = loc_counter.get(category, 0)
        loc_counter[category] = loc + 1
        split = "val" if n_locations % 5 == 1 else "train"  # ~20 % of locations, from the 2nd on
        n_locations += 1
        lon, lat = rng.uniform(-120, 140), rng.uniform(-40, 60)
        for img_id in range(min(int(rng.integers(1, 4)), num - i)):
            h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            clouds = ("cloud",) if rng.random() < 0.2 else ()  # some acquisitions are cloudy
            refl = scenes.render_land_use(rng, h, w, land_uses, bias, extra_covers=clouds)
            rel = f"fmow-sentinel/{split}/{category}/{category}_{loc}/{category}_{loc}_{img_id}.tif"
            scenes.write_geotiff(root / rel, scenes.to_dn(refl), 10.0, scenes.random_origin(rng))
            year, month, day = (
                int(rng.integers(2015, 2021)),
                int(rng.integers(1, 13)),
                int(rng.integers(1, 29)),
            )
            d = 0.01
            poly = (
                f"POLYGON (({lon:.6f} {lat:.6f}, {lon + d:.6f} {lat:.6f}, {lon + d:.6f} "
                f"{lat + d:.6f}, {lon:.6f} {lat + d:.6f}, {lon:.6f} {lat:.6f}))"
            )
            rows[split].append(
                {
                    "category": category,
                    "location_id": loc,
                    "image_id": img_id,
                    "timestamp": f"{year:04d}-{month:02d}-{day:02d}T10:{int(rng.integers(0, 60)):02d}:00Z",
                    "polygon": poly,
                    "image_path": rel,
                }
            )
            i += 1
            bar.update(1)
    bar.close()
    for split, r in rows.items():
        df = pd.DataFrame(
            r, columns=["category", "location_id", "image_id", "timestamp", "polygon", "image_path"]
        )
        df = df.sort_values(["category", "location_id", "timestamp"]).reset_index(drop=True)
        df.to_csv(root / "fmow-sentinel" / f"{split}.csv")
