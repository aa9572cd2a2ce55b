"""Normalisation schemes (selectable by name) and train/eval transforms on dict samples.

Normalisations (spec §5.3), all on raw DN float32 in model band order; each has a ``name`` that
checkpoints store so inference uses exactly what the weights saw:

* ``minmax`` - per image, per band ``(x - min) / (max - min + 1e-10)`` (fMoW-Sentinel and
  BigEarthNet pretraining, OSCD, SegMunich). A constant band becomes 0, never NaN.
* ``sentinel_2sigma_fmow`` - ``floor(clip((x - (mean - 2 std)) / (4 std) * 255, 0, 255)) / 255``
  with the fMoW-Sentinel statistics (BigEarthNet finetuning, SeCo/SatMAE style).
* ``zscore_eurosat`` - ``(x - mean) / std`` with the paper's EuroSAT table (EuroSAT finetuning).
* ``reflectance_10000`` - ``x / 10000`` (torchgeo / SSL4EO convention).
* ``none`` - identity.

Transforms (spec §5.4), torchvision ``transforms.v2`` on tensors, joint on ``image`` and ``mask``:

* classification / pretraining, train: ``RandomResizedCrop(size, scale=(0.2, 1), bicubic)`` +
  horizontal flip; eval: ``Resize(int(size / crop_pct), bicubic)`` + ``CenterCrop(size)`` with
  ``crop_pct = 224/256`` for ``size <= 224``. No antialiasing (what torchvision 0.15 did on tensors,
  i.e. what the released weights saw). The train crop is :class:`RandomResizedCropFlip`: v2's
  random draws and bicubic values, computed as two small matrix products; BigEarthNet per-band
  files (:class:`util.data.raster.BandGroups`) are cropped from each band's native grid.
* dense (OSCD, SegMunich), train: optional ``RandomCrop(size)`` (image padded with 0, mask with
  255) + horizontal / vertical flips + random 90-degree rotation; eval: normalisation only.

Per-band affine normalisations (min-max, z-score, /10000) commute with crop and interpolation, so
their statistics are taken on the full image but the affine map is applied after cropping and
resizing (same result, a fraction of the work). The 2-sigma scheme clips and quantises, so it is
applied to the full image first, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from util.data.raster import BandGroups
from util.data.sentinel2 import L1C_BANDS, MODEL_BANDS

__all__ = [
    "NORMALIZATIONS",
    "Normalization",
    "RandomResizedCropFlip",
    "RandomRot90",
    "SampleTransform",
    "build_transforms",
    "default_normalization",
    "get_normalization",
]

# --------------------------------------------------------------------------------------------------
# Statistics (spec §5.2), mapped to model band order by name
# --------------------------------------------------------------------------------------------------

#: fMoW-Sentinel per-band DN statistics, 13 values in L1C order (B8A 9th, B10 11th).
FMOW_MEAN_L1C = (
    1370.19151926, 1184.3824625, 1120.77120066, 1136.26026392, 1263.73947144, 1645.40315151,
    1846.87040806, 1762.59530783, 1972.62420416, 582.72633433, 14.77112979, 1732.16362238,
    1247.91870117,
)  # fmt: skip
FMOW_STD_L1C = (
    633.15169573, 650.2842772, 712.12507725, 965.23119807, 948.9819932, 1108.06650639,
    1258.36394548, 1233.1492281, 1364.38688993, 472.37967789, 14.3114637, 1310.36996126,
    1087.6020813,
)  # fmt: skip
#: The paper's EuroSAT table (13 values). Index 10 is a placeholder for the dropped B10 and the 12
#: real values are the commented-out 12-band table of the paper's code, so the table is in the
#: L1C order (B8A 9th): it is mapped to bands by that order, not by the files' order (B8A last).
EUROSAT_MEAN_L1C = (
    752.40087073, 884.29673756, 1144.16202635, 1297.47289228, 1624.90992062, 2194.6423161,
    2422.21248945, 2517.76053101, 2581.64687018, 2645.51888987, 582.72633433, 2368.51236873,
    1805.06846033,
)  # fmt: skip
EUROSAT_STD_L1C = (
    1108.02887453, 1155.15170768, 1183.6292542, 1368.11351514, 1370.265037, 1355.55390699,
    1416.51487101, 1474.78900051, 1439.3086061, 1582.28010962, 472.37967789, 1455.52084939,
    1343.48379601,
)  # fmt: skip


def _model_order(values: Sequence[float]) -> torch.Tensor:
    lookup = dict(zip(L1C_BANDS, values))
    return torch.tensor([lookup[b] for b in MODEL_BANDS], dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Normalisations
# --------------------------------------------------------------------------------------------------


class Normalization:
    """A named normalisation of raw DN images ``(..., C, H, W)`` in model band order.

    ``affine(image)`` returns per-band ``(offset, scale)`` of shape ``(..., C, 1, 1)``, meaning
    ``y = (x - offset) * scale``, when the scheme is a per-band affine map (so it can be applied
    after cropping), else ``None``.
    """

    name = "none"
    #: statistics come from the image itself (per-image schemes); a scene predictor takes them
    #: over the whole scene, not per tile
    per_image = False

    def affine(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        zero = torch.zeros(image.shape[:-2] + (1, 1), dtype=image.dtype)
        return zero, torch.ones_like(zero)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        offset, scale = self.affine(image)
        return (image - offset) * scale

    def for_bands(self, bands: list[int]) -> Normalization:
        """The same scheme for an image holding only the model bands at positions ``bands``."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class MinMax(Normalization):
    """Per-image, per-band min-max to [0, 1]; ``eps`` keeps a constant band finite (it maps to 0)."""

    name = "minmax"
    per_image = True

    def __init__(self, eps: float = 1e-10):
        self.eps = eps

    def affine(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = image.flatten(-2)
        # amin + amax: much cheaper than torch.aminmax here (bench_loader.py "component" rows)
        lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        span = hi - lo
        # a constant band maps to exactly 0, also after interpolation (which may jitter it by ulps)
        scale = torch.where(span > 0, 1.0 / (span + self.eps), torch.zeros_like(span))
        return lo.unsqueeze(-1), scale.unsqueeze(-1)


class ZScore(Normalization):
    """``(x - mean) / std`` with fixed per-band statistics in model order."""

    def __init__(self, name: str, mean: torch.Tensor, std: torch.Tensor):
        self.name = name
        self.mean, self.std = mean, std

    def affine(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = image.shape[-3]
        if c != self.mean.numel():
            raise ValueError(f"{self.name}: expected {self.mean.numel()} bands, got {c}")
        return self.mean.view(c, 1, 1), (1.0 / self.std).view(c, 1, 1)

    def for_bands(self, bands: list[int]) -> ZScore:
        return ZScore(self.name, self.mean[bands], self.std[bands])


class Sentinel2Sigma(Normalization):
    """SeCo/SatMAE ``SentinelNormalize``: ``[mean - 2 std, mean + 2 std]`` -> 256 levels -> [0, 1]."""

    def __init__(self, name: str, mean: torch.Tensor, std: torch.Tensor):
        self.name = name
        self.mean, self.std = mean, std
        self.lo = (mean - 2 * std).view(-1, 1, 1)
        self.width = (4 * std).view(-1, 1, 1)

    def affine(self, image: torch.Tensor) -> None:
        return None

    def for_bands(self, bands: list[int]) -> Sentinel2Sigma:
        return Sentinel2Sigma(self.name, self.mean[bands], self.std[bands])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.lo) / self.width * 255.0
        return x.clamp_(0.0, 255.0).floor_().div_(255.0)  # the paper's uint8 cast truncates


NORMALIZATIONS: dict[str, Normalization] = {
    n.name: n
    for n in (
        Normalization(),
        MinMax(),
        Sentinel2Sigma(
            "sentinel_2sigma_fmow", _model_order(FMOW_MEAN_L1C), _model_order(FMOW_STD_L1C)
        ),
        ZScore("zscore_eurosat", _model_order(EUROSAT_MEAN_L1C), _model_order(EUROSAT_STD_L1C)),
        ZScore("zscore_fmow", _model_order(FMOW_MEAN_L1C), _model_order(FMOW_STD_L1C)),
        ZScore("reflectance_10000", torch.zeros(12), torch.full((12,), 10000.0)),
    )
}


def get_normalization(name: str) -> Normalization:
    """Normalisation by name (see :data:`NORMALIZATIONS`)."""
    try:
        return NORMALIZATIONS[name]
    except KeyError:
        raise KeyError(
            f"unknown normalization {name!r}; known: {', '.join(NORMALIZATIONS)}"
        ) from None


def default_normalization(dataset_name: str, task: str = "finetune") -> str:
    """The paper's normalisation for a dataset (registry name or alias) and task.

    ``task="pretrain"`` gives the pretraining scheme (per-image min-max), ``"finetune"`` the
    downstream one. The paper alias ``bigearthnet_finetune`` always gives the finetuning scheme.
    """
    from util.data.registry import DATASETS, resolve_name

    if task not in ("pretrain", "finetune"):
        raise ValueError(f"task must be 'pretrain' or 'finetune', got {task!r}")
    cls = DATASETS[resolve_name(dataset_name)]
    if task == "pretrain" and dataset_name.strip().lower() != "bigearthnet_finetune":
        return cls.pretrain_normalization
    return cls.default_normalization


# --------------------------------------------------------------------------------------------------
# Geometric transforms
# --------------------------------------------------------------------------------------------------


class RandomRot90(v2.Transform):
    """Rotate image and mask together by ``k * 90`` degrees, ``k`` uniform in {0, 1, 2, 3}.

    (torchvision has no exact right-angle rotation transform; ``RandomRotation`` resamples.)
    """

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt, params: dict):
        if params["k"] == 0 or not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return inpt
        return tv_tensors.wrap(
            torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1)), like=inpt
        )


