"""The annotation worklist: a store's images in rank order with who annotated them (headless).

The napari worklist panel renders these rows; the CLI could print them. Nothing here computes a
score: the values come from the store's latest ranking record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["WorklistRow", "next_image", "worklist_rows"]


@dataclass(frozen=True)
class WorklistRow:
    """One image of the worklist.

    Attributes
    ----------
    image_id : str
    rank : int or None
        Rank in the ranking (1 = most informative); None for images the ranking did not score
        (added later, filtered out, or failed), which are listed after the ranked ones.
    value : float or None
        The score (None when undefined or not scored).
    raters : tuple of str
        Raters with a committed annotation of the image.
    error : str or None
        Why the ranking could not score the image.
    """

    image_id: str
    rank: int | None
    value: float | None
    raters: tuple[str, ...]
    error: str | None = None

    @property
    def annotated(self) -> bool:
        """Whether anyone has annotated the image."""
        return bool(self.raters)


def worklist_rows(store: Any, record: dict[str, Any] | None) -> list[WorklistRow]:
    """Every image of ``store``: ranked ones by rank, then the others by id.

    Parameters
    ----------
    store : ProjectStore
    record : dict or None
        A ranking record (``store.latest_ranking()``); None lists the images unranked.
    """
    ids = store.image_ids()
    present = set(ids)
    entries = [] if record is None else [e for e in record["entries"] if e["image_id"] in present]
    failed = {} if record is None else {f["image_id"]: f["error"] for f in record["failed"]}
    rows = [
        WorklistRow(e["image_id"], int(e["rank"]), e["value"], tuple(store.raters(e["image_id"])))
        for e in entries
    ]
    ranked = {r.image_id for r in rows}
    rows += [
        WorklistRow(i, None, None, tuple(store.raters(i)), failed.get(i))
        for i in ids
        if i not in ranked
    ]
    return rows


def next_image(
    rows: Sequence[WorklistRow], *, rater: str | None = None, skip: Iterable[str] = ()
) -> str | None:
    """The most informative ranked image nobody has annotated (nor ``rater``), not in ``skip``.

    Returns None when every ranked image is annotated.
    """
    skipped = set(skip)
    for row in rows:
        if row.rank is None or row.image_id in skipped:
            continue
        if not row.annotated and (rater is None or rater not in row.raters):
            return row.image_id
    return None
