"""Apply a checkpoint to a whole Sentinel-2 scene: windowed, tiled, blended, written as GeoTIFF.

The scene (:class:`util.inference.scene.Scene`) is read in horizontal strips one tile high; each strip is cut
into tiles of the model's input size at the origins of :func:`util.inference.tiling.tile_starts` (overlap
``tile - stride``, last tile aligned to the scene's edge), tiles without a valid pixel are skipped,
the rest go through the model in batches (bf16 autocast on GPU), and their outputs (logits, or
features) are accumulated with the weights of :func:`util.inference.tiling.blend_weights` (``cosine``:
falling off toward tile edges).
Rows no later tile can touch are divided by their accumulated weight and written
(:class:`util.inference.scene.GeoTiffWriter`), so memory is bounded by one strip, whatever the scene size.
The blending is that of :func:`util.inference.tiling.sliding_window_inference` (the dense evaluation path),
so both give the same prediction for the same pixels.

Tasks (``task``):

* ``segment`` - class per pixel (uint8, colour table, class names in the tags);
* ``change`` - change (1) / no change (0) per pixel from two dates on one grid;
* ``classify`` - a classifier's class for each tile, painted over the tile's pixels (with
  ``overlap`` the blended class probabilities of the overlapping tiles);
* ``embed`` - the encoder's token features (final norm) at token resolution (one output pixel per
  ``patch x patch`` input pixels), mean over the spectral groups or all groups (``embed_groups``).

Probabilities (``probabilities_path``) are the softmax (sigmoid for multi-label) of the blended
logits, as float16. Nodata: pixels that are nodata or 0 in any band (either date) are nodata in every
output (255 for classes, NaN for floats); the model never predicts them from padding. Scene-level
statistics: a per-image normalisation (``minmax``) takes its per-band min/max over the valid
pixels of the whole scene (one extra windowed pass), as the dataset path does for a whole image.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.data.contract import InputPlan, plan_input, sample_windows
from util.data.transforms import get_normalization
from util.inference.model_loading import LoadedModel
from util.inference.scene import GeoTiffWriter, Scene, check_same_grid, gdal_env, write_qgis_style
from util.inference.sensor_scene import open_scene
from util.inference.tiling import blend_weights, tile_starts
from util.inference.write_guard import check_output_paths, guard_writes

logger = logging.getLogger(__name__)

__all__ = [
    "PALETTE",
    "default_probabilities_path",
    "format_summary",
    "predict_scene",
    "scene_affine",
]

CLASS_NODATA = 255

#: colour table of class maps (class i gets PALETTE[i % len]); change maps: 0 black, 1 red
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
CHANGE_COLOURS = {0: (0, 0, 0), 1: (230, 30, 30)}


# --------------------------------------------------------------------------------------------------
# Per-task tile functions: (B, 12, t, t) or (B, 2, 12, t, t) normalised -> (B, K, h, w) or (B, K)
# --------------------------------------------------------------------------------------------------
def _tile_fn(
    lm: LoadedModel, embed_groups: str, groups: Sequence[int] | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``groups``: the spectral groups the input fills (another sensor's scene), None for all."""
    model = lm.model
    kw = {} if groups is None else {"groups": groups}
    if lm.task == "embed":
        enc = getattr(model, "encoder", model)
        t, h, w = enc.grid
        if embed_groups not in ("mean", "all"):
            raise ValueError(f"--embed_groups must be mean or all, got {embed_groups!r}")

        def embed(x: torch.Tensor) -> torch.Tensor:
            if x.ndim == 5:  # a change model's two dates: embed the first
                x = x[:, 0]
            feats = enc.norm(enc.forward_features(x, **kw))  # (B, t*h*w, D), group-major
            feats = feats.unflatten(1, (len(groups) if groups else t, h, w))  # (B, t, h, w, D)
            if embed_groups == "mean":
                return feats.mean(1).permute(0, 3, 1, 2)  # (B, D, h, w)
            if groups:  # absent groups' channels are 0
                feats = feats.new_zeros(feats.shape[0], t, *feats.shape[2:]).index_copy_(
                    1, torch.as_tensor(groups, device=feats.device), feats
                )
            return feats.permute(0, 1, 4, 2, 3).flatten(1, 2)  # (B, t*D, h, w), group-major

        return embed, enc.embed_dim * (t if embed_groups == "all" else 1)
    return (lambda x: model(x, **kw).float()), len(lm.classes)  # logits; blended, then activated


