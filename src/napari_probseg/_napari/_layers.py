"""Pure conversion of a ``PredictionResult`` into napari layer-data tuples.

No napari or Qt import here: the functions return ``(data, kwargs, layer_type)`` tuples (napari's
``LayerDataTuple``), so they run in the worker thread (contours and regions are computed off the GUI
thread) and are tested without a viewer. Every layer of a run has a short name saying what it
shows (``run_layer_name``; the image and the run are in ``metadata["probseg"]`` and in the review
panel's tooltips), carries the image's scale and translate, and records in ``metadata["probseg"]``
what it shows, the image, the provenance of the run and the signature of the input image. Layer attributes that napari does not take in the
constructor (``contour``) travel under the kwargs key ``"_post"``; use :func:`create_layer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Separator between the image name and what a layer shows.
SEP = " · "
#: Layers shown when a run lands; everything else starts hidden.
VISIBLE = ("hypotheses", "contours", "highlight")
#: Colour of the top-q% highlight: one bright colour, readable over grey images.
HIGHLIGHT_COLOR = "#ff2bd6"
#: Colour of the per-sample contours (semi-transparent so that agreement reads as density).
CONTOUR_COLOR = (1.0, 0.84, 0.31, 0.45)
CONSENSUS_COLOR = "#00e5ff"
#: Class colours of label layers (background transparent).
CLASS_COLORS = ("#00e5ff", "#ffa726", "#66bb6a", "#ab47bc", "#ef5350", "#26c6da", "#d4e157")
#: The uncertainty maps, their colormaps, and the napari key they are stored under.
MAP_COLORMAPS = {
    "predictive_entropy": "inferno",
    "mutual_information": "magma",
    "expected_entropy": "viridis",
}
#: Short names of the entropy terms in layer names; the full term and its meaning for the method
#: are in the layer's metadata and tooltip (:func:`layer_tooltip`).
TERM_SHORT = {
    "predictive_entropy": "predictive entropy",
    "mutual_information": "MI",
    "expected_entropy": "EE",
}
LayerData = tuple[Any, dict, str]
#: ``metadata["probseg"]["what"]`` of image layers that are inputs a model can run on (a plain
#: image has no ``probseg`` metadata; an image opened from or added to a store is "store-image");
#: every other kind is a result (uncertainty map, probability, soft consensus).
SOURCE_IMAGE_KINDS = (None, "store-image")


def is_source_image(layer: Any) -> bool:
    """Whether ``layer`` is a grey image a model can run on, not a map a run or panel produced.

    Parameters
    ----------
    layer : napari layer
        Any layer; only non-RGB Image layers whose ``metadata["probseg"]["what"]`` is absent or
        ``"store-image"`` qualify.
    """
    if getattr(layer, "_type_string", None) != "image" or getattr(layer, "rgb", False):
        return False
    meta = layer.metadata.get("probseg") if isinstance(layer.metadata, dict) else None
    return not isinstance(meta, dict) or meta.get("what") in SOURCE_IMAGE_KINDS


@dataclass(frozen=True)
class Placement:
    """Where the image sits in the world: name, scale and translate of its spatial axes."""

    image_name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.translate:
            object.__setattr__(self, "translate", (0.0,) * len(self.scale))
        if len(self.translate) != len(self.scale):
            raise ValueError(
                f"translate: expected {len(self.scale)} values like scale, got {len(self.translate)}"
            )


def create_layer(data: Any, kwargs: dict, layer_type: str) -> Any:
    """Create the napari layer of a layer-data tuple, applying the ``"_post"`` attributes."""
    from napari.layers import Layer  # only called from the napari side

    kw = dict(kwargs)
    post = kw.pop("_post", {})
    layer = Layer.create(data, kw, layer_type)
    for attr, value in post.items():
        setattr(layer, attr, value)
    _set_tooltip(layer)
    return layer


def short_term_label(term: str, source: Any, *, nested: bool = False) -> str:
    """Short name of an entropy term for layer names: ``"MI (epistemic)"``,
    ``"MI (aleatoric, eq. 42)"``, ``"EE (remainder, eq. 42)"``, ``"predictive entropy"``.

    The meaning keeps its first word per randomness source (``core.uncertainty.term_meanings``;
    the qualifier in brackets goes to the tooltip) and names review eq. 42 when the latent reading
    is used. ``nested=True`` gives ``"MI, epistemic"`` (inside another bracket).
    """
    from napari_probseg.core.uncertainty import term_meanings

    short = TERM_SHORT.get(term, term.replace("_", " "))
    meaning = term_meanings(source).get(term)
    if not meaning:
        return short
    words = " + ".join(part.split(" (")[0] for part in meaning.split(" + "))
    text = f"{words}, eq. 42" if "eq. 42" in meaning else words
    return f"{short}, {text}" if nested else f"{short} ({text})"


def layer_tooltip(meta: dict) -> str:
    """Image and run of a run's layer, and for a map the full term and its meaning, for the
    layer list's tooltip (names stay short)."""
    prov = meta.get("provenance") or {}
    run = (
        f"{meta.get('method', '?')}, N = {meta.get('n_samples', '?')}, seed {prov.get('seed', '?')}"
    )
    text = f"image {meta.get('image', '?')} · run {run}"
    if meta.get("meaning"):
        text += f" · {str(meta.get('what', '')).replace('_', ' ')}: {meta['meaning']}"
    return text.replace("/", "∕")


