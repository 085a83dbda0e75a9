"""Per-viewer record of finished runs, shared by the run and review panels.

The run panel lands a finished :class:`RunOutput` on the viewer (after checking that the image did
not change meanwhile); the review panel listens to :attr:`Session.changed` to show the newest run.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psygnal import Signal

from napari_probseg._napari._layers import (
    CONTOUR_COLOR as CONTOUR_RGBA,
)
from napari_probseg._napari._layers import (
    create_layer,
    highlight_mask,
    run_layer_name,
    unique_name,
)
from napari_probseg._napari._runner import RunOutput

#: Layers a new run of the same image never replaces: the users' annotation and edit layers.
_KEPT = ("annotation", "store-edit")
#: Most contour paths re-added to the existing Shapes layer on a re-run (see ``_updatable``).
MAX_PATHS_IN_PLACE = 400


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
    pending : dict of str to layer or layer-data tuple
        Layers of the run not created yet (hidden at landing; :func:`show_layer` creates them).
    regions : dict of str to list
        The ranked regions as columns (see ``_layers.regions_table``).
    quantile : float
        Current highlight share.
    """

    output: RunOutput
    image_layer: Any
    layers: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, list] = field(default_factory=dict)
    quantile: float = 0.05
    run_id: str | None = None

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


def item_what(item: Any) -> str:
    """What a layer-data tuple or a layer shows (``metadata["probseg"]["what"]``)."""
    meta = item[1]["metadata"] if isinstance(item, tuple) else item.metadata
    return str(meta["probseg"]["what"])


def _item_visible(item: Any) -> bool:
    return bool(item[1].get("visible", True) if isinstance(item, tuple) else item.visible)


def _finish(viewer: Any, record: RunRecord) -> RunRecord:
    from napari.utils.notifications import show_warning

    warnings = run_warnings(record.result)
    if warnings:  # spacing, out of domain...: every surface says it, not only the CLI
        show_warning(f"probseg: {record.image_name}: " + " | ".join(warnings))
    regions = record.layers.get("regions") or record.pending.get("regions")
    if regions is not None:
        meta = regions[1]["metadata"] if isinstance(regions, tuple) else regions.metadata
        record.regions = meta["probseg"]["regions"]
    label_sample_axis(viewer)
    if record.image_layer in viewer.layers:
        viewer.layers.selection.active = record.image_layer
    get_session(viewer).add(record)
    return record


def label_sample_axis(viewer: Any) -> None:
    """Name the leading axis of the hypotheses stack "sample" (napari shows "-3" or "-4")."""
    stacks = [
        lay
        for lay in viewer.layers
        if (lay.metadata.get("probseg") or {}).get("what") == "hypotheses"
        if isinstance(lay.metadata, dict)
    ]
    if not stacks or viewer.dims.ndim != max(lay.ndim for lay in stacks):
        return
    labels = list(viewer.dims.axis_labels)
    if labels[0] != "sample":
        labels[0] = "sample"
        viewer.dims.axis_labels = labels


def land(viewer: Any, output: RunOutput, image_layer: Any) -> RunRecord | None:
    """Add a finished run's layers to ``viewer``, replacing an earlier run on the same image.

    Every layer is added at once (scripts and tests); the run panel uses :func:`land_stepwise`.
    Returns None (and adds nothing) when the image layer was removed or its data changed since the
    run started: a late result never lands on another image.
    """
    if not _check_landing(viewer, output, image_layer):
        return None
    remove_run_layers(viewer, output.placement.image_name)
    record = RunRecord(output=output, image_layer=image_layer, quantile=output.request.quantile)
    with viewer.layers.batched_update():
        for item in output.extra.get("layers") or output.layers:
            layer = create_layer(*item) if isinstance(item, tuple) else item
            _append(viewer, layer)
            record.layers[item_what(layer)] = layer
    return _finish(viewer, record)


