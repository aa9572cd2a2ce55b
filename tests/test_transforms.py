"""Normalisations and train/eval transforms (spec §5.3/§5.4), joint on image and mask."""

from __future__ import annotations

import pytest
import torch

from util.data import BandGroups
from util.data.transforms import (
    NORMALIZATIONS,
    RandomResizedCropFlip,
    SampleTransform,
    build_transforms,
    default_normalization,
    get_normalization,
)


def _raw(c: int = 12, h: int = 40, w: int = 36, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, h, w, generator=g) * 4000 + 100


def test_minmax_per_band_and_constant_band():
    x = _raw()
    x[4] = 1234.0  # constant band
    y = get_normalization("minmax")(x)
    assert torch.isfinite(y).all()
    assert torch.all(y[4] == 0)
    others = torch.cat([y[:4], y[5:]])
    assert torch.allclose(others.amin((1, 2)), torch.zeros(11), atol=1e-6)
    assert torch.allclose(others.amax((1, 2)), torch.ones(11), atol=1e-6)
    # also through crop + bicubic resize (the affine map is applied after them)
    out = build_transforms("fmow_sentinel", True, 24)({"image": x})["image"]
    assert torch.all(out[4] == 0) and torch.isfinite(out).all()
    # per image: OSCD-shaped input normalises each date separately
    pair = torch.stack([x, 2 * x])
    yp = get_normalization("minmax")(pair)
    assert torch.allclose(yp[0], yp[1], atol=1e-6)


def test_sentinel_2sigma_matches_formula_and_quantises():
    norm = get_normalization("sentinel_2sigma_fmow")
    x = _raw()
    y = norm(x)
    mean_b02, std_b02 = 1184.3824625, 650.2842772  # fMoW B2 (model slot 1)
    ref = ((x[1] - (mean_b02 - 2 * std_b02)) / (4 * std_b02) * 255).clamp(0, 255).floor() / 255
    assert torch.allclose(y[1], ref, atol=1e-6)
    assert torch.allclose(y * 255, (y * 255).round(), atol=1e-4)
    assert y.min() >= 0 and y.max() <= 1


def test_zscore_eurosat_table_mapped_by_band_name():
    norm = get_normalization("zscore_eurosat")
    # table index 8 (B8A in the L1C order) lands in model slot 8, index 9 (B09) in slot 9,
    # index 11/12 (B11/B12) in slots 10/11; the B10 placeholder (index 10) is dropped.
    assert norm.mean[8].item() == pytest.approx(2581.64687018)
    assert norm.mean[9].item() == pytest.approx(2645.51888987)
    assert norm.mean[10].item() == pytest.approx(2368.51236873)
    assert 582.72633433 not in [round(v, 8) for v in norm.mean.tolist()]
    x = norm.mean.view(12, 1, 1).expand(12, 4, 4).clone()
    assert torch.allclose(norm(x), torch.zeros(12, 4, 4), atol=1e-5)


def test_reflectance_and_none():
    x = _raw()
    assert torch.allclose(get_normalization("reflectance_10000")(x), x / 10000)
    assert torch.equal(get_normalization("none")(x), x)
    with pytest.raises(KeyError, match="unknown normalization"):
        get_normalization("imagenet")


def test_defaults_per_dataset_and_task():
    assert default_normalization("fmow_sentinel", "pretrain") == "minmax"
    assert default_normalization("sentinel") == "minmax"
    assert default_normalization("bigearthnet", "pretrain") == "minmax"
    assert default_normalization("bigearthnet", "finetune") == "sentinel_2sigma_fmow"
    assert default_normalization("bigearthnet_finetune", "pretrain") == "sentinel_2sigma_fmow"
    assert default_normalization("euro_sat") == "zscore_eurosat"
    assert default_normalization("oscd") == "minmax"
    assert default_normalization("segmunich") == "minmax"
    t = build_transforms("bigearthnet", True, 32, task="pretrain")
    assert t.normalization == "minmax"
    assert build_transforms(
        "eurosat", False, 32, normalization="reflectance_10000"
    ).normalization == ("reflectance_10000")
    assert set(NORMALIZATIONS) >= {
        "minmax",
        "sentinel_2sigma_fmow",
        "zscore_eurosat",
        "reflectance_10000",
    }


def test_train_and_eval_shapes():
    x = _raw(h=70, w=50)
    tr = build_transforms("fmow_sentinel", True, 32)
    ev = build_transforms("fmow_sentinel", False, 32)
    out = tr({"image": x, "label": torch.tensor(3)})
    assert out["image"].shape == (12, 32, 32) and out["label"] == 3
    assert ev({"image": x})["image"].shape == (12, 32, 32)
    # eval = Resize(int(size / crop_pct)) then CenterCrop: 128 -> 146
    resize = ev.geometric.transforms[0]
    assert build_transforms("bigearthnet", False, 128).geometric.transforms[0].size == [146]
    assert resize.size == [int(32 / (224 / 256))]
    with pytest.raises(ValueError, match="input_size"):
        build_transforms("eurosat", True, None)