# --------------------------------------------------------------------------------------------------
# Scene statistics for per-image normalisations
# --------------------------------------------------------------------------------------------------
def scene_affine(
    scene: Scene, norm: Any, strip: int = 128
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-band ``(offset, scale)`` of ``norm`` for the whole scene, or None if it is not affine.

    For a per-image scheme (``norm.per_image``, i.e. min-max) the statistics are taken over the
    valid pixels of the whole scene, read strip by strip, and turned into ``(offset, scale)`` by the
    normalisation itself (applied to a 2-pixel image holding each band's min and max). Fixed
    schemes return their constants; pixel-wise non-affine ones (2-sigma) return None.
    """
    c = len(scene.bands)
    if not getattr(norm, "per_image", False):
        return norm.affine(torch.zeros(c, 1, 1))
    lo = np.full(c, np.inf, dtype=np.float64)
    hi = np.full(c, -np.inf, dtype=np.float64)
    for r in range(0, scene.height, strip):
        image, valid = scene.read(r, 0, min(strip, scene.height - r), scene.width)
        if valid.any():
            px = image[:, valid]
            lo = np.minimum(lo, px.min(1))
            hi = np.maximum(hi, px.max(1))
    if not np.isfinite(lo).all():
        raise ValueError("the scene has no valid pixel (every pixel is nodata or 0 in some band)")
    extremes = torch.from_numpy(np.stack([lo, hi], -1).astype(np.float32))[:, None, :]  # (C, 1, 2)
    return norm.affine(extremes)


# --------------------------------------------------------------------------------------------------
# The windowed loop
# --------------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def predict_scene(
    lm: LoadedModel,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    inputs2: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    probabilities_path: str | os.PathLike | None = None,
    overlap: int | None = None,
    blend: str | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    embed_groups: str = "mean",
    file_bands: Sequence[str] | None = None,
    resampling: str = "bilinear",
    norm_stats: str = "scene",
    dn_offset: str | float = "auto",
    progress: bool = True,
    sensor: str | None = None,
    strict_input: bool = False,
) -> dict[str, Any]:
    """Predict ``inputs`` (and ``inputs2`` for change detection) and write ``output``.

    Args:
        lm: from :func:`util.inference.model_loading.load_model`.
        inputs, inputs2: see :class:`util.inference.scene.Scene`.
        output: GeoTIFF to write (class map, change map or embeddings).
        probabilities_path: also write the blended probabilities here (float16).
        overlap: pixels shared by neighbouring tiles (default: a quarter tile for dense tasks and
            embeddings, 0 for classification); a multiple of the patch size for ``embed``.
        blend: ``cosine`` (default for dense tasks and embeddings) or ``uniform``.
        batch_size: tiles per forward pass.
        device, dtype: where and in which precision the model runs (bf16 autocast on CUDA).
        embed_groups: ``mean`` or ``all`` spectral groups for ``embed``.
        file_bands: band order of a stacked input without band descriptions.
        resampling: how 20/60 m bands reach the 10 m grid.
        norm_stats: statistics of a per-image normalisation (min-max): ``scene`` (the valid
            pixels of the whole scene; what the dense evaluation path does with a whole image) or
            ``tile`` (each tile's own valid pixels, like the training images of a model trained on
            small patches, e.g. SegMunich's 128 px).
        dn_offset: added to the DN of every band (``"auto"``: the product's own offsets, -1000
            for processing baseline >= 04.00, read from its SAFE metadata; see
            :class:`util.inference.scene.Scene`).
        progress: show a progress bar.
        sensor: the inputs' sensor (``landsat8``, ``hls_s30``, ``rgbn``, ``red:665,...``; see
            :func:`util.inference.sensor_scene.open_scene`); default: a Landsat C2 L2 / HLS
            product recognised by its file names, else the sensor the checkpoint was trained on
            (``lm.sensor``), else Sentinel-2.
        strict_input: refuse a scene on another radiometric scale than the model's (e.g. float
            reflectance for a model trained on digital numbers) instead of converting it; 8-bit
            and out-of-range scenes are refused either way (:mod:`util.data.contract`).

    Returns:
        A summary: ``tiles``, ``skipped``, ``seconds``, ``tiles_per_s``, ``km2_per_s``,
        ``peak_rss_mb``, ``output``, ``probabilities``, ``shape`` and ``task``.
    """
    device = torch.device(device)
    task = lm.task
    tile = lm.input_size
    p = lm.patch_size
    scale = p if task == "embed" else 1  # output pixel = scale x scale input pixels
    if overlap is None:  # a quarter tile, whole tokens for embeddings (48 px, patch 8: 8)
        overlap = 0 if task == "classify" else tile // 4 // scale * scale
    trained = lm.meta.get("input_size") or (lm.meta.get("model_kwargs") or {}).get("img_size")
    if trained and int(trained) != tile:
        logger.warning(
            "%d px tiles, but the model was trained on %d px inputs (its position embeddings are "
            "resampled): expect worse predictions; leave out --input_size to use %d px",
            tile, int(trained), int(trained),
        )  # fmt: skip
    if blend is None:
        blend = "uniform" if task == "classify" else "cosine"
    if not 0 <= overlap < tile:
        raise ValueError(f"--overlap must be in [0, {tile}) for {tile} px tiles, got {overlap}")
    if overlap % scale:
        raise ValueError(f"--overlap must be a multiple of the patch size {p} for embeddings")
    if probabilities_path is not None and task == "embed":
        raise ValueError("--probabilities has no meaning for --task embed")
    if task == "change" and inputs2 is None:
        raise ValueError("--task change needs the second date: --input2")
    if task != "change" and inputs2 is not None:
        raise ValueError(f"--input2 is only used by --task change (this is --task {task})")

    norm = get_normalization(lm.normalization)
    lm.model.to(device)
    start = time.perf_counter()
    with gdal_env():
        read = dict(
            file_bands=file_bands,
            resampling=resampling,
            dn_offset=dn_offset,
            sensor=sensor,
            default_sensor=lm.sensor,
        )
        scenes = [open_scene(inputs, lm.bands, **read)]
        try:
            if inputs2 is not None:
                scenes.append(open_scene(inputs2, lm.bands, **read))
                check_same_grid(scenes[0], scenes[1])
                if scenes[0].groups != scenes[1].groups:
                    raise ValueError("--input and --input2 fill different spectral groups")
            read_files = [src.path for s in scenes for src in s.sources.values()]
            outputs = {"--output": output, "--probabilities": probabilities_path}
            check_output_paths(outputs, read_files)
            given = [inputs] + ([inputs2] if inputs2 is not None else [])
            scenes = [_checked(s, lm, strict_input, i) for s, i in zip(scenes, given)]
            fn, channels = _tile_fn(lm, embed_groups, scenes[0].groups)
            for s in scenes:
                logger.info("scene: %s", s.describe())
            if norm_stats not in ("scene", "tile"):
                raise ValueError(f"--norm_stats must be scene or tile, got {norm_stats!r}")
            per_tile = norm_stats == "tile" and getattr(norm, "per_image", False)
            if per_tile:  # strips keep the raw values; each batch is normalised per tile
                identity = get_normalization("none")
                affines = [scene_affine(s, identity) for s in scenes]
            else:
                affines = [scene_affine(s, norm) for s in scenes]
            qml = Path(output).with_suffix(".qml") if task != "embed" else None
            with guard_writes([output, probabilities_path, qml]):  # failed writes fail: exit 2
                summary = _run(
                    lm, scenes, affines, norm, fn, channels, output, probabilities_path,
                    tile=tile, stride=tile - overlap, scale=scale, blend=blend,
                    batch_size=batch_size, device=device, dtype=dtype, embed_groups=embed_groups,
                    progress=progress, tile_norm=norm if per_tile else None,
                )  # fmt: skip
        finally:
            for s in scenes:
                s.close()
    summary["seconds"] = time.perf_counter() - start
    summary["tiles_per_s"] = summary["tiles"] / max(summary["seconds"], 1e-9)
    summary["km2_per_s"] = summary["km2"] / max(summary["seconds"], 1e-9)
    summary["peak_rss_mb"] = _peak_rss_mb()
    return summary


class _CheckedScene:
    """A scene whose windows come on the model's radiometric scale (its :class:`InputPlan`
    applied to every read); everything else is the scene's."""

    def __init__(self, scene: Any, plan: InputPlan) -> None:
        self._scene, self.plan = scene, plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scene, name)

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        image, valid = self._scene.read(row, col, height, width)
        return self.plan.apply(image), valid