def _updatable(old: Any, item: Any) -> bool:
    """Whether ``old`` can take the new layer's data in place (no new controls or GPU visual).

    Images and labels can, and the contour paths (re-added to the same Shapes layer: replacing
    the layer would make napari run a full ``gc.collect()``, over a second with torch loaded);
    the regions (rectangles, points) are replaced by the layer built in the worker.
    """
    kind = item[2] if isinstance(item, tuple) else item._type_string
    if kind == "shapes" and old._type_string == "shapes":
        # Paths are cleared and re-added in place; that recomputes their meshes on the GUI
        # thread, cheaper than the gc.collect() of a replacement only for a few paths.
        n_paths = len(item[0]) if isinstance(item, tuple) else item.nshapes
        return item_what(item) == "contours" and n_paths <= MAX_PATHS_IN_PLACE
    return kind in ("image", "labels") and old._type_string == kind


def _update_in_place(viewer: Any, old: Any, item: Any) -> Any:
    """Give ``old`` the data, name, placement and metadata of the new layer; keep its visibility."""
    if isinstance(item, tuple):
        data, kwargs, _ = item
        get = kwargs.get
    else:
        data = item.data
        get = lambda key, default=None: getattr(item, key, default)  # noqa: E731
    if old._type_string == "shapes" and not isinstance(item, tuple) and _swap_shapes(old, item):
        pass  # the meshes built in the worker, taken over as they are
    elif old._type_string == "shapes":
        paths = list(data) if isinstance(item, tuple) else [np.asarray(d) for d in item.data]
        edge = np.asarray(get("edge_width"), dtype=float).ravel()
        old.data = []
        if paths:
            old.add_paths(
                paths, edge_width=float(edge[0]) if edge.size else 1.0, edge_color=CONTOUR_RGBA
            )
        features = get("features")
        if features is not None and len(paths):
            old.features = features
    else:
        old.data = data
    old.metadata = dict(get("metadata"))
    image = (old.metadata.get("probseg") or {}).get("image", "")
    taken = {lay.name for lay in viewer.layers if lay is not old}
    old.name = unique_name(get("name"), image, taken)
    # Each placement change re-slices the layer: only set what changed.
    for attr in ("scale", "translate"):
        value = get(attr)
        if value is not None and not np.allclose(getattr(old, attr), value):
            setattr(old, attr, value)
    if old._type_string == "image" and get("contrast_limits") is not None:
        old.contrast_limits = get("contrast_limits")
    return old


def _swap_shapes(old: Any, new: Any) -> bool:
    """Give the Shapes layer ``old`` the shapes of ``new`` (built in the worker) without
    recomputing their meshes, features or thumbnail on the GUI thread; False (nothing changed)
    if it cannot.

    ``Shapes.data = ...`` triangulates every path again on the GUI thread (about 1 ms a path:
    200 ms for 64 samples' contours), and each refresh rasterises every path for the layer-list
    thumbnail. ``new``'s shape list (meshes included), feature table and thumbnail were built in
    the worker; this takes them over the way napari's own data setter installs a new list
    (private napari API; any mismatch falls back to the setter).
    """
    try:
        from napari.layers.base._base_constants import ActionType

        view, table, thumbnail = new._data_view, new._feature_table, new.thumbnail
        if view.ndisplay != old._slice_input.ndisplay or new.ndim != old.ndim:
            return False
        old._finish_drawing()
        old.selected_data = set()
        old._update_thumbnail = lambda *args, **kwargs: None  # the worker's is taken below
        try:
            view.slice_key = np.array(old._data_slice.point)[old._slice_input.not_displayed]
            old._data_view = view
            old._feature_table = table
            old._update_dims()
            old.events.data(
                value=old.data,
                action=ActionType.CHANGED,
                data_indices=tuple(range(old.nshapes)),
                vertex_indices=((),),
            )
            old._reset_editable()
            old.events.properties()
            old.events.features()
            old.refresh()
        finally:
            del old._update_thumbnail
        old.thumbnail = thumbnail
    except (AttributeError, ImportError, TypeError, ValueError):
        return False
    return True