_TAPS = np.arange(-1, 3)  # the 4 source pixels around a sample: floor(x) - 1 ... floor(x) + 2


def _cubic_matrix(
    n: int, start: float, length: float, size: int, flip: bool
) -> tuple[torch.Tensor, int, int]:
    """Bicubic resampling (``a = -0.75``) of the window ``[start, start + length)`` of an axis of
    ``n`` pixels (pixel ``k`` covers ``[k, k + 1)``) to ``size`` samples, as a ``(size, hi - lo)``
    matrix over the source pixels ``lo:hi`` the window overlaps, whose edge pixels repeat outward:
    for an integer window exactly ``F.interpolate(mode="bicubic", align_corners=False)`` of the
    cropped pixels. ``flip`` reverses the output order."""
    lo, hi = math.floor(start), min(n, math.ceil(start + length))
    width = hi - lo
    x = (np.arange(size) + 0.5) * (length / size) + (start - 0.5 - lo)  # sample centres in lo:hi
    f = np.floor(x)
    d = np.abs((x - f)[:, None] - _TAPS)  # distance to each tap
    a = -0.75
    w = np.where(
        d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    )
    taps = np.minimum(np.maximum(f.astype(np.int64)[:, None] + _TAPS, 0), width - 1)
    taps += np.arange(0, size * width, width)[:, None]  # flat (row, tap) positions
    m = np.bincount(taps.ravel(), weights=w.ravel(), minlength=size * width).reshape(size, width)
    if flip:
        m = m[::-1]
    return torch.from_numpy(m.astype(np.float32)), lo, hi