def _checked(scene: Any, lm: LoadedModel, strict: bool, inputs: Any) -> Any:
    """``scene`` (read from ``inputs``) checked against the model's input contract
    (:mod:`util.data.contract`) on windows spread over it: 8-bit files and values of no
    Sentinel-2 scale are refused (one line naming the file), another scale is converted with one
    log line (refused when ``strict``)."""
    dtypes = {path: np.dtype(d) for path, d in scene.file_dtypes.items()}
    eight_bit = [p for p, d in dtypes.items() if d.itemsize == 1 and p in _band_files(scene)]
    if eight_bit:
        source, dtype = eight_bit[0], dtypes[eight_bit[0]].name
    else:
        given = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        source = given[0] if len(given) == 1 else f"{given[0]} (+{len(given) - 1})"
        # another sensor's reader returns its bands already scaled to the model's DN (float)
        dtype = next(iter(dtypes.values())).name if isinstance(scene, Scene) else "float32"
    sample = sample_windows(scene.read, scene.height, scene.width)
    plan = plan_input(sample, lm.contract, source, strict, dtype)
    return _CheckedScene(scene, plan) if plan.converts else scene


def _band_files(scene: Any) -> set[str]:
    """The files holding the scene's bands (not a quality/mask file read alongside)."""
    return {s.path for name, s in scene.sources.items() if name != "QUALITY"}