class _Landing:
    """One landing of a run, one step per turn of the Qt event loop (see :func:`land_stepwise`)."""

    def __init__(self, viewer: Any, record: RunRecord, items: list, done: Callable) -> None:
        self.viewer, self.record, self.done = viewer, record, done
        image_name = record.image_name
        old = {item_what(lay): lay for lay in _run_layers(viewer, image_name)}
        self.steps: list[tuple[str, Any, Any]] = []
        for item in items:
            what = item_what(item)
            prev = old.pop(what, None)
            if prev is not None and _updatable(prev, item):
                self.steps.append(("update", prev, item))
            elif prev is not None:
                self.steps.append(("replace", prev, item))
            elif _item_visible(item):
                self.steps.append(("add", None, item))
            else:
                record.pending[what] = item  # hidden: created when first shown
        # Layers of the earlier run this one does not have: hidden now, removed in one batch
        # once the run has landed (each removal makes napari run a full gc.collect()). The
        # "current region" outline is kept (hidden) for the next navigation.
        self.leftovers = [lay for lay in old.values() if item_what(lay) != "current_region"]
        for layer in old.values():
            layer.visible = False

    def start(self) -> None:
        self.step()

    def _remove_leftovers(self) -> None:
        alive = [lay for lay in self.leftovers if lay in self.viewer.layers]
        if alive:
            with self.viewer.layers.batched_update():
                for layer in alive:
                    self.viewer.layers.remove(layer)

    def step(self) -> None:
        from napari.utils.notifications import show_error
        from qtpy.QtCore import QTimer

        if not self.steps:
            self._remove_leftovers()
            self.done(_finish(self.viewer, self.record))
            return
        action, old, item = self.steps.pop(0)
        try:
            if action == "update":
                layer = _update_in_place(self.viewer, old, item)
            else:
                layer = create_layer(*item) if isinstance(item, tuple) else item
                index = self.viewer.layers.index(old) if action == "replace" else None
                if action == "replace":
                    self.viewer.layers.remove(old)
                _append(self.viewer, layer, index)
        except Exception as exc:  # report, never a traceback dialog; keep what landed
            show_error(f"probseg: could not add a layer: {exc}")
            self.done(None)
            return
        self.record.layers[item_what(layer)] = layer
        QTimer.singleShot(0, lambda: self.step())  # the lambda keeps this landing alive


def _append(viewer: Any, layer: Any, index: int | None = None) -> None:
    """Add ``layer`` without making it the active layer (that rebuilds the layer controls).

    A short name another image's run already uses gets the image name appended.
    """
    layers = viewer.layers
    image = (layer.metadata.get("probseg") or {}).get("image")
    if image:
        layer.name = unique_name(layer.name, image, {lay.name for lay in layers})
    previous = getattr(layers, "_activate_on_insert", None)
    if previous is not None:
        layers._activate_on_insert = False  # private napari flag; harmless if it goes away
    try:
        if index is None:
            layers.append(layer)
        else:
            layers.insert(index, layer)
    finally:
        if previous is not None:
            layers._activate_on_insert = previous


def land_stepwise(
    viewer: Any, output: RunOutput, image_layer: Any, done: Callable[[RunRecord | None], None]
) -> None:
    """Like :func:`land`, but one layer per turn of the Qt event loop, then call ``done``.

    Adding a layer builds its controls and GPU visual (tens to hundreds of milliseconds each), so:
    layers visible at landing are added one per turn; hidden ones are only created when first
    shown (:func:`show_layer`); on a re-run of the same image, image and label layers take the
    new data in place, and layers built in the worker replace the others.
    """
    if not _check_landing(viewer, output, image_layer):
        done(None)
        return
    record = RunRecord(output=output, image_layer=image_layer, quantile=output.request.quantile)
    # Layers already built in the worker (``output.extra["layers"]``), else the data tuples.
    items = list(output.extra.get("layers") or output.layers)
    _Landing(viewer, record, items, done).start()


