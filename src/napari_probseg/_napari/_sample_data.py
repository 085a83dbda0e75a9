"""npe2 sample data: seeded synthetic lesion images with one Labels layer per simulated rater."""

from __future__ import annotations

from typing import Any

from napari_probseg.data.synthetic import sample_case

LayerDataTuple = tuple[Any, dict[str, Any], str]

# One colour per rater style so that the rater contours can be told apart when overlaid.
_RATER_COLORS = {
    "tight": "#ff4040",
    "generous": "#40d040",
    "smoothed": "#4080ff",
    "conservative": "#ffd000",
}


def _layers(ndim: int) -> list[LayerDataTuple]:
    image, raters, scale = sample_case(ndim)
    kind = f"{ndim}D"
    layers: list[LayerDataTuple] = [
        (
            image,
            {
                "name": f"synthetic lesions {kind}",
                "scale": scale,
                "colormap": "gray",
                "metadata": {"source": f"napari_probseg.data.synthetic.sample_case({ndim})"},
            },
            "image",
        )
    ]
    for rater, mask in raters.items():
        color = _RATER_COLORS.get(rater.split("_")[0], "#ff00ff")
        layers.append(
            (
                mask,
                {
                    "name": f"rater {rater}",
                    "scale": scale,
                    "opacity": 0.6,
                    "colormap": {None: "transparent", 0: "transparent", 1: color},
                    "metadata": {"rater": rater, "synthetic": True},
                },
                "labels",
            )
        )
    return layers


def sample_2d() -> list[LayerDataTuple]:
    """2D lesions: a 128 x 128 image and the masks of 4 raters (tight, generous, smoothed, conservative)."""
    return _layers(2)


def sample_3d() -> list[LayerDataTuple]:
    """3D lesions: a 32 x 64 x 64 volume, spacing (2, 1, 1), and the masks of 4 raters."""
    return _layers(3)