def _set_tooltip(layer: Any) -> None:
    """napari's layer list shows a layer's source as its tooltip: make it the image and run."""
    meta = (layer.metadata or {}).get("probseg") if isinstance(layer.metadata, dict) else None
    if not isinstance(meta, dict) or "image" not in meta:
        return
    try:  # private in napari 0.9 (``Layer._source``); without it only the tooltip is plainer
        from napari.layers._source import Source

        layer._source = Source(path=layer_tooltip(meta), reader_plugin="napari-probseg")
    except (ImportError, AttributeError, TypeError, ValueError):
        pass


def layer_name(image_name: str, what: str) -> str:
    """Return ``"<image> · <what>"`` (store and evaluation layers, named per image)."""
    return f"{image_name}{SEP}{what}"


def run_layer_name(image_name: str, what: str) -> str:
    """Short name of a run's layer: ``what`` alone.

    The image prefix made every name too long for napari's layer list ("lesions 2d · …tive
    entropy"); the image is in the layer's metadata, and :func:`unique_name` adds it only when
    another image's run already uses the name.
    """
    return what


def unique_name(name: str, image_name: str, taken: set[str] | list[str]) -> str:
    """``name``, or ``"name (image)"`` when a layer of another image already has ``name``."""
    return name if name not in taken else f"{name} ({image_name})"


def class_colormap(n_classes: int) -> dict:
    """Return a direct label colormap: class k > 0 gets a fixed colour, background transparent."""
    cmap: dict = {None: "transparent", 0: "transparent"}
    for k in range(1, max(n_classes, 2)):
        cmap[k] = CLASS_COLORS[(k - 1) % len(CLASS_COLORS)]
    return cmap


