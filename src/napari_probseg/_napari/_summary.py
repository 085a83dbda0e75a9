"""Render the one image-level summary (:func:`napari_probseg.engine.summarize`) for the review panel.

Render-only, plain Python (no Qt, no napari): every number comes from the summary dict that the
CLI prints too; this module only formats it, so that the panel and ``probseg predict --json``
show identical values.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_value", "summary_for", "summary_rows", "verdict_text", "warning_lines"]


def format_value(value: Any, digits: int = 4) -> str:
    """Format one summary value the way the panel shows it (``None``, the JSON NaN, as "—")."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def summary_for(record: Any) -> dict:
    """Return the summary of a landed run: the one the run's worker computed.

    Runs landed without one (scripts, tests building ``RunOutput`` by hand) get it from
    :func:`napari_probseg.engine.summarize` here, with the method's card reference when the request
    holds a loaded method.
    """
    output = record.output
    summary = output.extra.get("summary") if isinstance(output.extra, dict) else None
    if summary is None:
        from napari_probseg import engine

        card = getattr(output.request.model, "card", None)
        # the share the run's highlight layer was drawn with, so the regions match its layers
        highlight = record.layers.get("highlight")
        share = highlight.metadata["probseg"].get("quantile") if highlight is not None else None
        share = record.quantile if share is None else share
        summary = engine.summarize(
            record.result,
            reference=engine.card_reference(card),
            highlight_share=min(max(share, 1e-6), 1 - 1e-6),
        )
        if isinstance(output.extra, dict):
            output.extra["summary"] = summary
    return summary


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """Return the summary as (label, value) rows: method, N, every score and structure measure.

    Score rows read ``"<label> · <aggregation>"``, aggregation names with hyphens (e.g.
    ``"mutual information (epistemic) · foreground-normalized"``); the patch maximum names its
    patch.
    """
    source = ", ".join(summary["source"]) or "none"
    rows: list[tuple[str, str]] = [
        ("method", f"{summary['method']} (randomness: {source})"),
        ("samples N", str(summary["n_samples"])),
        ("foreground", f"{summary['foreground']['voxels']} voxels (consensus argmax)"),
    ]
    for score in summary["scores"]:
        how = score["aggregation"].replace("_", "-")
        patch = score["params"].get("patch_size")
        if score["aggregation"] == "patch_max" and patch:
            how += f" ({'×'.join(map(str, patch))})"
        rows.append((f"{score['label']} · {how}", format_value(score["value"])))
    names = {
        "pairwise_dice": "pairwise Dice (mean over pairs)",
        "volume_cov": "volume CoV (std/mean)",
        "sample_set_entropy": "sample-set entropy, exact masks (bits)",
        "cluster_entropy": "sample-set entropy, clusters (bits)",
        "factorized_entropy": "factorized entropy (bits)",
    }
    for m in summary["structure"]:
        text = format_value(m["value"])
        if m.get("saturated"):
            text += " (saturated: log2 N)"
        if m["measure"] == "cluster_entropy":
            text += f" (IoU ≥ {m['min_iou']:g})"
        rows.append((names.get(m["measure"], m["measure"]), text))
    return rows


def verdict_text(summary: dict) -> str:
    """Return the verdict sentence, followed by the caveat where the decomposition is named."""
    v = summary["verdict"]
    return v["sentence"] if not summary.get("caveat") else f"{v['sentence']} {summary['caveat']}"


def warning_lines(summary: dict) -> list[str]:
    """Return the summary's warnings (domain, numerics), one line each."""
    return [str(w) for w in summary.get("warnings", [])]
