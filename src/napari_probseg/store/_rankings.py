"""Ranking records of a store (active learning): ``rankings/<ranking_id>/zarr.json``.

A ranking is one zarr v3 group whose ``attributes.probseg`` holds the whole record (JSON): the
configuration (model card hash, method, N, seed, score, aggregation), one entry per scored image,
the images that failed and why, and the time. It is written with :func:`atomic_write_json`, so a
reader always sees either the previous or the new complete record; a ranking that was interrupted
has ``status == "running"`` and is continued by the next ranking with the same configuration.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from napari_probseg.store._errors import StoreCorruptionError
from napari_probseg.store._fs import atomic_write_json, group_json, read_attrs
from napari_probseg.store._meta import to_jsonable, utc_now, validate_identifier, zarr_children

__all__ = ["RankingsMixin", "new_ranking_id"]

#: Status values of a ranking record.
RANKING_STATUS = ("running", "complete")


def new_ranking_id() -> str:
    """A fresh ranking id that sorts by creation time: ``r<YYYYmmddTHHMMSS>-<8 hex>``."""
    stamp = utc_now()[:19].replace("-", "").replace(":", "")
    return f"r{stamp}-{uuid.uuid4().hex[:8]}"


class RankingsMixin:
    """Ranking records (``rankings/``) of a :class:`~napari_probseg.store.ProjectStore`."""

    path: Path

    def _rankings_dir(self) -> Path:
        return self.path / "rankings"

    def save_ranking(self, record: dict[str, Any], *, ranking_id: str | None = None) -> str:
        """Write (or replace) one ranking record atomically; return its id.

        Parameters
        ----------
        record : dict
            JSON-able record; ``status`` must be one of ``"running"`` or ``"complete"``. The
            store adds ``ranking_id`` and ``updated``.
        ranking_id : str, optional
            Id of the ranking to replace (an interrupted one being continued); default a new id.

        Raises
        ------
        ValueError
            ``record``: not JSON-able or without a valid ``status``; ``ranking_id``: invalid.
        """
        if record.get("status") not in RANKING_STATUS:
            raise ValueError(f"record: 'status' must be one of {RANKING_STATUS}")
        ranking_id = validate_identifier(ranking_id or new_ranking_id(), "ranking_id")
        body = dict(to_jsonable(record, "record"))
        body.update(kind="ranking", ranking_id=ranking_id, updated=utc_now())
        with self._writing(".rankings") as stage:  # type: ignore[attr-defined]
            base = self._rankings_dir()
            if not (base / "zarr.json").is_file():
                base.mkdir(exist_ok=True)
                atomic_write_json(
                    base / "zarr.json", group_json({"probseg": {"kind": "rankings"}}), staging=stage
                )
            (base / ranking_id).mkdir(exist_ok=True)
            atomic_write_json(
                base / ranking_id / "zarr.json", group_json({"probseg": body}), staging=stage
            )
        return ranking_id

    def ranking_ids(self) -> list[str]:
        """Ids of the stored rankings, oldest first."""
        return zarr_children(self._rankings_dir(), "ranking_id")

    def read_ranking(self, ranking_id: str) -> dict[str, Any]:
        """Return one ranking record (a dict, see :meth:`save_ranking`).

        Raises
        ------
        ValueError
            No ranking ``ranking_id``.
        StoreCorruptionError
            The record is damaged.
        """
        directory = self._rankings_dir() / validate_identifier(ranking_id, "ranking_id")
        try:
            record = read_attrs(directory, "ranking")
        except FileNotFoundError:
            raise ValueError(f"ranking_id: no ranking {ranking_id!r} in {self.path}") from None
        if not isinstance(record.get("entries"), list):
            raise StoreCorruptionError(directory / "zarr.json", "ranking without 'entries'")
        return record

    def latest_ranking(self, *, status: str | None = "complete") -> dict[str, Any] | None:
        """The most recent ranking (of ``status``; any status when None), or None."""
        for ranking_id in reversed(self.ranking_ids()):
            record = self.read_ranking(ranking_id)
            if status is None or record.get("status") == status:
                return record
        return None
