"""Move the viewer to a ranked region and outline it.

:func:`region_view` is pure (world-space centre, plane and zoom of a region); :func:`go_to_region`
applies it to a viewer: camera centre and zoom, the slider of the plane axis, and a "current region"
outline layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_probseg._napari._layers import run_layer_name

#: The region fills this share of the canvas after navigation (context around it stays visible).
FILL = 0.4
OUTLINE_COLOR = "#ffffff"


@dataclass(frozen=True)
class RegionView:
    """Where to look for one region, in world coordinates (spatial axes only).

    Attributes
    ----------
    center : tuple of float
        Centre of the region's bounding box, one value per spatial axis.
    extent : tuple of float
        World size of the bounding box per spatial axis.
    corners : ndarray, shape (2, ndim)
        World min and max corners of the bounding box (voxel edges).
    """

    center: tuple[float, ...]
    extent: tuple[float, ...]
    corners: np.ndarray

    def zoom(self, canvas_size: tuple[int, int], *, fill: float = FILL) -> float:
        """Canvas pixels per world unit that make the box fill ``fill`` of the canvas (2D view)."""
        h, w = (max(1, int(s)) for s in canvas_size)
        ey, ex = (max(e, 1e-6) for e in self.extent[-2:])
        return float(fill * min(h / ey, w / ex))


def region_view(
    bbox: Any, *, scale: tuple[float, ...], translate: tuple[float, ...] | None = None
) -> RegionView:
    """Return the world-space view of a region's bounding box.

    Parameters
    ----------
    bbox : sequence of float, length 2 * ndim
        ``(min_0, ..., min_{d-1}, max_0, ..., max_{d-1})`` in voxel indices, max exclusive
        (scikit-image ``regionprops`` convention).
    scale, translate : tuple of float, keyword-only
        The image layer's spacing and offset per spatial axis.
    """
    b = np.asarray(bbox, dtype=float).ravel()
    ndim = len(scale)
    if b.size != 2 * ndim:
        raise ValueError(f"bbox: expected {2 * ndim} values for {ndim} axes, got {b.size}")
    sc = np.asarray(scale, dtype=float)
    tr = np.zeros(ndim) if translate is None else np.asarray(translate, dtype=float)
    lo = tr + sc * (b[:ndim] - 0.5)  # voxel i covers [i - 0.5, i + 0.5] in napari's data space
    hi = tr + sc * (b[ndim:] - 0.5)
    return RegionView(
        center=tuple(((lo + hi) / 2).tolist()),
        extent=tuple((hi - lo).tolist()),
        corners=np.stack([lo, hi]),
    )


def go_to_region(viewer: Any, record: Any, index: int) -> RegionView | None:
    """Centre the camera on region ``index`` of a landed run, set the slice and outline it.

    Parameters
    ----------
    viewer : napari.Viewer
    record : RunRecord
        The run (its ``regions`` table and the image placement).
    index : int
        Row of the region (0 = most uncertain).

    Returns
    -------
    RegionView or None
        None when the run has no region ``index``.
    """
    bboxes = record.regions.get("bbox", [])
    if not 0 <= index < len(bboxes):
        return None
    placement = record.output.placement
    view = region_view(bboxes[index], scale=placement.scale, translate=placement.translate)
    ndim = len(placement.scale)
    offset = viewer.dims.ndim - ndim  # leading non-spatial axes (the sample axis)
    if ndim == 3 and viewer.dims.ndisplay == 2:
        plane = placement.translate[0] + placement.scale[0] * region_plane(record, index)
        viewer.dims.set_point(offset, float(plane))
    camera = viewer.scene.camera
    displayed = [d - offset for d in viewer.dims.displayed if d >= offset]
    camera.center = tuple(view.center[d] for d in displayed)
    if viewer.dims.ndisplay == 2:
        camera.zoom = view.zoom(tuple(viewer.canvas.size))
    _outline(viewer, record, view, index)
    return view


def _probseg(layer: Any) -> dict:
    meta = getattr(layer, "metadata", None)
    value = meta.get("probseg") if isinstance(meta, dict) else None
    return value if isinstance(value, dict) else {}


def region_plane(record: Any, index: int) -> int:
    """Plane (voxel index) a 3D region is shown on: its centroid's, rounded."""
    return round(float(record.regions["centroid"][index][0]))


def _outline(viewer: Any, record: Any, view: RegionView, index: int) -> None:
    """Draw (or move) the 'current region' rectangle, in the region's plane in 3D."""
    from napari.layers import Shapes

    placement = record.output.placement
    name = run_layer_name(placement.image_name, "current region")
    sc = np.asarray(placement.scale, dtype=float)
    tr = np.asarray(placement.translate, dtype=float)
    lo, hi = (view.corners - tr) / sc  # back to data coordinates of the outline layer
    corners = [(lo[-2], lo[-1]), (lo[-2], hi[-1]), (hi[-2], hi[-1]), (hi[-2], lo[-1])]
    if len(sc) == 3:
        z = float(region_plane(record, index))
        rect = np.array([(z, r, c) for r, c in corners])
    else:
        rect = np.array(corners)
    rank = record.regions["rank"][index]
    layer = next(
        (lay for lay in viewer.layers if _probseg(lay).get("what") == "current_region"
         and _probseg(lay).get("image") == placement.image_name),
        None,
    )  # fmt: skip
    edge_width = max(0.6, 0.02 * max(view.extent[-2:]) / float(sc[-1]))
    if not isinstance(layer, Shapes):
        layer = Shapes(
            [rect],
            ndim=len(sc),
            shape_type="rectangle",
            name=name,
            scale=tuple(sc),
            translate=tuple(tr),
            edge_color=OUTLINE_COLOR,
            face_color="transparent",
            edge_width=edge_width,
            metadata={"probseg": {"what": "current_region", "image": placement.image_name}},
        )
        active = viewer.layers.selection.active
        viewer.layers.append(layer)
        # Keep the previous layer active: a selected Shapes layer would take the keys.
        if active is not None:
            viewer.layers.selection.active = active
    else:
        # One call with the shape type: setting ``data`` then ``shape_type`` rebuilds the meshes
        # twice and, in the 3D view, mixes 2D and 3D vertices (napari raises a concatenation
        # error).
        layer.data = [(rect, "rectangle")]
        layer.edge_color = OUTLINE_COLOR
        layer.face_color = "transparent"
        layer.edge_width = edge_width
    layer.metadata["probseg"]["rank"] = int(rank)
    layer.visible = True