class RandomResizedCropFlip:
    """``RandomResizedCrop(size, scale, bicubic, antialias=False)`` then ``RandomHorizontalFlip(p)``
    with torchvision v2's parameters and random draws, computed as one separable resampling (two
    small matrix products per band group) instead of a 16-tap bicubic gather plus a flip copy.

    Call with a tensor ``(..., C, H, W)``, or with the native-resolution band groups of a
    :class:`util.data.raster.BandGroups`: the crop window, drawn on the grid ``shape``, is mapped
    into each group's own pixel grid and each group is resampled once from there straight to
    ``size`` (BigEarthNet's 20/60 m bands: one bicubic pass instead of an upsampling to 10 m
    followed by the bicubic crop-resize).
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0), p: float = 0.5):
        bicubic = v2.InterpolationMode.BICUBIC
        self.crop = v2.RandomResizedCrop(size, scale=scale, interpolation=bicubic, antialias=False)
        self.size = tuple(self.crop.size)
        self.p = p

    def make_params(self, shape: tuple[int, int]) -> dict:
        """``top``, ``left``, ``height``, ``width`` on a grid of ``shape``, and ``flip``."""
        params = self.crop.make_params([torch.empty((0, *shape))])
        params["flip"] = bool(torch.rand(1) < self.p)  # RandomHorizontalFlip's draw
        return params

    def resample(
        self, image: torch.Tensor, params: dict, shape: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """The drawn window (on the grid ``shape``, default ``image``'s own) of ``image``."""
        h, w = image.shape[-2:]
        gh, gw = shape if shape is not None else (h, w)
        wy, y0, y1 = _cubic_matrix(
            h, params["top"] * h / gh, params["height"] * h / gh, self.size[0], False
        )
        wx, x0, x1 = _cubic_matrix(
            w, params["left"] * w / gw, params["width"] * w / gw, self.size[1], params["flip"]
        )
        return wy @ image[..., y0:y1, x0:x1] @ wx.T

    def __repr__(self) -> str:
        return f"RandomResizedCropFlip(size={self.size}, scale={self.crop.scale}, p={self.p})"


DENSE_DATASETS = ("oscd", "segmunich")


def _geometric(
    dataset: str, is_train: bool, input_size: int | None
) -> v2.Transform | RandomResizedCropFlip | None:
    bicubic = v2.InterpolationMode.BICUBIC
    if dataset in DENSE_DATASETS:
        if not is_train:
            return None
        ops: list[v2.Transform] = []
        if input_size is not None:
            fill = {tv_tensors.Image: 0.0, tv_tensors.Mask: 255}
            ops.append(v2.RandomCrop(input_size, pad_if_needed=True, fill=fill))
        ops += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRot90()]
        return v2.Compose(ops)
    if input_size is None:
        raise ValueError(f"{dataset}: input_size is required")
    if is_train:
        return RandomResizedCropFlip(input_size, scale=(0.2, 1.0))
    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    return v2.Compose(
        [
            v2.Resize(int(input_size / crop_pct), interpolation=bicubic, antialias=False),
            v2.CenterCrop(input_size),
        ]
    )


