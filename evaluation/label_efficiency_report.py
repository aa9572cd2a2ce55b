"""Tables and plots of label-efficiency results (the ``rows`` of
:func:`evaluation.label_efficiency.summarise`: ``{init, protocol, fraction, mean, std, n}``).

:func:`format_table` writes a Markdown table (one line per protocol and label fraction, one column
per initialisation), :func:`plot_rows` a PNG of the metric against the label fraction
(matplotlib, Agg backend).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from evaluation.label_efficiency import PROTOCOLS, format_fraction

__all__ = ["format_table", "plot_rows", "result_figure"]


def format_table(rows: Sequence[dict[str, Any]], metric: str = "top-1 %") -> str:
    """Markdown table: one line per protocol and label fraction, one column per initialisation."""
    inits = list(dict.fromkeys(r["init"] for r in rows))
    cells = {(r["init"], r["protocol"], r["fraction"]): r for r in rows}
    keys = sorted({(r["protocol"], r["fraction"]) for r in rows},
                  key=lambda pf: (PROTOCOLS.index(pf[0]) if pf[0] in PROTOCOLS else 99, pf[1]))  # fmt: skip
    lines = [
        f"| protocol | labels | {' | '.join(inits)} |",
        "|---|---|" + "---|" * len(inits),
    ]
    for protocol, fraction in keys:
        vals = []
        for init in inits:
            r = cells.get((init, protocol, fraction))
            vals.append("-" if r is None else f"{r['mean']:.1f} ± {r['std']:.1f}")
        lines.append(f"| {protocol} | {format_fraction(fraction)} | {' | '.join(vals)} |")
    return "\n".join(lines) + f"\n\n(mean ± std over seeds, {metric})"


def plot_rows(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG: metric vs label fraction (log axis), one line per initialisation and protocol."""
    with result_figure(path, (6, 4), title) as ax:
        styles = ("-", "--", ":", "-.")
        inits = list(dict.fromkeys(r["init"] for r in rows))
        protocols = list(dict.fromkeys(r["protocol"] for r in rows))
        for i, init in enumerate(inits):
            for j, protocol in enumerate(protocols):
                sel = sorted(
                    (r for r in rows if r["init"] == init and r["protocol"] == protocol),
                    key=lambda r: r["fraction"],
                )
                if not sel:
                    continue
                ax.errorbar(
                    [100 * r["fraction"] for r in sel],
                    [r["mean"] for r in sel],
                    yerr=[r["std"] for r in sel],
                    color=f"C{j}",
                    linestyle=styles[i % len(styles)],
                    marker="o",
                    capsize=3,
                    label=f"{init} / {protocol}",
                )
        ax.set_xscale("log")
        ax.set_xlabel("labelled training samples (%)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return Path(path)


@contextlib.contextmanager
def result_figure(path: str | Path, size: tuple[float, float], title: str = "") -> Iterator[Any]:
    """A matplotlib axes (Agg backend) to draw a results plot on; on leaving, the optional title,
    a tight layout, and the PNG at ``path`` (folders made, 120 dpi), the figure closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
