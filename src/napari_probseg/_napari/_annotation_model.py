"""Qt-free logic of the annotation panel: edit sessions, blind mode, autosave, saving, agreement.

Nothing here imports napari or Qt, so every rule the panel follows is tested without a viewer:

- :class:`EditSession` is one rater's editing of one image: where the edit started (empty, the
  raters' consensus, a hypothesis of a run, a stored version, a recovered draft), the tools used
  (inferred from napari's Labels modes at each paint event), the time spent, and whether there is
  unsaved work. It produces the keyword arguments of ``ProjectStore.save_annotation`` and the
  ``extra`` of ``ProjectStore.save_draft`` (from which it is rebuilt after a crash).
- Blind mode: a rater sees no other rater's labels of an image until they have saved their own
  (:func:`can_see_others`, :func:`visible_raters`).
- :class:`AutosavePolicy`: the interval and what an autosave tick should do.
- :func:`save_or_keep`: a save that never loses work: if the commit fails, a draft is written;
  if that fails too, the mask goes to a recovery ``.npy`` file outside the store.
- :func:`agreement` (from :mod:`napari_probseg.core.agreement`): pairwise Dice matrix, majority
  vote, soft consensus and disagreement share.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg.core.agreement import Agreement, agreement, dice_matrix  # noqa: F401
from napari_probseg.store import (
    AnnotationVersion,
    DraftInfo,
    ProjectStore,
    StoreError,
    validate_identifier,
)
from napari_probseg.store._meta import utc_now

#: napari Labels modes that change the data, and the tool name recorded for each.
TOOL_FOR_MODE = {"paint": "brush", "erase": "eraser", "fill": "fill", "polygon": "polygon"}
#: Where an edit can start from, and the tool recorded for that start (None: nothing to record).
ORIGIN_TOOLS: dict[str, str | None] = {
    "empty": None,
    "consensus": "consensus",
    "hypothesis": "accepted_hypothesis",
    "version": None,
    "draft": None,
}
#: Default autosave interval.
DEFAULT_AUTOSAVE_S = 180.0
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_identifier(name: str, *, fallback: str = "image") -> str:
    """Turn a free-form name (a layer name) into a valid store identifier.

    Runs of characters outside ``[A-Za-z0-9._-]`` become ``_``; leading ``.``/``-``/``_`` are
    stripped; the result is cut to 64 characters. ``fallback`` is used if nothing valid remains.
    """
    text = _BAD_ID_CHARS.sub("_", str(name)).lstrip("._-")[:64].rstrip("_") or fallback
    try:
        return validate_identifier(text, "name")
    except ValueError:  # e.g. a Windows device name
        return validate_identifier(f"{text[:60]}_img", "name")


def run_id_from_metadata(meta: Mapping[str, Any]) -> str | None:
    """Identifier of the prediction run a review-panel layer came from, or None.

    The review panel's layers carry ``metadata["probseg"]`` with the run's ``provenance`` (see
    ``_layers._meta``). A stored run id (``run_id``) is used as is; otherwise one is derived from
    the provenance: ``<method>-seed<seed>-<created, compact UTC>``, which names the run uniquely
    in practice and is a valid identifier.
    """
    probseg = meta.get("probseg", meta) if isinstance(meta, Mapping) else {}
    if not isinstance(probseg, Mapping):
        return None
    prov = probseg.get("provenance") or {}
    for candidate in (probseg.get("run_id"), prov.get("run_id")):
        if isinstance(candidate, str):
            try:
                return validate_identifier(candidate, "source_run")
            except ValueError:
                return sanitize_identifier(candidate, fallback="run")
    method = probseg.get("method") or prov.get("method")
    if not method:
        return None
    parts = [str(method)]
    if prov.get("seed") is not None:
        parts.append(f"seed{prov['seed']}")
    created = str(prov.get("created") or "")
    if created:
        parts.append(re.sub(r"[^0-9]", "", created)[:20])
    return sanitize_identifier("-".join(parts), fallback="run")


def hypothesis_source(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Read what a "Use as annotation" layer was copied from (its ``metadata``).

    Returns
    -------
    dict
        ``source_run`` (str or None), ``source_sample`` (int or None: the sample index when the
        layer is a copy of one sample), and ``extra``: the origin (``"consensus"``,
        ``"hypothesis 2"``, ``"sample 5"``), method, N, seed, model card hash and the input
        image signature, kept in the version record.
    """
    probseg = meta.get("probseg", {}) if isinstance(meta, Mapping) else {}
    if not isinstance(probseg, Mapping):
        probseg = {}
    prov = probseg.get("provenance") or {}
    kind, index = probseg.get("kind"), probseg.get("index")
    sample = int(index) if kind == "sample" and isinstance(index, (int, np.integer)) else None
    extra = {
        "source_mask": probseg.get("origin"),
        "kind": kind,
        "index": None if index is None else int(index),
        "method": probseg.get("method"),
        "n_samples": probseg.get("n_samples"),
        "seed": prov.get("seed"),
        "card_sha256": prov.get("card_sha256"),
        "input_signature": probseg.get("input_signature"),
    }
    return {
        "source_run": run_id_from_metadata(meta),
        "source_sample": sample,
        "extra": {k: v for k, v in extra.items() if v is not None},
    }