def show_layer(viewer: Any, record: RunRecord, what: str, *, visible: bool = True) -> Any:
    """Show (creating it on first use) the layer of a landed run that shows ``what``.

    Returns the layer, or None when the run has no such layer.
    """
    layer = record.layers.get(what)
    if layer is None or layer not in viewer.layers:
        item = record.pending.pop(what, None)
        if item is None:
            return None
        layer = create_layer(*item) if isinstance(item, tuple) else item
        _append(viewer, layer)
        record.layers[what] = layer
        if what == "hypotheses":
            label_sample_axis(viewer)
    layer.visible = visible
    return layer


def layer_data(record: RunRecord, what: str) -> Any:
    """The data of a run's layer ``what``, whether it was created or is still pending."""
    layer = record.layers.get(what)
    if layer is not None:
        return layer.data
    item = record.pending.get(what)
    if item is None:
        return None
    return item[0] if isinstance(item, tuple) else item.data


def store_image_id(image_layer: Any, store: Any) -> str | None:
    """The id of ``image_layer`` in ``store`` (an image opened from or added to it), else None."""
    from pathlib import Path

    meta = (image_layer.metadata or {}).get("probseg") or {}
    image_id, path = meta.get("image_id"), meta.get("store")
    if meta.get("what") != "store-image" or not image_id or not path:
        return None
    if Path(path).resolve() != Path(store.path).resolve():
        return None
    return str(image_id) if image_id in store.image_ids() else None


def stamp_run_id(viewer: Any, record: RunRecord, run_id: str) -> None:
    """Record that ``record`` was saved as store run ``run_id``, on its layers and on the
    "Use as annotation" copies made from it (their ``source_run``)."""
    record.run_id = run_id
    signature = record.result.input_signature
    metas = list(run_layer_metadata(record).values())
    for layer in viewer.layers:
        meta = (layer.metadata or {}).get("probseg") if isinstance(layer.metadata, dict) else None
        if isinstance(meta, dict) and meta.get("what") == "annotation":
            same = meta.get("input_signature") == signature and (
                meta.get("provenance") == dict(record.result.provenance)
            )
            if same:
                metas.append(meta)
    for meta in metas:
        meta["run_id"] = run_id


def run_layer_metadata(record: RunRecord) -> dict[str, dict]:
    """``metadata["probseg"]`` of every layer of a run, created or pending, by what it shows."""
    out = {}
    for what, item in {**record.pending, **record.layers}.items():
        meta = item[1]["metadata"] if isinstance(item, tuple) else item.metadata
        out[what] = meta.get("probseg", {})
    return out


def _run_layers(viewer: Any, image_name: str) -> list[Any]:
    out = []
    for layer in list(viewer.layers):
        meta = layer.metadata.get("probseg") if isinstance(layer.metadata, dict) else None
        if meta and meta.get("image") == image_name and meta.get("what") not in _KEPT:
            out.append(layer)
    return out


def remove_run_layers(viewer: Any, image_name: str) -> None:
    """Remove the layers an earlier run produced for ``image_name`` (never annotations)."""
    old = _run_layers(viewer, image_name)
    if not old:
        return
    # One batch: napari cleans the scene graph (with a full gc.collect) once, not per layer.
    with viewer.layers.batched_update():
        for layer in old:
            viewer.layers.remove(layer)


def set_highlight(record: RunRecord, quantile: float, *, term: str = "predictive_entropy") -> None:
    """Recompute the top-``quantile`` highlight of a landed run in place, and rename the layer."""
    from napari_probseg._napari._layers import short_term_label

    layer = record.layers.get("highlight")
    if layer is None:
        return
    umap = getattr(record.result.maps, term)
    layer.data = highlight_mask(umap, quantile)
    layer.name = run_layer_name(
        record.image_name,
        f"most uncertain {100 * quantile:g}% "
        f"({short_term_label(term, record.result.source, nested=True)})",
    )
    layer.metadata["probseg"]["quantile"] = quantile
    record.quantile = quantile
