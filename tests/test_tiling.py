"""util.inference.tiling: tile origins, blend weights, sliding-window inference equals whole-image output."""

import pytest
import torch

from util.inference.tiling import (
    blend_weights,
    coverage,
    paper_tile_starts,
    sliding_window_inference,
    tile_starts,
)


def test_tile_starts_cover_and_align():
    assert tile_starts(20, 32, 16) == [0]
    assert tile_starts(32, 32, 16) == [0]
    assert tile_starts(50, 32, 16) == [0, 16, 18]
    assert tile_starts(64, 32, 32) == [0, 32]
    for length in range(1, 140):
        for stride in (7, 16, 31, 32):
            starts = tile_starts(length, 32, stride)
            assert starts[0] == 0 and starts == sorted(set(starts))
            assert starts[-1] + 32 >= length  # far border reached
            if length >= 32:
                assert starts[-1] == length - 32
            assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # no gaps
    with pytest.raises(ValueError, match="uncovered"):
        tile_starts(100, 32, 33)


def test_paper_tile_starts_leave_the_far_border():
    # spec §7.1: n = ceil((H - 128 + 1) / 63) tiles at 63 i; a 600 px side stops at 441 + 128 = 569
    assert paper_tile_starts(600) == [0, 63, 126, 189, 252, 315, 378, 441]
    assert paper_tile_starts(128) == [0]
    assert paper_tile_starts(100) == []


@pytest.mark.parametrize("mode", ["uniform", "cosine"])
def test_blend_weights_positive(mode):
    w = blend_weights(32, 24, mode)
    assert w.shape == (32, 24) and (w > 0).all()
    if mode == "cosine":
        assert w[16, 12] > w[0, 0]
    with pytest.raises(ValueError):
        blend_weights(8, 8, "gauss")


@pytest.mark.parametrize("size", [(50, 70), (128, 128), (200, 131)])
@pytest.mark.parametrize("stride", [16, 23, 32])
def test_every_pixel_weight_is_one_after_normalisation(size, stride):
    h, w = size
    cov = coverage(h, w, 32, stride, "uniform")
    # each pixel's tile weights divided by their sum: exactly 1 (integers in float32)
    assert torch.equal(cov / cov, torch.ones_like(cov))
    assert (cov >= 1).all() and torch.equal(cov, cov.round())
    # and the stitched output of a constant-one model is exactly one everywhere
    ones = sliding_window_inference(
        lambda t: torch.ones(t.shape[0], 1, 32, 32), torch.zeros(1, 1, h, w), 32, stride, 7, 1
    )
    assert torch.equal(ones, torch.ones(1, 1, h, w))
    covc = coverage(h, w, 32, stride, "cosine")
    assert (covc > 0).all()


def _per_pixel_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(5, 8, 1), torch.nn.GELU(), torch.nn.Conv2d(8, 3, 1)
    ).eval()


@pytest.mark.parametrize("size", [(50, 70), (128, 128), (200, 131)])
@pytest.mark.parametrize("stride", [16, 24, 32])
@pytest.mark.parametrize("blend", ["uniform", "cosine"])
def test_sliding_window_equals_whole_image(size, stride, blend):
    model = _per_pixel_model()
    x = torch.randn(2, 5, *size)
    with torch.no_grad():
        whole = model(x)
    stitched = sliding_window_inference(
        model, x, 32, stride, batch_size=5, out_channels=3, blend=blend
    )
    assert stitched.shape == whole.shape
    torch.testing.assert_close(stitched, whole, rtol=1e-5, atol=1e-5)


def test_two_date_layout_and_small_scene_padding():
    """(N, 2, 12, H, W) input; a scene smaller than a tile is padded then cropped back."""
    x = torch.randn(1, 2, 4, 20, 45)

    def fn(t):  # per-pixel difference of the dates; the padded fill must not leak into pixels
        assert t.shape[-2:] == (32, 32)
        return (t[:, 0] - t[:, 1])[:, :2]

    out = sliding_window_inference(fn, x, 32, 16, batch_size=2, out_channels=2, pad_value=-7.0)
    torch.testing.assert_close(out, (x[:, 0] - x[:, 1])[:, :2])


def test_wrong_output_shape_is_named():
    with pytest.raises(ValueError, match="expected"):
        sliding_window_inference(lambda t: t[:, :1], torch.zeros(1, 3, 40, 40), 32, 16, 2, 3)