class SampleTransform:
    """``sample -> sample``: normalise ``image`` and apply the geometric transform jointly to
    ``image`` and ``mask``. ``normalization`` (a name) is what checkpoints should record.

    ``image`` may also be a :class:`util.data.raster.BandGroups` (bands at native resolutions): the
    training crop resamples each group from its own grid (normalised there: the min-max
    statistics of each band on its own pixels, the 2-sigma map pixel-wise before resampling);
    every other path first puts the bands on one grid.
    """

    accepts_band_groups = True

    def __init__(self, normalization: str, geometric: v2.Transform | RandomResizedCropFlip | None):
        self.norm = get_normalization(normalization)
        self.normalization = normalization
        self.geometric = geometric

    def _crop_first(self, image: torch.Tensor | BandGroups) -> torch.Tensor:
        """Normalise and crop-resize-flip, each band group from its own grid."""
        if isinstance(image, BandGroups):
            groups, shape = image.groups, image.shape
            out = torch.empty((image.num_bands, *self.geometric.size), dtype=torch.float32)
        else:
            groups, shape, out = [(None, image)], tuple(image.shape[-2:]), None
        params = self.geometric.make_params(shape)
        for bands, x in groups:
            norm = self.norm if bands is None else self.norm.for_bands(bands)
            affine = norm.affine(x)
            if affine is None:
                x = norm(x)
            y = self.geometric.resample(x, params, shape)
            if affine is not None:
                offset, scale = affine
                y = y.sub_(offset).mul_(scale)
            if bands is None:
                return y
            out[bands] = y
        return out

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        image = sample["image"]
        if isinstance(self.geometric, RandomResizedCropFlip) and "mask" not in sample:
            out["image"] = self._crop_first(image)
            return out
        if isinstance(image, BandGroups):
            image = image.to_grid()
        affine = self.norm.affine(image)
        if affine is None:
            image = self.norm(image)
        if self.geometric is not None and "mask" in sample:
            image, mask = self.geometric(tv_tensors.Image(image), tv_tensors.Mask(sample["mask"]))
            image = image.as_subclass(torch.Tensor)
            out["mask"] = mask.as_subclass(torch.Tensor)
        elif self.geometric is not None:
            image = self.geometric(image)  # a lone plain tensor is an image to v2 (less overhead)
        if affine is not None:
            offset, scale = affine
            image = (image - offset) * scale
        out["image"] = image.contiguous()
        return out

    def __repr__(self) -> str:
        return f"SampleTransform(normalization={self.normalization!r}, geometric={self.geometric})"


def build_transforms(
    dataset_name: str,
    is_train: bool,
    input_size: int | None,
    normalization: str | None = None,
    task: str = "finetune",
) -> SampleTransform:
    """Transforms for a dataset (registry name or paper alias).

    Args:
        dataset_name: e.g. ``"eurosat"``, ``"bigearthnet"``, ``"sentinel"``.
        is_train: training (random) or evaluation (deterministic) pipeline.
        input_size: output side in pixels (classification/pretraining: required; dense tasks:
            optional random-crop size for training).
        normalization: a name of :data:`NORMALIZATIONS`; ``None`` = the paper's scheme for this
            dataset and ``task`` (:func:`default_normalization`).
        task: ``"pretrain"`` or ``"finetune"`` (only changes the default normalisation;
            BigEarthNet: min-max for pretraining, 2-sigma fMoW statistics for finetuning).

    Returns:
        A :class:`SampleTransform`; its ``normalization`` attribute is the scheme's name.
    """
    from util.data.registry import resolve_name

    key = resolve_name(dataset_name)
    if normalization is None:
        normalization = default_normalization(dataset_name, task)
    get_normalization(normalization)  # validate early
    if input_size is not None and (input_size <= 0 or not math.isfinite(input_size)):
        raise ValueError(f"input_size must be a positive integer, got {input_size}")
    return SampleTransform(normalization, _geometric(key, is_train, input_size))
