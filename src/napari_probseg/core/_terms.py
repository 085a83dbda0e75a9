"""Randomness sources and what the entropy terms mean for each (DESIGN.md "Methods").

Public through :mod:`napari_probseg.core.uncertainty`; kept apart so that the accumulator module
stays focused on the array math.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LATENT_CAVEAT", "SOURCES", "TERMS", "normalize_source", "term_label", "term_meanings"]

#: Where the randomness between samples comes from (DESIGN.md "Methods").
SOURCES: tuple[str, ...] = ("parameter", "input", "latent", "none")

#: Names of the entropy terms, as used by :func:`term_label`.
TERMS: tuple[str, ...] = ("predictive_entropy", "mutual_information", "expected_entropy")

# (word, qualifier) for mutual information and expected entropy, per source.
_MEANINGS: dict[str, dict[str, tuple[str, str | None]]] = {
    "parameter": {
        "mutual_information": ("epistemic", None),
        "expected_entropy": ("aleatoric", None),
    },
    "input": {"mutual_information": ("epistemic", None), "expected_entropy": ("aleatoric", None)},
    # Review eq. 42 (Kahl et al.): for a latent-variable model the mutual information over the
    # latent is the aleatoric part (rater ambiguity); the expected entropy is the remainder, read
    # as epistemic / positional. The split is approximate (review §7.1): see LATENT_CAVEAT.
    "latent": {
        "mutual_information": ("aleatoric", "rater ambiguity, eq. 42"),
        "expected_entropy": ("remainder", "epistemic/positional, eq. 42"),
    },
}

#: Shown wherever the latent reading is named (review eq. 42, §7.1).
LATENT_CAVEAT = (
    "For this latent-variable model mutual information over the latent is read as aleatoric "
    "(rater ambiguity) and the expected entropy as the remainder (epistemic/positional), "
    "following review eq. 42 (Kahl et al.); the split is approximate (review §7.1)."
)


# --------------------------------------------------------------------------------------------
# Sources and meanings
# --------------------------------------------------------------------------------------------


def normalize_source(source: str | Iterable[str]) -> tuple[str, ...]:
    """Return ``source`` as a tuple of distinct known sources ("none" dropped when composed)."""
    items = (source,) if isinstance(source, str) else tuple(source)
    if not items or not all(isinstance(s, str) for s in items):
        raise ValueError(
            f"source: expected one of {SOURCES} or a non-empty tuple of them, got {source!r}"
        )
    for s in items:
        if s not in SOURCES:
            raise ValueError(f"source: expected one of {SOURCES} (or a tuple), got {s!r}")
    unique = tuple(dict.fromkeys(items))
    real = tuple(s for s in unique if s != "none")
    return real if real else ("none",)


def term_meanings(source: str | Iterable[str]) -> dict[str, str | None]:
    """Return what mutual information and expected entropy mean for a randomness source.

    Parameters
    ----------
    source : str or tuple of str
        One of :data:`SOURCES`, or a tuple of them for composed methods (e.g. test-time
        augmentation over a probabilistic U-Net: ``("input", "latent")``).

    Returns
    -------
    dict
        ``{"mutual_information": str | None, "expected_entropy": str | None}``:

        - ``"parameter"`` (MC dropout, ensembles, Laplace) and ``"input"`` (test-time
          augmentation): MI ``"epistemic"``, EE ``"aleatoric"``;
        - ``"latent"`` (SSN, probabilistic U-Net), as review eq. 42 (Kahl et al.) reads them:
          MI ``"aleatoric (rater ambiguity, eq. 42)"``, EE
          ``"remainder (epistemic/positional, eq. 42)"`` (approximate, :data:`LATENT_CAVEAT`);
        - ``"none"`` (single softmax pass): both ``None`` (only predictive entropy is defined);
        - composed: every source is named, e.g. ``("input", "latent")`` gives MI
          ``"epistemic (input) + aleatoric (rater ambiguity, eq. 42, latent)"`` and EE
          ``"aleatoric (input) + remainder (epistemic/positional, eq. 42, latent)"``.

    Raises
    ------
    ValueError
        ``source`` is not a known source or tuple of them.
    """
    sources = normalize_source(source)
    if sources == ("none",):
        return {"mutual_information": None, "expected_entropy": None}
    out: dict[str, str | None] = {}
    for term in ("mutual_information", "expected_entropy"):
        parts = []
        for s in sources:
            word, qualifier = _MEANINGS[s][term]
            if len(sources) == 1:
                parts.append(word if qualifier is None else f"{word} ({qualifier})")
            else:
                parts.append(f"{word} ({qualifier + ', ' if qualifier else ''}{s})")
        out[term] = " + ".join(parts)
    return out


def term_label(term: str, source: str | Iterable[str]) -> str:
    """Return a human-readable label for an entropy term, naming what it means for ``source``.

    Parameters
    ----------
    term : str
        One of :data:`TERMS` (``"predictive_entropy"``, ``"mutual_information"``,
        ``"expected_entropy"``) or ``"variance"``.
    source : str or tuple of str
        Randomness source, see :func:`term_meanings`.

    Returns
    -------
    str
        E.g. ``"mutual information (epistemic)"``; ``"predictive entropy"``; for source
        ``"none"`` the plain term name (its meaning is undefined).

    Raises
    ------
    ValueError
        Unknown ``term`` or ``source``.
    """
    if term not in (*TERMS, "variance"):
        raise ValueError(f"term: expected one of {(*TERMS, 'variance')}, got {term!r}")
    meanings = term_meanings(source)
    name = term.replace("_", " ")
    meaning = meanings.get(term)
    return name if meaning is None else f"{name} ({meaning})"