def _writers(
    lm: LoadedModel,
    scene: Scene,
    output: str | os.PathLike,
    probabilities_path: str | os.PathLike | None,
    channels: int,
    out_h: int,
    out_w: int,
    transform: Any,
    embed_groups: str,
) -> tuple[GeoTiffWriter, GeoTiffWriter | None]:
    tags: dict[str, Any] = {
        "task": lm.task,
        "model": lm.meta.get("model"),
        "normalization": lm.normalization,
        "bands": list(lm.bands),
        "tile": lm.input_size,
        "software": "SpectralGPT re-implementation, predict.py",
    }
    if hasattr(scene, "metadata"):  # another sensor's scene: what was read and how
        tags["input"] = scene.metadata()
    grid = dict(crs=scene.crs, transform=transform, height=out_h, width=out_w)
    if lm.task == "embed":
        enc = getattr(lm.model, "encoder", lm.model)
        tags["embed_groups"] = embed_groups
        if embed_groups == "all":
            descriptions = [f"g{g}_f{d}" for g in range(enc.grid[0]) for d in range(enc.embed_dim)]
        else:
            descriptions = [f"f{d}" for d in range(channels)]
        out = GeoTiffWriter(
            output, **grid, count=channels, dtype="float16", nodata=float("nan"), tags=tags,
            descriptions=descriptions, overview_resampling="average",
        )  # fmt: skip
        return out, None
    tags["classes"] = lm.classes
    tags.update({f"class_{i}": name for i, name in enumerate(lm.classes)})
    colours = (
        CHANGE_COLOURS
        if lm.task == "change"
        else {i: PALETTE[i % len(PALETTE)] for i in range(len(lm.classes))}
    )
    out = GeoTiffWriter(
        output, **grid, count=1, dtype="uint8", nodata=CLASS_NODATA, colormap=colours, tags=tags,
        descriptions=["change" if lm.task == "change" else "class"],
    )  # fmt: skip
    write_qgis_style(output, colours, dict(enumerate(lm.classes)))
    prob = None
    if probabilities_path is not None:
        names = ["change"] if lm.task == "change" else lm.classes
        prob = GeoTiffWriter(
            probabilities_path, **grid, count=len(names), dtype="float16", nodata=float("nan"),
            tags=tags, descriptions=[f"p({n})" for n in names], overview_resampling="average",
        )  # fmt: skip
    return out, prob