def is_hypothesis_layer_metadata(meta: Mapping[str, Any]) -> bool:
    """Whether a layer's metadata marks it as the review panel's "Use as annotation" layer."""
    probseg = meta.get("probseg") if isinstance(meta, Mapping) else None
    return isinstance(probseg, Mapping) and probseg.get("what") == "annotation"


# --------------------------------------------------------------------------- edit session


@dataclass
class EditSession:
    """One rater's editing of one image, from the start of editing to the last save.

    Attributes
    ----------
    image_id, rater, role : str
        Who edits what (validated).
    origin : str
        One of ``ORIGIN_TOOLS``: where the edit started.
    parent_version : int or None
        The rater's latest version when editing started (None: the rater had none); a save made
        after another session of the same rater committed becomes a ``conflict`` version.
    source_run, source_sample : optional
        Prediction run and sample the edit started from.
    tools : list of str
        Tools used, in first-use order, without repeats.
    started : str
        UTC ISO time at which editing started.
    carried_s : float
        Editing time carried over from a recovered draft.
    dirty : bool
        Whether there are edits not yet in the store (neither committed nor drafted).
    extra : dict
        JSON-able record kept with every version (origin details).
    """

    image_id: str
    rater: str
    role: str
    origin: str = "empty"
    parent_version: int | None = None
    source_run: str | None = None
    source_sample: int | None = None
    tools: list[str] = field(default_factory=list)
    started: str = field(default_factory=utc_now)
    carried_s: float = 0.0
    dirty: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    _t0: float = field(default=-1.0, repr=False, compare=False)
    _last_save_s: float = field(default=0.0, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_identifier(self.image_id, "image_id")
        validate_identifier(self.rater, "rater")
        if self.origin not in ORIGIN_TOOLS:
            raise ValueError(
                f"origin: expected one of {', '.join(ORIGIN_TOOLS)}, got {self.origin!r}"
            )
        if self._t0 < 0:
            self._t0 = self.clock()
        tool = ORIGIN_TOOLS[self.origin]
        if tool is not None:
            self.add_tool(tool)

    def add_tool(self, tool: str | None) -> None:
        """Record that ``tool`` was used (ignored if None or already recorded)."""
        if tool and tool not in self.tools:
            self.tools.append(tool)

    def record_paint(self, mode: str) -> None:
        """A paint event happened while the layer was in napari Labels ``mode``."""
        self.add_tool(TOOL_FOR_MODE.get(str(mode)))
        self.dirty = True

    def time_spent_s(self) -> float:
        """Seconds since editing started (plus time carried over from a recovered draft)."""
        return self.carried_s + max(0.0, self.clock() - self._t0)

    def save_kwargs(self, note: str = "") -> dict[str, Any]:
        """Keyword arguments of ``ProjectStore.save_annotation`` (besides image, rater, mask)."""
        spent = self.time_spent_s()
        return {
            "role": self.role,
            "tools": tuple(self.tools),
            "time_spent_s": round(spent, 3),
            "source_run": self.source_run,
            "source_sample": self.source_sample,
            "note": note,
            "parent_version": self.parent_version,
            "started": self.started,
            "extra": {
                **self.extra,
                "origin": self.origin,
                "since_previous_save_s": round(spent - self._last_save_s, 3),
            },
        }

    def committed(self, version: AnnotationVersion) -> None:
        """The edit was committed as ``version``: later saves continue from it."""
        self.parent_version = version.version
        self._last_save_s = self.time_spent_s()
        self.dirty = False

    def draft_extra(self, note: str = "") -> dict[str, Any]:
        """Everything :meth:`from_draft` needs to resume this session after a crash."""
        return {
            "session": {
                "role": self.role,
                "origin": self.origin,
                "parent_version": self.parent_version,
                "source_run": self.source_run,
                "source_sample": self.source_sample,
                "tools": list(self.tools),
                "started": self.started,
                "time_spent_s": round(self.time_spent_s(), 3),
                "note": note,
                "extra": dict(self.extra),
            }
        }

    @classmethod
    def from_draft(
        cls, draft: DraftInfo, *, role: str, clock: Callable[[], float] = time.monotonic
    ) -> EditSession:
        """Resume the session saved in a draft's ``extra`` (``role`` if the draft has none)."""
        saved = draft.extra.get("session", {}) if isinstance(draft.extra, Mapping) else {}
        sample = saved.get("source_sample")
        session = cls(
            image_id=draft.image_id,
            rater=draft.rater,
            role=saved.get("role") or role,
            origin="draft",
            parent_version=saved.get("parent_version", draft.based_on),
            source_run=saved.get("source_run"),
            source_sample=None if sample is None else int(sample),
            started=saved.get("started") or draft.saved,
            carried_s=float(saved.get("time_spent_s") or 0.0),
            extra={**saved.get("extra", {}), "recovered_draft": draft.saved},
            clock=clock,
        )
        for tool in saved.get("tools", []):
            session.add_tool(tool)
        session.extra.setdefault("draft_origin", saved.get("origin"))
        return session


def edit_start(
    store: ProjectStore,
    image_id: str,
    rater: str,
    origin: str,
    *,
    blind: bool,
    hypothesis: tuple[Any, Mapping[str, Any], str] | None = None,
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Initial mask and :class:`EditSession` arguments of an edit starting from ``origin``.

    Parameters
    ----------
    store : ProjectStore
        The project store.
    image_id, rater : str
        The image and the rater who edits it.
    origin : {"empty", "version", "consensus", "hypothesis"}
        Start empty, from the rater's latest version, from the majority vote of the raters'
        latest versions (refused in blind mode until the rater has saved: it shows others' work),
        or from a hypothesis layer (edited in place: the returned mask is None).
    blind : bool, keyword-only
        Blind mode.
    hypothesis : (data, metadata, name), keyword-only
        The review panel's "Use as annotation" layer, for ``origin="hypothesis"``.

    Returns
    -------
    mask : ndarray, shape = the image's shape, or None
    kwargs : dict
        ``parent_version`` (the rater's latest version now) and, by origin, ``source_run``,
        ``source_sample``, ``extra``.
    """
    shape = tuple(store.image_info(image_id)["shape"])
    versions = store.history(image_id, rater)
    kwargs: dict[str, Any] = {"parent_version": versions[-1].version if versions else None}
    if origin == "empty":
        return np.zeros(shape, np.uint8), kwargs
    if origin == "version":
        if not versions:
            raise ValueError("origin: you have no saved version of this image yet")
        return store.latest(image_id, rater)[0], kwargs
    if origin == "consensus":
        if not can_see_others(blind=blind, own_versions=len(versions)):
            raise ValueError(
                "origin: blind mode: the consensus shows other raters' work; "
                "save your own annotation first"
            )
        raters = store.raters(image_id)
        if not raters:
            raise ValueError("origin: no rater has saved an annotation of this image yet")
        kwargs["extra"] = {"consensus_of": raters}
        return agreement(latest_masks(store, image_id, raters)).majority, kwargs
    if origin == "hypothesis":
        if hypothesis is None:
            raise ValueError("hypothesis: expected the (data, metadata, name) of a layer")
        data, metadata, name = hypothesis
        if tuple(np.shape(data)) != shape:
            raise ValueError(
                f"hypothesis: layer {name!r} has shape {np.shape(data)}, "
                f"the image {image_id!r} has {shape}"
            )
        src = hypothesis_source(metadata)
        kwargs.update(source_run=src["source_run"], source_sample=src["source_sample"])
        kwargs["extra"] = {**src["extra"], "layer": name}
        return None, kwargs
    raise ValueError(f"origin: expected empty, version, consensus or hypothesis, got {origin!r}")


# --------------------------------------------------------------------------- blind mode


def can_see_others(*, blind: bool, own_versions: int) -> bool:
    """Blind mode: a rater sees other raters' labels only once they have saved their own."""
    return not blind or own_versions > 0


#: Layer kinds (``metadata["probseg"]["what"]``) showing other raters' committed work.
REVEALING = ("store-annotation", "store-agreement")


def blind_action(
    metadata: Mapping[str, Any], image_id: str | None, rater: str | None
) -> str | None:
    """What blind mode does with a layer while ``rater`` may not see others' work on ``image_id``.

    Returns ``"remove"`` for another rater's committed annotation or an agreement layer of the
    image, ``"hide"`` for another rater's layer being edited (unsaved work is never dropped),
    else None.
    """
    meta = metadata.get("probseg") if isinstance(metadata, Mapping) else None
    if not isinstance(meta, Mapping) or meta.get("image_id") != image_id:
        return None
    if meta.get("what") == "store-agreement":
        return "remove"
    if meta.get("rater") == rater:
        return None
    if meta.get("what") in REVEALING:
        return "remove"
    if meta.get("what") == "annotation" and meta.get("rater") is None:
        return None  # a fresh copy of a model hypothesis: nobody's work yet
    return "hide" if meta.get("what") in ("store-edit", "annotation") else None


def visible_raters(store: ProjectStore, image_id: str, rater: str, *, blind: bool) -> list[str]:
    """Raters of ``image_id`` whose annotations ``rater`` may see (always including their own)."""
    raters = store.raters(image_id)
    own = len(store.history(image_id, rater)) if rater in raters else 0
    if can_see_others(blind=blind, own_versions=own):
        return raters
    return [r for r in raters if r == rater]


# --------------------------------------------------------------------------- autosave


@dataclass
class AutosavePolicy:
    """Autosave bookkeeping: the interval, and whether a timer tick should write a draft.

    A tick writes a draft only when there is an edit session with unsaved changes; the number of
    drafts written and the time of the last one are kept for the panel's status line.
    """

    interval_s: float = DEFAULT_AUTOSAVE_S
    enabled: bool = True
    drafts_written: int = 0
    last_draft: str | None = None

    def __post_init__(self) -> None:
        self.set_interval(self.interval_s)

    def set_interval(self, seconds: float) -> None:
        """Change the interval (seconds, > 0)."""
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise ValueError(f"seconds: expected a number, got {seconds!r}") from None
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"seconds: expected a positive interval, got {seconds!r}")
        self.interval_s = value

    @property
    def interval_ms(self) -> int:
        """The interval in milliseconds (for ``QTimer``), at least 1."""
        return max(1, round(self.interval_s * 1000))

    def should_save(self, session: EditSession | None) -> bool:
        """Whether a tick should write a draft now."""
        return self.enabled and session is not None and session.dirty

    def saved(self, draft: DraftInfo) -> None:
        """Record a written draft."""
        self.drafts_written += 1
        self.last_draft = draft.saved


# --------------------------------------------------------------------------- saving


@dataclass
class SaveOutcome:
    """What a save did. Exactly one of ``version``, ``draft``, ``recovery_path`` is set unless
    everything failed (then ``error`` says why and the layer is the only copy)."""

    version: AnnotationVersion | None = None
    draft: DraftInfo | None = None
    recovery_path: Path | None = None
    error: str | None = None

    @property
    def committed(self) -> bool:
        """Whether a new version was committed."""
        return self.version is not None

    def message(self) -> tuple[str, str]:
        """``(severity, text)`` of the notification telling the user what happened."""
        if self.version is not None:
            v = self.version
            flag = " (saved as a conflict: another session saved first)" if v.conflict else ""
            return "info", (
                f"probseg: saved {v.image_id!r} as {v.rater} version {v.version}{flag}; "
                f"{v.chunks_written} chunk(s) written"
            )
        if self.draft is not None:
            kept = "as an autosaved draft"
        elif self.recovery_path is not None:
            kept = f"in {self.recovery_path}"
        else:
            return "error", f"probseg: saving failed ({self.error}); keep the layer open"
        return (
            "error",
            f"probseg: saving failed ({self.error}); your work is kept in the layer and {kept}",
        )


def default_recovery_dir() -> Path:
    """Folder for recovery files written when the store cannot be written at all."""
    import tempfile

    return Path(tempfile.gettempdir()) / "napari-probseg-recovery"


def is_unchanged(store: ProjectStore, session: EditSession, mask: Any) -> bool:
    """Whether ``mask`` equals the rater's latest committed version (saving it adds nothing).

    True only when the session has no unsaved edits, continues from a version
    (``parent_version``), and that version is still the rater's latest with identical labels.
    """
    if session.dirty or session.parent_version is None:
        return False
    versions = store.history(session.image_id, session.rater)
    if not versions or versions[-1].version != session.parent_version:
        return False
    latest = store.latest(session.image_id, session.rater)[0]
    arr = np.asarray(mask)
    return latest.shape == arr.shape and bool(np.array_equal(latest, arr))


def save_or_keep(
    store: ProjectStore,
    session: EditSession,
    mask: Any,
    *,
    note: str = "",
    recovery_dir: str | Path | None = None,
) -> SaveOutcome:
    """Commit ``mask`` as a new version of the session's rater, never losing the work.

    If the commit fails (store error, file-system error, invalid data) the mask is written as the
    rater's draft; if that fails too, it is written with ``numpy.save`` to
    ``recovery_dir/<image>__<rater>__<time>.npy``.

    Parameters
    ----------
    store : ProjectStore
        Open read-write.
    session : EditSession
        The edit; marked committed (and clean) on success.
    mask : ndarray, shape = the image's shape
        The annotation.
    note : str, keyword-only
        Free text kept with the version.
    recovery_dir : path, keyword-only
        Last-resort folder (default :func:`default_recovery_dir`).

    Returns
    -------
    SaveOutcome
    """
    arr = np.asarray(mask)
    try:
        version = store.save_annotation(
            session.image_id, session.rater, arr, **session.save_kwargs(note)
        )
    except (StoreError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    else:
        session.committed(version)
        return SaveOutcome(version=version)
    try:
        draft = store.save_draft(
            session.image_id,
            session.rater,
            arr,
            based_on=session.parent_version,
            note=note,
            extra=session.draft_extra(note),
        )
    except (StoreError, OSError, ValueError) as exc:
        error += f"; draft failed too ({type(exc).__name__}: {exc})"
    else:
        session.dirty = False
        return SaveOutcome(draft=draft, error=error)
    try:
        folder = Path(recovery_dir) if recovery_dir is not None else default_recovery_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{session.image_id}__{session.rater}__{stamp}.npy"
        np.save(path, arr)
    except OSError as exc:
        return SaveOutcome(error=f"{error}; recovery file failed too ({exc})")
    return SaveOutcome(recovery_path=path, error=error)


def describe_version(v: AnnotationVersion) -> dict[str, str]:
    """Display strings of a version record (rater, version, time, role, tools, note)."""
    created = v.created.replace("T", " ")[:19]
    flags = " (conflict)" if v.conflict else ""
    return {
        "rater": v.rater,
        "version": f"v{v.version}{flags}",
        "time": f"{created} UTC",
        "role": v.role,
        "tools": ", ".join(v.tools) or "-",
        "source": (
            f"{v.source_run}" + (f" #{v.source_sample}" if v.source_sample is not None else "")
            if v.source_run
            else "-"
        ),
        "note": v.note,
    }


# --------------------------------------------------------------------------- agreement
# The Dice matrix, majority vote and disagreement shares are headless, in core.agreement.


def latest_masks(store: ProjectStore, image_id: str, raters: Sequence[str]) -> dict[str, Any]:
    """Latest committed mask of each rater (in the given order)."""
    return {r: store.latest(image_id, r)[0] for r in raters}