@pytest.mark.parametrize("normalization", ["minmax", "zscore_eurosat", "reflectance_10000"])
def test_affine_after_crop_equals_paper_order(normalization):
    """Applying the affine map after crop/resize equals normalising the full image first."""
    x = _raw(h=60, w=52)
    fast = build_transforms("eurosat", True, 24, normalization=normalization)
    torch.manual_seed(7)
    a = fast({"image": x})["image"]
    norm = get_normalization(normalization)
    slow = SampleTransform("none", fast.geometric)
    torch.manual_seed(7)
    b = slow({"image": norm(x)})["image"]
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_train_transform_is_random_eval_is_not():
    x = _raw(h=48, w=48)
    tr = build_transforms("eurosat", True, 24)
    ev = build_transforms("eurosat", False, 24)
    outs = [tr({"image": x})["image"] for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    assert torch.equal(ev({"image": x})["image"], ev({"image": x})["image"])


@pytest.mark.parametrize("name,shape", [("segmunich", (12, 20, 20)), ("oscd", (2, 12, 20, 20))])
def test_dense_transforms_keep_image_and_mask_aligned(name, shape):
    g = torch.Generator().manual_seed(1)
    mask = torch.randint(0, 13, shape[-2:], generator=g)
    image = mask.float().expand(*shape).clone() + 1.0  # image == mask + 1 in every band
    t = build_transforms(name, True, 16, normalization="none")
    seen = set()
    for _ in range(12):
        out = t({"image": image, "mask": mask})
        assert out["image"].shape == (*shape[:-2], 16, 16) and out["mask"].shape == (16, 16)
        assert out["mask"].dtype == torch.int64
        assert torch.equal(
            out["image"][..., 0, :, :] - 1,
            out["mask"].float().expand_as(out["image"][..., 0, :, :]),
        )
        seen.add(out["mask"][0, 0].item())
    assert len(seen) > 1  # crops / flips / rotations actually vary
    # padding: the mask is padded with 255 (ignore), never with a class
    big = build_transforms(name, True, 24, normalization="none")({"image": image, "mask": mask})
    assert (big["mask"] == 255).sum() == 24 * 24 - 20 * 20
    ev = build_transforms(name, False, None)({"image": image, "mask": mask})
    assert torch.equal(ev["mask"], mask) and ev["image"].shape == shape


@pytest.mark.parametrize(
    "dataset,task,size",
    [
        ("fmow_sentinel", "pretrain", 96),
        ("bigearthnet", "finetune", 128),
        ("eurosat", "finetune", 32),
    ],
)
def test_eval_transform_matches_the_papers_ops(dataset, task, size):
    """Our eval output equals the paper's ops in the paper's order, in float64 (spec §5.3/§5.4)."""
    import numpy as np
    from torchvision import transforms as T

    x = _raw(h=70, w=64)
    ours = build_transforms(dataset, False, size, task=task)({"image": x})["image"]
    a = x.double().numpy()
    if dataset == "fmow_sentinel":  # per-image, per-band min-max
        lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
        a = (a - lo) / (hi - lo + 1e-10)
    elif dataset == "bigearthnet":  # SentinelNormalize with the fMoW stats (B10 row removed)
        from util.data.transforms import FMOW_MEAN_L1C, FMOW_STD_L1C

        keep = [i for i in range(13) if i != 10]
        mean = np.array(FMOW_MEAN_L1C)[keep][:, None, None]
        std = np.array(FMOW_STD_L1C)[keep][:, None, None]
        a = np.clip((a - (mean - 2 * std)) / (4 * std) * 255, 0, 255).astype(np.uint8) / 255.0
    else:  # EuroSAT: Normalize with its table, B10 placeholder dropped (model order)
        from util.data.transforms import EUROSAT_MEAN_L1C, EUROSAT_STD_L1C

        keep = [i for i in range(13) if i != 10]
        a = (a - np.array(EUROSAT_MEAN_L1C)[keep][:, None, None]) / np.array(EUROSAT_STD_L1C)[keep][
            :, None, None
        ]
    crop_pct = 224 / 256
    paper = T.Compose(
        [
            T.Resize(
                int(size / crop_pct), interpolation=T.InterpolationMode.BICUBIC, antialias=False
            ),
            T.CenterCrop(size),
        ]
    )(torch.from_numpy(a))
    assert ours.shape == paper.shape == (12, size, size)
    assert torch.allclose(ours.double(), paper, atol=2e-5), (ours.double() - paper).abs().max()


@pytest.mark.parametrize(
    "normalization", ["none", "minmax", "sentinel_2sigma_fmow", "zscore_eurosat"]
)
@pytest.mark.parametrize("size,shape", [(32, (40, 40)), (24, (30, 52))])
def test_train_crop_equals_torchvision(normalization, size, shape):
    """The separable crop-resize-flip equals v2 RandomResizedCrop (bicubic, no antialias) +
    RandomHorizontalFlip with the same seed: same random draws, same values."""
    from torchvision.transforms import v2

    bicubic = v2.InterpolationMode.BICUBIC
    ref = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=bicubic, antialias=False),
            v2.RandomHorizontalFlip(),
        ]
    )
    tf = build_transforms("bigearthnet", True, size, normalization=normalization)
    assert isinstance(tf.geometric, RandomResizedCropFlip)
    norm = get_normalization(normalization)
    flips = set()
    for seed in range(12):
        x = _raw(h=shape[0], w=shape[1], seed=seed)
        torch.manual_seed(seed)
        got = tf({"image": x})["image"]
        torch.manual_seed(seed)
        affine = norm.affine(x)  # min-max: statistics of the full image, applied after the crop
        if affine is None:
            want = ref(norm(x))
        else:
            want = (ref(x) - affine[0]) * affine[1]
        assert got.shape == (12, size, size)
        assert torch.allclose(got, want, atol=1e-4 * want.abs().max().item() + 1e-6)
        torch.manual_seed(seed)
        flips.add(tf.geometric.make_params(shape)["flip"])
    assert flips == {True, False}