def _run(
    lm, scenes, affines, norm, fn, channels, output, probabilities_path, *, tile, stride, scale,
    blend, batch_size, device, dtype, embed_groups, progress, tile_norm,
) -> dict[str, Any]:  # fmt: skip
    """The strip loop of :func:`predict_scene` (arguments as there; ``affines`` per scene)."""
    from tqdm.auto import tqdm

    from util.training.optim import autocast

    if len(lm.classes) >= CLASS_NODATA and lm.task in ("classify", "segment"):
        raise ValueError(f"{len(lm.classes)} classes do not fit a uint8 class map")
    scene = scenes[0]
    H, W = scene.shape
    # output grid (token grid for embeddings: the last < patch rows/columns are dropped)
    out_h, out_w = H // scale, W // scale
    if out_h == 0 or out_w == 0:
        raise ValueError(f"the scene ({H} x {W} px) is smaller than one {scale} px token")
    t_o, s_o = tile // scale, stride // scale
    hp, wp = max(out_h, t_o), max(out_w, t_o)  # padded (scenes smaller than a tile)
    rows, cols = tile_starts(hp, t_o, s_o), tile_starts(wp, t_o, s_o)
    transform = scene.transform * scene.transform.scale(scale) if scale > 1 else scene.transform
    writer, prob_writer = _writers(
        lm, scene, output, probabilities_path, channels, out_h, out_w, transform, embed_groups
    )
    weight = blend_weights(t_o, t_o, blend, device=device)
    acc = torch.zeros(channels, t_o, wp, device=device)  # output rows [base, base + t_o)
    wsum = torch.zeros(t_o, wp, device=device)
    in_w = wp * scale  # padded input width
    n_in = len(scenes)
    c = len(scene.bands)
    strip = np.zeros((n_in, c, tile, in_w), dtype=np.float32)
    valid = np.zeros((tile, in_w), dtype=bool)
    have = (0, 0)  # input rows [have[0], have[1]) currently in ``strip`` (at offset 0)
    n_tiles = skipped = 0
    bar = tqdm(
        total=len(rows) * len(cols),
        unit="tile",
        desc=f"predict ({lm.task})",
        disable=None if progress else True,  # None: off when stderr is not a terminal
    )
    try:
        for ri, r in enumerate(rows):
            top = r * scale  # input row of this strip
            have = _advance_strip(scenes, affines, norm, strip, valid, have, top, tile, H, W)
            # tiles of this strip with at least one valid pixel, in batches
            todo = []
            for col in cols:
                x0 = col * scale
                if valid[:, x0 : x0 + tile].any():
                    todo.append(col)
                else:
                    skipped += 1
            bar.update(len(cols) - len(todo))
            for b in range(0, len(todo), batch_size):
                chunk = todo[b : b + batch_size]
                batch = _make_batch(strip, valid, chunk, scale, tile, device, tile_norm)
                with torch.inference_mode(), autocast(device.type, dtype):
                    out = fn(batch)
                out = out.float()
                if out.ndim == 2:  # a classifier: one vector per tile, painted over it
                    out = out[:, :, None, None].expand(-1, -1, t_o, t_o)
                for k, col in enumerate(chunk):
                    acc[:, :, col : col + t_o] += out[k] * weight
                    wsum[:, col : col + t_o] += weight
                n_tiles += len(chunk)
                bar.update(len(chunk))
            # rows [r, next) are final: no later tile starts above ``next``
            nxt = rows[ri + 1] if ri + 1 < len(rows) else hp
            done = min(nxt, out_h) - r
            if done > 0:
                _finish_rows(lm, acc, wsum, valid, done, scale, out_w, writer, prob_writer)
            shift = nxt - r
            if shift < t_o:
                acc[:, : t_o - shift] = acc[:, shift:].clone()
                wsum[: t_o - shift] = wsum[shift:].clone()
            acc[:, max(t_o - shift, 0) :] = 0
            wsum[max(t_o - shift, 0) :] = 0
        bar.close()
        writer.close()
        if prob_writer is not None:
            prob_writer.close()
    except BaseException:
        bar.close()
        writer.abort()
        if prob_writer is not None:
            prob_writer.abort()
        raise
    km2 = H * W * scene.resolution**2 / 1e6
    return {
        "task": lm.task,
        "tiles": n_tiles,
        "skipped": skipped,
        "km2": km2,
        "shape": (out_h, out_w),
        "output": str(writer.path),
        "probabilities": str(prob_writer.path) if prob_writer is not None else None,
        "tile": tile,
        "stride": stride,
        "blend": blend,
    }


