"""Image-level summary of a prediction and the plain sentence that says what its uncertainty suggests.

Plain Python (no Qt, no napari): the review panel only displays what these functions return, so the
wording and the decision rule are tested on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Below this share of uncertain voxels the model is called confident (0.1% of the image).
CONFIDENT_SHARE = 1e-3
#: Predictive entropy above which a voxel counts as uncertain when forming the MI / PE ratio, so that
#: the large, certain background does not dilute it (entropy of p ~ 0.99 for two classes).
UNCERTAIN_VOXEL = 0.056
#: MI / PE ratio above which the sample-to-sample disagreement dominates the within-sample entropy.
MI_DOMINANT = 0.5


@dataclass(frozen=True)
class Interpretation:
    """What the decomposition of the predictive entropy suggests.

    Attributes
    ----------
    kind : str
        ``"confident"``, ``"reducible"``, ``"irreducible"``, ``"mixed"`` or ``"undecomposed"``.
    mi_fraction : float
        Mutual information / predictive entropy over the uncertain voxels (NaN when undefined).
    sentence : str
        One plain sentence for the reviewer.
    """

    kind: str
    mi_fraction: float
    sentence: str


def mi_fraction(
    predictive_entropy: np.ndarray,
    mutual_information: np.ndarray | None,
    *,
    min_entropy: float = UNCERTAIN_VOXEL,
) -> float:
    """Return the share of the predictive entropy explained by mutual information.

    Parameters
    ----------
    predictive_entropy : ndarray, shape (*spatial)
        Predictive entropy H[E p] in nats.
    mutual_information : ndarray, shape (*spatial), or None
        Mutual information in nats (None for deterministic methods).
    min_entropy : float, keyword-only
        Only voxels whose predictive entropy is at least this value are counted, so that the
        certain background does not dilute the ratio.

    Returns
    -------
    float
        ``sum(MI) / sum(PE)`` over the uncertain voxels, in [0, 1]; NaN when MI is None or no voxel
        is uncertain.
    """
    if mutual_information is None:
        return math.nan
    pe = np.asarray(predictive_entropy, dtype=np.float64)
    mi = np.asarray(mutual_information, dtype=np.float64)
    if pe.shape != mi.shape:
        raise ValueError(
            f"mutual_information: expected shape {pe.shape} like predictive_entropy, got {mi.shape}"
        )
    keep = pe >= min_entropy
    total = float(pe[keep].sum())
    if total <= 0:
        return math.nan
    return float(np.clip(mi[keep].sum() / total, 0.0, 1.0))


def _kinds(meaning: str | None) -> set[str]:
    text = (meaning or "").lower()
    return {k for k in ("epistemic", "aleatoric") if k in text}


def interpret(
    *,
    mi_fraction: float,
    mi_meaning: str | None,
    uncertain_share: float,
) -> Interpretation:
    """Say in one sentence what the uncertainty suggests, from the entropy decomposition.

    Parameters
    ----------
    mi_fraction : float
        Mutual information / predictive entropy over the uncertain voxels (see :func:`mi_fraction`);
        NaN when the method cannot decompose (softmax).
    mi_meaning : str or None
        What mutual information means for the method (``term_meanings(source)["mutual_information"]``),
        e.g. ``"epistemic"`` (parameter/input randomness) or ``"aleatoric (rater ambiguity)"``
        (latent models); None when undefined.
    uncertain_share : float
        Fraction of voxels whose predictive entropy is above the "uncertain voxel" threshold.

    Returns
    -------
    Interpretation
        ``kind`` and ``sentence``. Reducible (epistemic) doubt means the model is unfamiliar with the
        image: defer or add training data. Irreducible (aleatoric) doubt means an ambiguous boundary:
        review the alternatives.
    """
    if uncertain_share < CONFIDENT_SHARE:
        return Interpretation(
            "confident",
            mi_fraction,
            "The model is confident almost everywhere: a quick check of the consensus contour "
            "should be enough.",
        )
    kinds = _kinds(mi_meaning)
    if mi_meaning is None or math.isnan(mi_fraction):
        return Interpretation(
            "undecomposed",
            mi_fraction,
            "This single-pass method cannot tell reducible from irreducible doubt: review the "
            "highlighted regions, or rerun with a sampling method (MC dropout, ensemble, SSN).",
        )
    pct = f"{100 * mi_fraction:.0f}%"
    if kinds == {"epistemic"}:
        if mi_fraction >= MI_DOMINANT:
            return Interpretation(
                "reducible",
                mi_fraction,
                f"Mostly reducible doubt ({pct} of the entropy is disagreement between samples, "
                "epistemic for this method): the model seems unfamiliar with this image — defer to "
                "an expert or add similar images to the training data.",
            )
        return Interpretation(
            "irreducible",
            mi_fraction,
            f"Mostly irreducible doubt (only {pct} of the entropy is epistemic): the boundary itself "
            "is ambiguous — review the alternative contours rather than retraining.",
        )
    if kinds == {"aleatoric"}:
        return Interpretation(
            "irreducible",
            mi_fraction,
            f"Irreducible doubt: for this method the disagreement between samples ({pct} of the "
            "entropy) is aleatoric, i.e. plausible readers would draw different boundaries — "
            "review the alternative hypotheses (this method cannot measure model unfamiliarity).",
        )
    return Interpretation(
        "mixed",
        mi_fraction,
        f"Mixed doubt: the disagreement between samples ({pct} of the entropy) combines "
        f"{mi_meaning} — review the alternatives, and defer if they disagree on more than the "
        "boundary.",
    )


def interpret_maps(
    predictive_entropy: np.ndarray,
    mutual_information: np.ndarray | None,
    mi_meaning: str | None,
) -> Interpretation:
    """Return :func:`interpret` computed from the maps of one prediction.

    Parameters
    ----------
    predictive_entropy, mutual_information : ndarray, shape (*spatial)
        Maps in nats; ``mutual_information`` is None for deterministic methods.
    mi_meaning : str or None
        Meaning of mutual information for the method.
    """
    pe = np.asarray(predictive_entropy, dtype=np.float64)
    return interpret(
        mi_fraction=mi_fraction(pe, mutual_information),
        mi_meaning=mi_meaning,
        uncertain_share=float((pe >= UNCERTAIN_VOXEL).mean()) if pe.size else 0.0,
    )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def summary_rows(result: Any) -> list[tuple[str, str]]:
    """Return the image-level summary of a ``PredictionResult`` as (label, value) rows.

    Every aggregated score names its aggregation; structural measures come from the samples.

    Parameters
    ----------
    result : PredictionResult
        ``samples (N, *S)``, ``maps`` (numpy), ``method``, ``source``, ``n_samples``, ``meanings``.
    """
    from napari_probseg.core.aggregate import aggregate
    from napari_probseg.core.structure import pairwise_dice, volume_cov
    from napari_probseg.core.uncertainty import term_label

    maps = result.maps
    source = tuple(result.source)
    rows: list[tuple[str, str]] = [
        ("method", f"{result.method} (randomness: {', '.join(source) or 'none'})"),
        ("samples N", str(result.n_samples)),
    ]
    fg = _foreground(result)
    terms = [("predictive_entropy", maps.predictive_entropy)]
    if result.meanings.get("mutual_information") is not None:
        terms += [
            ("mutual_information", maps.mutual_information),
            ("expected_entropy", maps.expected_entropy),
        ]
    for name, umap in terms:
        label = term_label(name, source)
        patch = tuple(min(8, n) for n in np.shape(umap))
        for method, kwargs in (
            ("mean", {}),
            ("foreground_normalized", {"mask": fg}),
            ("patch_max", {"patch_size": patch}),
        ):
            try:
                score = aggregate(np.asarray(umap), method=method, **kwargs)
            except ValueError:
                continue
            how = method.replace("_", "-")
            if method == "patch_max":
                how += f" ({'×'.join(map(str, patch))})"
            rows.append((f"{label} · {how}", _fmt(float(score.value))))
    samples = np.asarray(result.samples)
    if samples.shape[0] >= 2:
        rows.append(("pairwise Dice (mean over pairs)", _fmt(float(pairwise_dice(samples)))))
        rows.append(("volume CoV (std/mean)", _fmt(float(volume_cov(samples)))))
    return rows


def _foreground(result: Any) -> np.ndarray:
    """Foreground of any sample: the region over which foreground-normalized scores are averaged."""
    samples = np.asarray(result.samples)
    return (samples > 0).any(axis=0)


def interpretation_for(result: Any) -> Interpretation:
    """Return the :class:`Interpretation` of a ``PredictionResult``."""
    maps = result.maps
    meaning = result.meanings.get("mutual_information")
    mi = maps.mutual_information if meaning is not None else None
    return interpret_maps(maps.predictive_entropy, mi, meaning)
