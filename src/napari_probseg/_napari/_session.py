"""Per-viewer record of finished runs, shared by the run and review panels.

The run panel lands a finished :class:`RunOutput` on the viewer (after checking that the image did
not change meanwhile); the review panel listens to :attr:`Session.changed` to show the newest run.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal

from napari_probseg._napari._layers import create_layer, highlight_mask, layer_name
from napari_probseg._napari._runner import RunOutput

#: Layers a new run of the same image never replaces: the users' annotation and edit layers.
_KEPT = ("annotation", "store-edit")


@dataclass
class RunRecord:
    """A run that landed on the viewer.

    Attributes
    ----------
    output : RunOutput
        Result, request and placement.
    image_layer : napari.layers.Image
        The layer the run was computed from.
    layers : dict of str to Layer
        The layers it produced, keyed by what they show (``"hypotheses"``, ``"highlight"``, ...).
    regions : dict of str to list
        The ranked regions as columns (see ``_layers.regions_table``).
    quantile : float
        Current highlight share.
    """

    output: RunOutput
    image_layer: Any
    layers: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, list] = field(default_factory=dict)
    quantile: float = 0.05

    @property
    def result(self) -> Any:
        """The ``PredictionResult``."""
        return self.output.result

    @property
    def image_name(self) -> str:
        """Name of the image the run belongs to."""
        return self.output.placement.image_name


class Session:
    """What the panels of one viewer share: its finished runs (newest last) and the open store.

    Panels observe :attr:`changed` (a run landed) and :attr:`store_changed` (a project store was
    opened or closed) instead of looking for each other.
    """

    changed = Signal(object)
    store_changed = Signal(object)

    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}
        self.current: RunRecord | None = None
        self.store: Any = None
        #: The rater signed in on the annotation panel (None: nobody).
        self.rater: str | None = None

    def set_store(self, store: Any) -> None:
        """Make ``store`` (a ``ProjectStore`` or None) the viewer's open store; emit if changed."""
        if store is not self.store:
            self.store = store
            self.store_changed.emit(store)

    def add(self, record: RunRecord) -> None:
        """Store ``record`` as the current run of its image and emit :attr:`changed`."""
        self.records[record.image_name] = record
        self.current = record
        self.changed.emit(record)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_session(viewer: Any) -> Session:
    """Return the :class:`Session` of ``viewer`` (created on first use)."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = Session()
    return session


def run_warnings(result: Any) -> list[str]:
    """The warnings the engine recorded for a run (spacing, out of domain...), deduplicated."""
    prov = getattr(result, "provenance", None) or {}
    found = list(prov.get("warnings") or [])
    domain = prov.get("domain")
    if isinstance(domain, dict):
        found += list(domain.get("warnings") or [])
    return list(dict.fromkeys(str(w) for w in found if str(w).strip()))


def is_stale(image_layer: Any, result: Any) -> bool:
    """Return True if ``image_layer``'s data no longer matches the image ``result`` came from."""
    import numpy as np

    from napari_probseg.engine import image_signature

    return image_signature(np.asarray(image_layer.data)) != result.input_signature


def _check_landing(viewer: Any, output: RunOutput, image_layer: Any) -> bool:
    """Return True if ``output`` may land on ``image_layer`` (warn and return False otherwise)."""
    from napari.utils.notifications import show_warning

    if image_layer not in viewer.layers:
        show_warning(f"probseg: '{image_layer.name}' was removed during the run; result dropped.")
        return False
    if is_stale(image_layer, output.result):
        show_warning(
            f"probseg: '{image_layer.name}' changed during the run; the result was dropped "
            "(run again on the current image)."
        )
        return False
    return True


def _finish(viewer: Any, record: RunRecord) -> RunRecord:
    from napari.utils.notifications import show_warning

    warnings = run_warnings(record.result)
    if warnings:  # spacing, out of domain...: every surface says it, not only the CLI
        show_warning(f"probseg: {record.image_name}: " + " | ".join(warnings))
    if "regions" in record.layers:
        record.regions = record.layers["regions"].metadata["probseg"]["regions"]
    if record.image_layer in viewer.layers:
        viewer.layers.selection.active = record.image_layer
    get_session(viewer).add(record)
    return record


def land(viewer: Any, output: RunOutput, image_layer: Any) -> RunRecord | None:
    """Add a finished run's layers to ``viewer``, replacing an earlier run on the same image.

    Returns None (and adds nothing) when the image layer was removed or its data changed since the
    run started: a late result never lands on another image.
    """
    if not _check_landing(viewer, output, image_layer):
        return None
    remove_run_layers(viewer, output.placement.image_name)
    record = RunRecord(output=output, image_layer=image_layer, quantile=output.request.quantile)
    with viewer.layers.batched_update():
        for data, kwargs, kind in output.layers:
            layer = create_layer(data, kwargs, kind)
            viewer.layers.append(layer)
            record.layers[kwargs["metadata"]["probseg"]["what"]] = layer
    return _finish(viewer, record)


def land_stepwise(
    viewer: Any, output: RunOutput, image_layer: Any, done: Callable[[RunRecord | None], None]
) -> None:
    """Like :func:`land`, but add one layer per turn of the Qt event loop, then call ``done``.

    Adding a layer builds its controls and GPU visual (tens to hundreds of milliseconds each);
    spreading them keeps the viewer responsive while a run's ~15 layers appear.
    """
    from napari.utils.notifications import show_error
    from qtpy.QtCore import QTimer

    if not _check_landing(viewer, output, image_layer):
        done(None)
        return
    remove_run_layers(viewer, output.placement.image_name)
    record = RunRecord(output=output, image_layer=image_layer, quantile=output.request.quantile)
    # Layers already built in the worker (``output.extra["layers"]``), else the data tuples.
    pending = list(output.extra.get("layers") or output.layers)

    def step() -> None:
        if not pending:
            done(_finish(viewer, record))
            return
        item = pending.pop(0)
        try:
            layer = create_layer(*item) if isinstance(item, tuple) else item
            viewer.layers.append(layer)
        except Exception as exc:  # report, never a traceback dialog; keep what landed
            show_error(f"probseg: could not add a layer: {exc}")
            done(None)
            return
        record.layers[layer.metadata["probseg"]["what"]] = layer
        QTimer.singleShot(0, step)

    step()


def remove_run_layers(viewer: Any, image_name: str) -> None:
    """Remove the layers an earlier run produced for ``image_name`` (never annotations)."""
    old = []
    for layer in list(viewer.layers):
        meta = layer.metadata.get("probseg") if isinstance(layer.metadata, dict) else None
        if meta and meta.get("image") == image_name and meta.get("what") not in _KEPT:
            old.append(layer)
    if not old:
        return
    # One batch: napari cleans the scene graph (with a full gc.collect) once, not per layer.
    with viewer.layers.batched_update():
        for layer in old:
            viewer.layers.remove(layer)


def set_highlight(record: RunRecord, quantile: float, *, term: str = "predictive_entropy") -> None:
    """Recompute the top-``quantile`` highlight of a landed run in place, and rename the layer."""
    from napari_probseg.core.uncertainty import term_label

    layer = record.layers.get("highlight")
    if layer is None:
        return
    umap = getattr(record.result.maps, term)
    layer.data = highlight_mask(umap, quantile)
    layer.name = layer_name(
        record.image_name,
        f"most uncertain {100 * quantile:g}% ({term_label(term, record.result.source)})",
    )
    layer.metadata["probseg"]["quantile"] = quantile
    record.quantile = quantile