def highlight_mask(umap: np.ndarray, quantile: float) -> np.ndarray:
    """Return the top-``quantile`` most uncertain voxels of ``umap``.

    Parameters
    ----------
    umap : ndarray, shape (*spatial)
        Uncertainty map (larger = more uncertain).
    quantile : float
        Share of voxels to keep, in (0, 1]; e.g. 0.05 keeps the top 5%. Voxels with zero
        uncertainty are never highlighted, and ties at the threshold are all kept.

    Returns
    -------
    ndarray of uint8, shape (*spatial)
        1 where highlighted, else 0.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile: expected a share in (0, 1], got {quantile!r}")
    arr = np.asarray(umap, dtype=np.float32)
    if arr.size == 0:
        return np.zeros(arr.shape, np.uint8)
    threshold = float(np.quantile(arr, 1.0 - quantile))
    return ((arr >= threshold) & (arr > 0)).astype(np.uint8)


def contour_paths(mask: np.ndarray, *, tolerance: float = 0.0) -> list[np.ndarray]:
    """Return the closed boundary paths of a 2D binary mask.

    Parameters
    ----------
    mask : ndarray, shape (rows, columns)
        Foreground where non-zero.
    tolerance : float, keyword-only
        Douglas-Peucker tolerance in pixels (``skimage.measure.approximate_polygon``); 0 (default)
        keeps every vertex: the simplification is pure Python (~10 ms per contour), slower than
        drawing the extra vertices.

    Returns
    -------
    list of ndarray, each shape (M, 2)
        (row, column) vertices; the mask is zero-padded so that paths touching the border close.
    """
    from skimage.measure import approximate_polygon, find_contours

    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise ValueError(f"mask: expected shape (rows, columns), got {m.shape}")
    if not m.any():
        return []
    padded = np.pad(m, 1).astype(np.float32)
    paths = []
    for c in find_contours(padded, 0.5):
        c = approximate_polygon(c, tolerance) if tolerance > 0 else c
        if len(c) >= 2:
            paths.append((c - 1.0).astype(np.float32))
    return paths


def sample_contours(
    samples: np.ndarray, *, max_paths: int = 400, min_vertices: int = 6, max_per_mask: int = 4
) -> tuple[list[np.ndarray], np.ndarray]:
    """Return the foreground contour of every sample, per plane in 3D.

    Parameters
    ----------
    samples : ndarray, shape (N, *spatial)
        Label masks (0 = background), 2 or 3 spatial axes.
    max_paths : int, keyword-only
        Upper bound on the number of paths (large Shapes layers make napari sluggish): in 3D,
        planes are strided evenly to respect it; then the longest paths are kept.
    min_vertices : int, keyword-only
        Paths with fewer vertices (one- or two-pixel specks) are dropped.
    max_per_mask : int, keyword-only
        Most paths per sample (per sample and plane in 3D), the longest: a noisy sample (SSN
        draws hundreds of specks on 3D) must not bury the boundaries the others agree on.

    Returns
    -------
    paths : list of ndarray, each shape (M, ndim)
        Vertices in (row, column) or (plane, row, column) coordinates.
    sample_index : ndarray of int, shape (len(paths),)
        Which sample each path belongs to.
    """
    s = np.asarray(samples)
    if s.ndim not in (3, 4):
        raise ValueError(f"samples: expected shape (N, *spatial) with 2 or 3 axes, got {s.shape}")
    paths: list[np.ndarray] = []
    owner: list[int] = []
    if s.ndim == 3:
        for i, mask in enumerate(s):
            found = _longest(
                [c for c in contour_paths(mask) if len(c) >= min_vertices], max_per_mask
            )
            paths += found
            owner += [i] * len(found)
    else:
        fg_planes = np.flatnonzero((s > 0).any(axis=(0, 2, 3)))
        # ~1 contour per sample and plane: choose a plane stride that respects max_paths.
        stride = max(1, math.ceil(len(fg_planes) * s.shape[0] / max(max_paths, 1)))
        for z in fg_planes[::stride]:
            for i in range(s.shape[0]):
                found = [c for c in contour_paths(s[i, z]) if len(c) >= min_vertices]
                for c in _longest(found, max_per_mask):
                    paths.append(np.column_stack([np.full(len(c), z, np.float32), c]))
                    owner.append(i)
    if len(paths) > max_paths:
        keep = np.sort(np.argsort([-len(p) for p in paths], kind="stable")[:max_paths])
        paths = [paths[k] for k in keep]
        owner = [owner[k] for k in keep]
    return paths, np.asarray(owner, dtype=int)


def _longest(paths: list[np.ndarray], keep: int) -> list[np.ndarray]:
    """The ``keep`` longest paths, in their original order."""
    if len(paths) <= keep:
        return paths
    chosen = sorted(np.argsort([-len(p) for p in paths], kind="stable")[:keep])
    return [paths[k] for k in chosen]


def _meta(result: Any, what: str, **extra: Any) -> dict:
    return {
        "probseg": {
            "what": what,
            "input_signature": result.input_signature,
            "method": result.method,
            "source": tuple(result.source),
            "n_samples": int(result.n_samples),
            "provenance": dict(result.provenance),
            **extra,
        }
    }


def _foreground_probability(mean_probs: np.ndarray) -> np.ndarray:
    """Probability of any foreground class: 1 - p(background), shape (*spatial)."""
    return np.clip(1.0 - np.asarray(mean_probs[0], dtype=np.float32), 0.0, 1.0)


def regions_layer(
    regions: Any, placement: Placement, *, result: Any, term_name: str
) -> LayerData | None:
    """Return the ranked regions as 2D rectangles (Shapes) or 3D points (Points) sized by extent.

    Parameters
    ----------
    regions : TopRegions
        From ``core.regions.top_regions``, ranked best first.
    placement : Placement
        Image name, scale and translate.
    result : PredictionResult
        For the layer metadata.
    term_name : str
        Label of the map the regions were ranked on, stored as a feature.
    """
    table = regions_table(regions)
    if not table["rank"]:
        return None
    ndim = len(placement.scale)
    features = {
        "rank": np.asarray(table["rank"], dtype=int),
        "score": np.asarray(table["score"], dtype=float),
        "size": np.asarray(table["size"], dtype=int),
        "term": [term_name] * len(table["rank"]),
    }
    common = {
        "name": run_layer_name(placement.image_name, "uncertain regions"),
        "scale": placement.scale,
        "translate": placement.translate,
        "features": features,
        "text": {"string": "#{rank}", "size": 10, "color": "white", "anchor": "upper_left"},
        "visible": False,
        "metadata": _meta(result, "regions", term=term_name, regions=table),
    }
    bboxes = np.asarray(table["bbox"], dtype=np.float32)
    if ndim == 2:
        rects = [
            np.array([[b[0] - 0.5, b[1] - 0.5], [b[2] - 0.5, b[3] - 0.5]], dtype=np.float32)
            for b in bboxes
        ]
        kwargs = {
            **common,
            "shape_type": "rectangle",
            "edge_color": "#ffee58",
            "face_color": "transparent",
            "edge_width": max(0.5, 0.004 * max(bboxes[:, 2:].max(), 1.0)),
        }
        return rects, kwargs, "shapes"
    centers = np.asarray(table["centroid"], dtype=np.float32)
    extent = (bboxes[:, ndim:] - bboxes[:, :ndim])[:, 1:].max(axis=1)
    kwargs = {
        **common,
        "size": np.maximum(extent, 3.0),
        "face_color": "transparent",
        "border_color": "#ffee58",
        "border_width": 0.1,
    }
    return centers, kwargs, "points"


def regions_table(regions: Any) -> dict[str, list]:
    """Return ranked regions as plain, JSON-able columns: rank, score, size, bbox, centroid.

    Parameters
    ----------
    regions : TopRegions
        From ``core.regions.top_regions``; each region's ``bbox`` (one slice per axis) becomes
        ``(min..., max...)`` voxel indices, max exclusive.
    """
    items = list(getattr(regions, "regions", regions))
    return {
        "rank": [int(r.rank) for r in items],
        "score": [float(r.score) for r in items],
        "size": [int(r.size) for r in items],
        "bbox": [[*(s.start for s in r.bbox), *(s.stop for s in r.bbox)] for r in items],
        "centroid": [[float(c) for c in r.centroid] for r in items],
    }


def prediction_layers(
    result: Any,
    placement: Placement,
    *,
    quantile: float = 0.05,
    term: str = "predictive_entropy",
    min_region_size: int = 4,
    max_regions: int = 20,
    max_hypotheses: int = 4,
) -> list[LayerData]:
    """Convert a prediction into the review layers, in stacking order (bottom first).

    Parameters
    ----------
    result : PredictionResult
        ``samples (N, *S)`` uint8, ``maps`` (numpy ``UncertaintyMaps``), ``method``, ``source``,
        ``meanings``, ``class_names``, ``provenance``, ``input_signature``.
    placement : Placement
        Name, scale and translate of the image the result belongs to; ``len(scale)`` must equal the
        number of spatial axes.
    quantile : float, keyword-only
        Share of the most uncertain voxels highlighted, in (0, 1].
    term : str, keyword-only
        Map used for the highlight and the ranked regions: ``"predictive_entropy"``,
        ``"mutual_information"`` or ``"expected_entropy"`` (the latter two only when defined).
    min_region_size : int, keyword-only
        Smallest region (voxels) reported.
    max_regions : int, keyword-only
        Most regions reported.
    max_hypotheses : int, keyword-only
        Most distinct hypotheses shown (the most frequent ones).

    Returns
    -------
    list of (data, kwargs, layer_type)
        Hypotheses (Labels with a leading sample axis, contours), the per-sample contours
        (Shapes paths), consensus, envelope, distinct hypotheses, mean foreground probability,
        predictive entropy, mutual information and expected entropy (each labelled with its
        meaning for the method), the top-q% highlight and the ranked regions.
    """
    from napari_probseg.core.structure import consensus, distinct_hypotheses, envelope

    samples = np.asarray(result.samples)
    maps = result.maps
    spatial = samples.shape[1:]
    if len(spatial) != len(placement.scale):
        raise ValueError(
            f"placement: scale has {len(placement.scale)} axes but the samples have "
            f"{len(spatial)} spatial axes {spatial}"
        )
    source = tuple(result.source)
    n_classes = max(len(result.class_names), 2)
    cmap = class_colormap(n_classes)
    name, sc, tr = placement.image_name, tuple(placement.scale), tuple(placement.translate)
    ln_k = math.log(n_classes)
    place = {"scale": sc, "translate": tr}
    layers: list[LayerData] = []

    def add(data: Any, what: str, label: str, kind: str, **kwargs: Any) -> None:
        kw = {"name": run_layer_name(name, label), **place, "visible": what in VISIBLE}
        kw.update(kwargs)
        kw.setdefault("metadata", _meta(result, what))
        layers.append((data, kw, kind))

    fg_prob = _foreground_probability(maps.mean_probs)
    add(
        fg_prob,
        "mean_probability",
        "mean foreground probability",
        "image",
        colormap="viridis",
        contrast_limits=(0.0, 1.0),
        blending="additive",
        opacity=0.7,
    )
    for key, cm in MAP_COLORMAPS.items():
        if key != "predictive_entropy" and result.meanings.get(key) is None:
            continue  # deterministic method: the decomposition is undefined, do not show zeros
        umap = np.asarray(getattr(maps, key), dtype=np.float32)
        add(
            umap,
            key,
            short_term_label(key, source),
            "image",
            colormap=cm,
            contrast_limits=(0.0, ln_k),
            blending="additive",
            opacity=0.8,
            metadata=_meta(result, key, meaning=result.meanings.get(key), units="nats"),
        )

    env = envelope(samples)
    band = np.where(env.inner, 1, np.where(env.outer, 2, 0))
    add(
        band.astype(np.uint8),
        "envelope",
        "envelope (all agree · any sample)",
        "labels",
        colormap={None: "transparent", 0: "transparent", 1: "#43a047", 2: "#ffb300"},
        opacity=0.35,
    )
    for i, hyp in enumerate(distinct_hypotheses(samples, max_hypotheses=max_hypotheses), start=1):
        mask, share = hyp.mask, hyp.share
        add(
            np.asarray(mask, dtype=np.uint8),
            f"hypothesis:{i}",
            f"hypothesis {i} ({100 * share:.0f}%)",
            "labels",
            colormap=cmap,
            _post={"contour": 2},
            opacity=0.9,
            metadata=_meta(
                result, f"hypothesis:{i}", share=float(share), members=list(hyp.members)
            ),
        )
    add(
        np.asarray(consensus(samples), dtype=np.uint8),
        "consensus",
        "consensus",
        "labels",
        colormap={**cmap, 1: CONSENSUS_COLOR},
        _post={"contour": 2},
        opacity=1.0,
    )
    paths, owner = sample_contours(samples)
    if paths:
        edge = max(0.4, 0.0025 * max(spatial[-2:]))
        add(
            paths,
            "contours",
            f"plausible contours (N={samples.shape[0]})",
            "shapes",
            shape_type="path",
            edge_color=[CONTOUR_COLOR] * len(paths),
            edge_width=edge,
            face_color="transparent",
            features={"sample": owner},
            opacity=1.0,
        )
    add(
        samples.astype(np.uint8, copy=False),
        "hypotheses",
        f"hypotheses (N={samples.shape[0]})",
        "labels",
        scale=(1.0, *sc),
        translate=(0.0, *tr),
        colormap=cmap,
        _post={"contour": 2},
        opacity=0.9,
    )
    umap = np.asarray(getattr(maps, term), dtype=np.float32)
    term_text = short_term_label(term, source, nested=True)
    add(
        highlight_mask(umap, quantile),
        "highlight",
        f"most uncertain {100 * quantile:g}% ({term_text})",
        "labels",
        colormap={None: "transparent", 0: "transparent", 1: HIGHLIGHT_COLOR},
        # Outline only (filled in napari's 3D view, which has no label contours): the anatomy
        # under the most uncertain voxels stays visible.
        _post={"contour": 1},
        opacity=0.9,
        metadata=_meta(result, "highlight", quantile=quantile, term=term),
    )
    regions = top_regions_for(
        umap, quantile=quantile, min_size=min_region_size, max_regions=max_regions
    )
    reg = regions_layer(regions, placement, result=result, term_name=short_term_label(term, source))
    if reg is not None:
        layers.append(reg)
    for _, kw, _ in layers:
        kw["metadata"]["probseg"]["image"] = name
    return layers


def top_regions_for(umap: np.ndarray, *, quantile: float, min_size: int, max_regions: int) -> Any:
    """Return ``core.regions.top_regions`` of the top-``quantile`` share of ``umap``."""
    from napari_probseg.core.regions import top_regions

    q = min(max(1.0 - quantile, 1e-6), 1 - 1e-6)
    return top_regions(umap, quantile=q, min_size=min_size, max_regions=max_regions)


def annotation_layer(record: Any, kind: str, index: int | None = None) -> LayerData:
    """Return an editable Labels layer-data tuple copied from a run's consensus, hypothesis or sample.

    Parameters
    ----------
    record : RunRecord
        A landed run: ``result``, ``output.placement`` and ``layers`` (the distinct hypotheses are
        read from their layers, as shown).
    kind : {"consensus", "hypothesis", "sample"}
        What to copy.
    index : int, optional
        Sample index (0-based) or hypothesis number (1-based, as in the layer names).

    Returns
    -------
    (data, kwargs, "labels")
        A writable copy named ``"<image> · annotation"`` whose metadata records the source run
        (provenance, input signature) and which mask it started from.
    """
    from napari_probseg.core.structure import consensus

    result = record.result
    placement = record.output.placement
    samples = np.asarray(result.samples)
    if kind == "consensus":
        data = np.asarray(consensus(samples))
        origin = "consensus"
    elif kind == "sample":
        if index is None or not 0 <= index < samples.shape[0]:
            raise ValueError(f"index: expected a sample in [0, {samples.shape[0]}), got {index!r}")
        data = samples[index]
        origin = f"sample {index}"
    elif kind == "hypothesis":
        from napari_probseg._napari._session import layer_data

        found = layer_data(record, f"hypothesis:{index}")
        if found is None:
            raise ValueError(f"index: no distinct hypothesis {index!r} in this run")
        data = np.asarray(found)
        origin = f"hypothesis {index}"
    else:
        raise ValueError(f"kind: expected 'consensus', 'hypothesis' or 'sample', got {kind!r}")
    meta = _meta(result, "annotation", origin=origin, kind=kind, index=index)
    meta["probseg"]["image"] = placement.image_name
    kwargs = {
        "name": run_layer_name(placement.image_name, "annotation"),
        "scale": tuple(placement.scale),
        "translate": tuple(placement.translate),
        "colormap": class_colormap(max(len(result.class_names), 2)),
        "opacity": 0.6,
        "metadata": meta,
    }
    return np.array(data, dtype=np.uint8, copy=True), kwargs, "labels"
