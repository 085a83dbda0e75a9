"""Human-readable tables of a :class:`~napari_probseg.evaluation.StoreEvaluation`."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_table"]

#: Table columns: (metric key, header).
COLUMNS = (
    ("ece", "ECE"),
    ("mce", "MCE"),
    ("ace", "ACE"),
    ("adaptive_ece", "aECE"),
    ("nll", "NLL"),
    ("brier", "Brier"),
    ("ged", "GED16"),
    ("ged_unbiased", "GED16u"),
    ("hm_iou", "HM-IoU16"),
    ("ncc", "NCC"),
    ("pavpu", "PAvPU"),
    ("pavpu_area", "PAvPU-AUC"),
    ("pairwise_dice", "pairDice"),
    ("volume_cov", "volCoV"),
    ("dice", "Dice"),
    ("mean_mutual_information", "meanMI"),
    ("uncertainty", "U"),
)


def _fmt(value: Any, width: int = 8) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan".rjust(width)
    return f"{value:.4f}".rjust(width)


def format_table(evaluation: Any) -> str:
    """Per-image rows, the dataset means (with NaN counts), merged calibration and AURC.

    Parameters
    ----------
    evaluation : StoreEvaluation

    Returns
    -------
    str
        Multi-line text (no trailing newline).
    """
    ev = evaluation
    lines = [
        f"store: {ev.store}",
        f"reference: {ev.reference['mode']} = {ev.reference['description']}",
        f"methods: {', '.join(ev.methods)}"
        + ("  (WARNING: runs of different methods are mixed)" if len(ev.methods) > 1 else ""),
        f"N used for GED/HM-IoU/NCC: first {ev.settings['n_samples']} samples; "
        f"GED d = {ev.settings.get('ged', {}).get('kernel', '1 - IoU')} "
        f"(class-absent: {ev.settings.get('ged', {}).get('absent', 'present')}); "
        f"calibration: {ev.settings['n_bins']} equal-width bins, top-label confidence; "
        f"PAvPU u_T = {ev.settings['pavpu']['uncertainty_threshold']} on 4x4 patches; "
        f"U = {ev.aurc_info['aggregation']} of the predictive entropy",
        "",
    ]
    w_id = max(8, *(len(e.image_id) for e in ev.images))
    w_m = max(6, *(len(e.method) for e in ev.images))
    header = f"{'image':<{w_id}} {'method':<{w_m}} {'source':<10} {'N':>3} {'M':>2} " + " ".join(
        h.rjust(8) for _, h in COLUMNS
    )
    lines += [header, "-" * len(header)]
    for e in ev.images:
        lines.append(
            f"{e.image_id:<{w_id}} {e.method:<{w_m}} {'+'.join(e.source):<10} "
            f"{e.n_samples:>3} {len(e.raters):>2} "
            + " ".join(_fmt(e.values[key]) for key, _ in COLUMNS)
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'mean':<{w_id}} {'':<{w_m}} {'':<10} {'':>3} {'':>2} "
        + " ".join(_fmt(ev.means[key].mean) for key, _ in COLUMNS)
    )
    nan = {h: ev.means[k].n_nan for k, h in COLUMNS if ev.means[k].n_nan}
    if nan:
        lines.append(
            "NaN values skipped in the means: " + ", ".join(f"{h} {n}" for h, n in nan.items())
        )
    for e in ev.images:
        for w in getattr(e, "warnings", []):
            lines.append(f"WARNING ({e.image_id}): {w}")
    cal = ev.calibration
    lines += [
        "",
        f"dataset ({len(ev.images)} images, {cal.n_pixels} pixels, accumulators merged): "
        f"ECE {_fmt(cal.ece, 0)}  MCE {_fmt(cal.mce, 0)}  ACE {_fmt(cal.ace, 0)}",
    ]
    if ev.aurc is not None:
        lines.append(
            f"AURC over {ev.aurc.n_images} images: {_fmt(ev.aurc.aurc, 0)} (E-AURC "
            f"{_fmt(ev.aurc.e_aurc, 0)}); risk = {ev.aurc_info['risk']}, confidence = "
            f"{ev.aurc_info['confidence']}"
        )
    meanings = {tuple(e.source): e.meanings for e in ev.images if e.meanings}
    for source, m in meanings.items():
        if m.get("mutual_information"):
            lines.append(
                f"source {'+'.join(source)}: mutual information = {m['mutual_information']}, "
                f"expected entropy = {m.get('expected_entropy')}"
            )
    if ev.skipped:
        lines.append(
            f"skipped {len(ev.skipped)} image(s): "
            + "; ".join(f"{s['image_id']} ({s['reason']})" for s in ev.skipped[:5])
            + (" ..." if len(ev.skipped) > 5 else "")
        )
    return "\n".join(lines)