def _advance_strip(scenes, affines, norm, strip, valid, have, top, tile, H, W) -> tuple[int, int]:
    """Make ``strip`` hold the normalised input rows ``[top, top + tile)`` (0 where any band of
    any date is nodata, and past the scene's edges), reading and normalising only the rows not
    already there; ``valid`` marks the valid pixels. Returns the rows held."""
    bottom = min(top + tile, H)
    width = min(W, strip.shape[-1])
    if have[0] <= top < have[1]:  # move the overlap with the previous strip up
        n = have[1] - top
        strip[:, :, :n] = strip[:, :, top - have[0] : top - have[0] + n].copy()
        valid[:n] = valid[top - have[0] : top - have[0] + n].copy()
        read_from = have[1]
    else:
        read_from = top
    if bottom > read_from:
        rows = slice(read_from - top, bottom - top)
        ok = np.ones((bottom - read_from, width), dtype=bool)
        for i, (s, affine) in enumerate(zip(scenes, affines)):
            image, v = s.read(read_from, 0, bottom - read_from, width)
            x = torch.from_numpy(image)
            if affine is None:  # pixel-wise, non-affine (2-sigma)
                x = norm(x)
            else:
                offset, scale = affine
                x.sub_(offset).mul_(scale)
            strip[i, :, rows, :width] = x.numpy()
            ok &= v
        strip[:, :, rows, :width] *= ok  # nodata pixels enter the model as 0
        valid[rows, :width] = ok
    strip[:, :, bottom - top :] = 0
    valid[bottom - top :] = False
    strip[:, :, :, width:] = 0
    valid[:, width:] = False
    return top, bottom


def _make_batch(strip, valid, chunk, scale, tile, device, tile_norm=None) -> torch.Tensor:
    """Tiles ``(B, 12, t, t)`` (``(B, 2, 12, t, t)`` for two dates) at output columns ``chunk``;
    with ``tile_norm`` (a per-image normalisation) each tile is normalised by the statistics of
    its own valid pixels."""
    x = torch.from_numpy(np.stack([strip[..., c * scale : c * scale + tile] for c in chunk]))
    if tile_norm is not None:
        ok = torch.from_numpy(np.stack([valid[:, c * scale : c * scale + tile] for c in chunk]))
        ok = ok[:, None, None]  # (B, 1, 1, t, t)
        lo = x.masked_fill(~ok, float("inf")).amin((-2, -1))
        hi = x.masked_fill(~ok, float("-inf")).amax((-2, -1))
        offset, scale_ = tile_norm.affine(torch.stack([lo, hi], -1)[..., None, :])
        x = ((x - offset) * scale_).masked_fill_(~ok, 0.0)
    if x.shape[1] == 1:
        x = x[:, 0]
    return x.to(device, non_blocking=True)


def _finish_rows(lm, acc, wsum, valid, n, scale, out_w, writer, prob_writer) -> None:
    """Divide the first ``n`` output rows by their weight (blended logits or features), mask
    nodata, write classes (argmax) and probabilities (softmax; sigmoid for multi-label)."""
    value = acc[:, :n, :out_w] / wsum[:n, :out_w].clamp_min(1e-12)
    ok = torch.from_numpy(valid[: n * scale, : out_w * scale].copy())
    if scale > 1:  # a token is valid when all its pixels are
        ok = ok.view(n, scale, out_w, scale).all(3).all(1)
    ok = ok.to(value.device)
    if lm.task == "embed":
        value = value.masked_fill(~ok, float("nan"))
        writer.write_rows(value.cpu().numpy())
        return
    cls = value.max(0).indices.to(torch.uint8)  # (much faster than argmax(0) on CPU)
    writer.write_rows(cls.masked_fill(~ok, CLASS_NODATA)[None].cpu().numpy())
    if prob_writer is not None:
        probs = value.sigmoid() if lm.multilabel else value.softmax(0)
        if lm.task == "change":
            probs = probs[1:2]
        prob_writer.write_rows(probs.masked_fill(~ok, float("nan")).cpu().numpy())


def format_summary(s: dict[str, Any]) -> str:
    """One line: what was written, how fast, how much memory."""
    h, w = s["shape"]
    text = (
        f"{s['task']}: {s['tiles']} tiles ({s['skipped']} empty skipped) of {s['tile']} px, stride "
        f"{s['stride']}, in {s['seconds']:.1f} s: {s['tiles_per_s']:.2f} tiles/s, "
        f"{s['km2_per_s']:.3f} km2/s; peak RSS {s['peak_rss_mb']:.0f} MB; wrote {s['output']} "
        f"({h} x {w})"
    )
    if s.get("probabilities"):
        text += f" and {s['probabilities']}"
    return text


def default_probabilities_path(output: str | os.PathLike) -> Path:
    out = Path(output)
    return out.with_name(out.stem + "_probabilities" + (out.suffix or ".tif"))


def math_tiles(height: int, width: int, tile: int, stride: int) -> int:
    """Number of tiles :func:`predict_scene` runs over a ``height x width`` scene (no skipping)."""
    return len(tile_starts(max(height, tile), tile, stride)) * len(
        tile_starts(max(width, tile), tile, stride)
    )
