"""PNG plots of a reranking sweep (test/retrieval/rerank_sweep.py): mAP-M and mAP-H against each of M, K and beta
with the other two held fixed, and K x beta heat maps of mAP-M and mAP-H at one M.

matplotlib is optional (requirements-demo.txt): :func:`plot_sweep` raises ImportError without it,
and sweep.py then writes only the CSV and JSON. Only matplotlib's object API is used (no pyplot),
so no GUI backend or global figure state is involved. Every PNG is written atomically.
"""

import io
import math
from pathlib import Path

from test.outputs.writer import atomic_write
from test.retrieval.rerank_sweep import PARAMETERS, line

PROTOCOL_COLOURS = {"mAP_M": "tab:blue", "mAP_H": "tab:red"}
LABELS = {"M": "M (top items reranked)", "K": "K (neighbours per descriptor)", "beta": "beta (neighbour weight)"}


def _value(v):
    return math.nan if v is None else v


def _setting(fixed, parameters):
    return ", ".join(f"{p}={fixed[p]:g}" for p in parameters)


def _save(figure, path):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write(path, buffer.getvalue())
    return path


def line_plot(result, parameter, fixed, path):
    """mAP-M and mAP-H (one panel each, own scale) against ``parameter``, the others at ``fixed``;
    the initial ranking's mAP dashed."""
    from matplotlib.figure import Figure

    records = line(result["records"], parameter, fixed)
    xs = [r[parameter] for r in records]
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    held = _setting(fixed, [p for p in PARAMETERS if p != parameter])
    figure.suptitle(f"SuperGlobal reranking: mAP vs {parameter} ({held})")
    for axes, (key, colour) in zip(figure.subplots(1, 2), PROTOCOL_COLOURS.items()):
        name = key.replace("_", "-")
        axes.plot(xs, [_value(r[key]) for r in records], "o-", color=colour, label="reranked")
        initial = result["initial"][key]
        if initial is not None:
            axes.axhline(initial, color="grey", linestyle="--", linewidth=1, label="no reranking")
        if parameter == "M" and len(xs) > 1:
            axes.set_xscale("log")
        axes.set_xticks(xs, [f"{x:g}" for x in xs])
        axes.minorticks_off()
        axes.set_xlabel(LABELS[parameter])
        axes.set_ylabel(f"{name} (%)")
        axes.set_title(name)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return _save(figure, path)


def heat_map(result, M, path):
    """K (rows) x beta (columns) grids of mAP-M and mAP-H at ``M``, values written in the cells."""
    from matplotlib.figure import Figure

    records = [r for r in result["records"] if r["M"] == M]
    Ks = sorted({r["K"] for r in records})
    betas = sorted({r["beta"] for r in records})
    figure = Figure(figsize=(4 + 1.6 * len(betas), 1.2 + 0.45 * len(Ks)), layout="constrained")
    for axes, key in zip(figure.subplots(1, 2, squeeze=False)[0], PROTOCOL_COLOURS):
        grid = [[math.nan] * len(betas) for _ in Ks]
        for r in records:
            grid[Ks.index(r["K"])][betas.index(r["beta"])] = _value(r[key])
        image = axes.imshow(grid, cmap="viridis", aspect="auto")
        figure.colorbar(image, ax=axes, label="mAP (%)")
        finite = [v for row in grid for v in row if math.isfinite(v)]
        middle = (min(finite) + max(finite)) / 2 if finite else 0
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    axes.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                              color="black" if v > middle else "white")
        axes.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        axes.set_yticks(range(len(Ks)), [str(k) for k in Ks])
        axes.set_xlabel("beta")
        axes.set_ylabel("K")
        axes.set_title(f"{key.replace('_', '-')} at M={M}")
    return _save(figure, path)


def plot_sweep(result, folder, fixed):
    """All plots of a sweep into ``folder``; returns their paths. ``fixed``: the setting the line
    plots hold (test.retrieval.rerank_sweep.anchor); the heat map is drawn at its M."""
    import matplotlib  # noqa: F401  (ImportError here: the caller says plots need matplotlib)

    folder = Path(folder)
    paths = [line_plot(result, p, fixed, folder / f"mAP_vs_{p}.png") for p in PARAMETERS]
    paths.append(heat_map(result, fixed["M"], folder / "heatmap_K_beta.png"))
    return paths