def _band_groups(seed: int = 0) -> tuple[BandGroups, torch.Tensor]:
    """A 12-band patch as BigEarthNet stores it (10 m: 48 px, 20 m: 24 px, 60 m: 8 px), smooth."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    full = torch.stack(
        [
            1000 + 500 * torch.sin(3 * xx + 2 * yy + float(k)) + 300 * yy * float(k % 3)
            for k in range(12)
        ]
    ) + torch.rand(12, 48, 48, generator=g)
    res = {1: 1, 2: 1, 3: 1, 7: 1, 0: 6, 9: 6}  # MODEL_BANDS positions: 10 m x1, 60 m x6
    groups: dict[int, list[int]] = {}
    for band in range(12):
        groups.setdefault(res.get(band, 2), []).append(band)
    pool = torch.nn.functional.avg_pool2d
    return (
        BandGroups(
            [(idx, pool(full[idx][None], f)[0]) for f, idx in groups.items()], (48, 48), "bilinear"
        ),
        full,
    )


def test_band_groups_crop_first():
    bg, _ = _band_groups()
    tf = build_transforms("bigearthnet", True, 32, normalization="minmax")
    for seed in range(6):
        torch.manual_seed(seed)
        got = tf({"image": bg})["image"]
        torch.manual_seed(seed)
        ref = tf({"image": bg.to_grid()})["image"]  # upsample to 10 m, then crop + resize
        assert got.shape == (12, 32, 32) and torch.isfinite(got).all()
        assert torch.allclose(got[[1, 2, 3, 7]], ref[[1, 2, 3, 7]], atol=1e-5)  # 10 m: same
        assert (got - ref).abs().mean() < 0.03  # 20/60 m: one interpolation instead of two
    # band order: every band keeps its own values (a constant band k stays k)
    const = BandGroups(
        [(idx, torch.full((len(idx), *t.shape[-2:]), 0.0) + torch.tensor(idx).view(-1, 1, 1))
         for idx, t in bg.groups],
        bg.shape,
        "bilinear",
    )  # fmt: skip
    out = build_transforms("bigearthnet", True, 16, normalization="none")({"image": const})
    assert torch.allclose(out["image"], torch.arange(12.0).view(12, 1, 1).expand(12, 16, 16))
    # other paths (eval) put the bands on the 10 m grid first
    ev = build_transforms("bigearthnet", False, 32, normalization="minmax")
    assert torch.equal(ev({"image": bg})["image"], ev({"image": bg.to_grid()})["image"])


def test_band_groups_window_maps_to_native_pixels():
    """A window aligned with the coarse grid is exactly a bicubic resize of the native pixels."""
    bg, _ = _band_groups(1)
    crop = RandomResizedCropFlip(32)
    idx20, x20 = next((i, t) for i, t in bg.groups if t.shape[-1] == 24)
    for top, left, size, flip in [(0, 0, 48, False), (8, 12, 28, True), (2, 4, 40, False)]:
        params = {"top": top, "left": left, "height": size, "width": size, "flip": flip}
        got = crop.resample(x20, params, bg.shape)
        window = x20[:, top // 2 : (top + size) // 2, left // 2 : (left + size) // 2]
        want = torch.nn.functional.interpolate(
            window[None], size=(32, 32), mode="bicubic", align_corners=False
        )[0]
        if flip:
            want = want.flip(-1)
        assert torch.allclose(got, want, atol=1e-2), (top, left, size)
