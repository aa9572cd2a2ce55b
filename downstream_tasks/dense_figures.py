"""The scene figure of dense evaluation: one PNG per evaluated scene (up to ``--vis_scenes``).

One row of titled panels - ``date 1`` and ``date 2`` (true-colour RGB of B04/B03/B02, 2-98 %
stretch; segmentation: one ``image``), ``truth``, ``prediction`` and ``errors`` - with a legend
under them naming every colour, and a title carrying the scene's name and its own score
(change: ``f1_change`` of this scene; segmentation: pixel accuracy). Panels are drawn at a
readable size whatever the scene size (matplotlib, Agg backend; ``interpolation="nearest"``).

Colours: change maps white = change, black = no change; segmentation maps one colour per class
(:data:`PALETTE`); errors: change TP white, FP red, FN blue, TN black, segmentation correct
green, wrong red; pixels without a label (255) grey everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.metrics import DENSE_IGNORE_INDEX

logger = logging.getLogger(__name__)

__all__ = ["PALETTE", "save_scene_png", "scene_figure"]

#: class colours (RGB) for segmentation maps; index 255 (ignore) is drawn grey
PALETTE = np.array(
    [
        (0, 0, 0), (255, 211, 0), (230, 128, 0), (166, 230, 77), (0, 128, 0), (0, 90, 230),
        (128, 204, 128), (204, 204, 204), (166, 166, 255), (166, 0, 204), (255, 166, 255),
        (230, 0, 77), (204, 77, 242), (255, 255, 255),
    ],
    dtype=np.uint8,
)  # fmt: skip
GREY = (128, 128, 128)
CHANGE_ERRORS = {
    "true change": (255, 255, 255),
    "false alarm": (230, 30, 30),
    "missed change": (30, 90, 255),
    "true no change": (0, 0, 0),
}
SEGMENT_ERRORS = {"correct": (40, 170, 40), "wrong": (230, 30, 30)}
#: panel side in inches (at 100 dpi: 320 px per panel, whatever the scene size)
PANEL_INCHES = 3.2


def _rgb(image: torch.Tensor) -> np.ndarray:
    """(12, H, W) normalised bands -> uint8 RGB (B04, B03, B02) with a 2-98 % stretch."""
    rgb = image[[3, 2, 1]].numpy()
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    rgb = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    return (rgb.transpose(1, 2, 0) * 255).astype(np.uint8)


def _classes(m: np.ndarray, task: str) -> np.ndarray:
    if task == "change":
        out = np.where(m[..., None] == 1, 255, 0).repeat(3, -1).astype(np.uint8)
    else:
        out = PALETTE[np.clip(m, 0, len(PALETTE) - 1)]
    out[m == DENSE_IGNORE_INDEX] = GREY
    return out


def _errors(mask: np.ndarray, pred: np.ndarray, task: str) -> np.ndarray:
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)
    if task == "change":
        colours = list(CHANGE_ERRORS.values())
        out[(mask == 1) & (pred == 1)] = colours[0]
        out[(mask == 0) & (pred == 1)] = colours[1]
        out[(mask == 1) & (pred == 0)] = colours[2]
    else:
        out[mask == pred] = SEGMENT_ERRORS["correct"]
        out[mask != pred] = SEGMENT_ERRORS["wrong"]
    out[mask == DENSE_IGNORE_INDEX] = GREY
    return out


def _score(mask: np.ndarray, pred: np.ndarray, task: str) -> str:
    """This scene's own score: ``f1_change`` (change) or pixel accuracy (segmentation), percent."""
    valid = mask != DENSE_IGNORE_INDEX
    if not valid.any():
        return "no labelled pixel"
    if task == "change":
        tp = int(((mask == 1) & (pred == 1) & valid).sum())
        fp = int(((mask == 0) & (pred == 1) & valid).sum())
        fn = int(((mask == 1) & (pred == 0) & valid).sum())
        return f"f1_change {100 * 2 * tp / max(2 * tp + fp + fn, 1):.1f} on this scene"
    return f"pixel accuracy {100 * float((mask == pred)[valid].mean()):.1f} % on this scene"


def _legend(task: str, mask: np.ndarray, pred: np.ndarray, class_names: Sequence[str]) -> dict:
    """Label -> RGB of every colour the panels use."""
    entries: dict[str, tuple[int, int, int]] = {}
    if task == "change":
        entries.update({"no change": (0, 0, 0), "change": (255, 255, 255)})
        entries.update({f"errors: {k}": v for k, v in CHANGE_ERRORS.items()})
    else:
        present = sorted(set(np.unique(mask).tolist()) | set(np.unique(pred).tolist()))
        for c in present:
            if c != DENSE_IGNORE_INDEX:
                name = class_names[c] if c < len(class_names) else f"class {c}"
                entries[name] = tuple(int(v) for v in PALETTE[min(c, len(PALETTE) - 1)])
        entries.update({f"errors: {k}": v for k, v in SEGMENT_ERRORS.items()})
    if (mask == DENSE_IGNORE_INDEX).any():
        entries["no label (ignored)"] = GREY
    return entries


def scene_figure(
    image: torch.Tensor,
    mask: torch.Tensor,
    pred: torch.Tensor,
    task: str,
    class_names: Sequence[str] = (),
    name: str = "",
) -> Any:
    """The figure of one scene (a ``matplotlib.figure.Figure``; the caller saves and closes it).

    Args:
        image: ``(2, 12, H, W)`` (change) or ``(12, H, W)`` normalised input.
        mask, pred: ``(H, W)`` truth and predicted class indices (255: no label).
        task: ``change`` or ``segment``.
        class_names: names in class order (legend of segmentation maps).
        name: the scene's name (title).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    m, p = mask.numpy(), pred.numpy()
    dates = [("date 1", image[0]), ("date 2", image[1])] if image.ndim == 4 else [("image", image)]
    panels = [(f"{t} (RGB)", _rgb(x)) for t, x in dates] + [
        ("truth", _classes(m, task)),
        ("prediction", _classes(p, task)),
        ("errors", _errors(m, p, task)),
    ]
    h, w = m.shape
    side = PANEL_INCHES
    fig, axes = plt.subplots(
        1, len(panels), figsize=(side * len(panels), side * min(max(h / w, 0.5), 2.0) + 1.4),
        dpi=100, squeeze=False,
    )  # fmt: skip
    for ax, (title, panel) in zip(axes[0], panels):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(title, fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
    legend = _legend(task, m, p, class_names)
    handles = [
        Patch(facecolor=np.array(c) / 255, edgecolor="0.4", label=k) for k, c in legend.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=10,
               frameon=False)  # fmt: skip
    fig.suptitle(f"{name}: {_score(m, p, task)} ({h} x {w} px)".lstrip(": "), fontsize=13)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(handles) - 1) // 4), 1, 0.95))
    return fig


def save_scene_png(
    path: str | Path,
    image: torch.Tensor,
    mask: torch.Tensor,
    pred: torch.Tensor,
    task: str,
    class_names: Sequence[str] = (),
    name: str | None = None,
) -> Path:
    """Draw :func:`scene_figure` and write it as ``path`` (PNG); returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig = scene_figure(image, mask, pred, task, class_names, path.stem if name is None else name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
