"""Sentinel-2 data: one module per dataset, in its published on-disk layout, behind one registry.

* :mod:`util.data.errors`, :mod:`~util.data.raster`, :mod:`~util.data.base` - what the datasets
  share: sample errors, raster reading, the dataset base class and index files;
* :mod:`util.data.fmow`, :mod:`~util.data.bigearthnet`, :mod:`~util.data.eurosat`,
  :mod:`~util.data.oscd`, :mod:`~util.data.segmunich` - one dataset each (and its synthetic copy);
* :mod:`util.data.registry` - ``build_dataset``, names and aliases, collate, skipped samples;
* :mod:`util.data.check` - ``python -m util.data.check NAME ROOT``: read every sample once;
* :mod:`util.data.transforms`, :mod:`~util.data.subset`, :mod:`~util.data.sentinel2` -
  normalisations and transforms, stratified subsets, band facts;
* :mod:`util.data.synthetic` (and :mod:`~util.data.synthetic_scenes`) - synthetic data sets.

The public API is re-exported here: ``from util.data import build_dataset``.
"""

from util.data.base import IGNORE_INDEX, SentinelDataset
from util.data.bigearthnet import BEN19_CLASSES, BEN43_CLASSES, BEN43_TO_19, BigEarthNet
from util.data.errors import (
    BandCountError,
    CorruptFileError,
    DTypeError,
    IndexFileError,
    InputScaleError,
    LabelError,
    MissingFileError,
    NonFiniteError,
    SampleError,
    ShapeMismatchError,
)
from util.data.eurosat import EUROSAT_CLASSES, EUROSAT_FILE_BANDS, EuroSAT
from util.data.fmow import FMOW_CATEGORIES, FMoWSentinel
from util.data.oscd import OSCD, OSCD_IMAGES, OSCD_LABELS
from util.data.raster import BandGroups, raster_georef, read_raster
from util.data.registry import (
    ALIASES,
    DATASETS,
    build_dataset,
    collate,
    options_from_args,
    report_skipped,
    resolve_name,
    skipped_count,
)
from util.data.segmunich import (
    SEGMUNICH_CLASSES,
    SEGMUNICH_CODES,
    SEGMUNICH_FILE_BANDS,
    SegMunich,
)

__all__ = [
    "ALIASES",
    "BEN19_CLASSES",
    "BEN43_CLASSES",
    "BEN43_TO_19",
    "DATASETS",
    "EUROSAT_CLASSES",
    "EUROSAT_FILE_BANDS",
    "FMOW_CATEGORIES",
    "IGNORE_INDEX",
    "OSCD",
    "OSCD_IMAGES",
    "OSCD_LABELS",
    "SEGMUNICH_CLASSES",
    "SEGMUNICH_CODES",
    "SEGMUNICH_FILE_BANDS",
    "BandCountError",
    "BandGroups",
    "BigEarthNet",
    "CorruptFileError",
    "DTypeError",
    "EuroSAT",
    "FMoWSentinel",
    "IndexFileError",
    "InputScaleError",
    "LabelError",
    "MissingFileError",
    "NonFiniteError",
    "SampleError",
    "SegMunich",
    "SentinelDataset",
    "ShapeMismatchError",
    "build_dataset",
    "collate",
    "options_from_args",
    "raster_georef",
    "read_raster",
    "report_skipped",
    "resolve_name",
    "skipped_count",
]
