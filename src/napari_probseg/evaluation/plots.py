"""Evaluation plots as PNG and SVG files (matplotlib, Agg backend only: no display needed).

- reliability diagram with the confidence histogram (merged calibration of the dataset);
- GED vs the number of samples n = 1..N (first n stored samples, biased and unbiased);
- rater-count ablation: GED16 and HM-IoU16 with 1..M raters as the reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "draw_reliability",
    "plot_ged_vs_n",
    "plot_rater_ablation",
    "plot_reliability",
    "write_plots",
]


def _figure(*args: Any, **kwargs: Any) -> Any:
    # The object-oriented API with an explicit Agg canvas never touches pyplot's global backend
    # (a Qt backend chosen by napari in the same process stays untouched).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(*args, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = out / f"{stem}.{ext}"
        fig.savefig(path, dpi=120 if ext == "png" else None, bbox_inches="tight")
        paths.append(path)
    return paths


def draw_reliability(
    fig: Any,
    calibration: Any,
    *,
    after: Any = None,
    temperature: Any = None,
    title: str = "",
) -> dict[str, Any]:
    """Draw the reliability diagram over a confidence histogram on ``fig`` (cleared first).

    The one drawing of the diagram: :func:`plot_reliability` (files) and the calibration panel
    (its canvas) both call it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    calibration : CalibrationResult
        Binned calibration (``bin_edges``, ``counts``, ``accuracy``, ``mean_confidence``).
    after : CalibrationResult, keyword-only
        The same bins after temperature scaling (drawn as steps), with ``temperature``.
    temperature : TemperatureFit, keyword-only
    title : str, keyword-only

    Returns
    -------
    dict
        The artists: ``"accuracy"`` (a BarContainer with one bar per bin), ``"gap"``,
        ``"histogram"``, ``"diagonal"`` and ``"after"`` (or None).
    """
    from matplotlib.ticker import NullFormatter

    c = calibration
    fig.clear()
    fig.set_layout_engine("tight")  # axis labels stay inside a panel's small canvas
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = np.asarray(c.bin_edges)
    width, left = np.diff(edges), edges[:-1]
    ok = np.asarray(c.counts) > 0
    acc = np.where(ok, c.accuracy, 0.0)
    conf = np.where(ok, c.mean_confidence, 0.0)
    ylabel = "accuracy" if c.label_kind == "hard" else "expected agreement"
    bars = ax.bar(
        left, acc, width=width, align="edge", edgecolor="k", color="tab:blue", label=ylabel
    )
    gap = ax.bar(
        left, conf - acc, bottom=acc, width=width, align="edge", color="tab:red", alpha=0.35,
        label="gap to mean confidence",
    )  # fmt: skip
    (diag,) = ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    line = None
    if after is not None and temperature is not None:
        y = np.where(np.asarray(after.counts) > 0, after.accuracy, np.nan)
        (line,) = ax.step(
            edges, np.append(y, y[-1]), where="post", color="tab:green", lw=2,
            label=f"after T = {temperature.temperature:.2f} (ECE {after.ece:.4f})",
        )  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize=7)
    head = f"{title}\n" if title else ""
    ax.set_title(
        f"{head}ECE {c.ece:.4f} · MCE {c.mce:.4f} · ACE {c.ace:.4f} ({c.n_bins} bins)", fontsize=8
    )
    hist = hx.bar(left, np.asarray(c.counts) / max(c.n_pixels, 1), width=width, align="edge",
                  color="0.5")  # fmt: skip
    if ok.any():
        hx.set_yscale("log")  # background pixels dominate; a linear axis hides the other bins
        hx.yaxis.set_minor_formatter(NullFormatter())
    hx.set_xlabel("confidence (top-label)" if c.confidence == "top_label" else "p(class)")
    hx.set_ylabel("share of pixels")
    return {"accuracy": bars, "gap": gap, "histogram": hist, "diagonal": diag, "after": line}


def plot_reliability(calibration: Any, *, title: str = "") -> Any:
    """Reliability diagram over a confidence histogram, on a new figure.

    Parameters
    ----------
    calibration : CalibrationResult
        Binned calibration (``bin_edges``, ``counts``, ``accuracy``, ``mean_confidence``).
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _figure(figsize=(5, 6))
    draw_reliability(fig, calibration, title=title)
    return fig


def plot_ged_vs_n(curve: dict[str, Any], *, title: str = "") -> Any:
    """GED² vs the number of samples used (:func:`~napari_probseg.evaluation.ged_vs_n`)."""
    fig = _figure(figsize=(5, 4))
    ax = fig.subplots()
    n = np.asarray(curve["n"])
    ax.plot(n, curve["ged"], "o-", label="GED² (self-pairs included)")
    ax.plot(n, curve["ged_unbiased"], "s--", label="GED² unbiased")
    ax.set_xlabel("number of samples n (first n stored)")
    ax.set_ylabel("GED² (d = 1 − IoU), mean over images")
    ax.set_title(title or "GED vs number of samples", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_rater_ablation(ablation: dict[str, Any], *, title: str = "") -> Any:
    """GED16 and HM-IoU16 vs the number of raters in the reference."""
    fig = _figure(figsize=(5, 4))
    ax = fig.subplots()
    m = np.asarray(ablation["n_raters"])
    ax.plot(m, ablation["ged"], "o-", color="tab:blue", label="GED16²")
    ax.set_xlabel("raters in the reference")
    ax.set_ylabel("GED16² (d = 1 − IoU)", color="tab:blue")
    ax.set_xticks(m)
    ax2 = ax.twinx()
    ax2.plot(m, ablation["hm_iou"], "s--", color="tab:orange", label="HM-IoU16")
    ax2.set_ylabel("HM-IoU16", color="tab:orange")
    ax.set_title(title or "rater-count ablation (mean over subsets and images)", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def write_plots(evaluation: Any, out: str | os.PathLike) -> list[Path]:
    """Write every plot of ``evaluation`` to the folder ``out`` as PNG and SVG.

    Parameters
    ----------
    evaluation : StoreEvaluation
        From :func:`~napari_probseg.evaluation.evaluate_store`; the GED-vs-n and rater-ablation
        plots need ``curves=True``.
    out : path
        Folder (created if missing).

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"plots: {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    methods = ", ".join(evaluation.methods)
    n_img = len(evaluation.images)
    title = f"{methods}: {n_img} image(s), reference {evaluation.reference['mode']}"
    paths = _save(plot_reliability(evaluation.calibration, title=title), out, "reliability")
    curves = evaluation.curves or {}
    if "ged_vs_n" in curves:
        fig = plot_ged_vs_n(curves["ged_vs_n"], title=f"GED vs samples: {methods}, {n_img} images")
        paths += _save(fig, out, "ged_vs_n")
    if "rater_ablation" in curves:
        fig = plot_rater_ablation(
            curves["rater_ablation"], title=f"rater-count ablation: {methods}, {n_img} images"
        )
        paths += _save(fig, out, "rater_ablation")
    return paths
