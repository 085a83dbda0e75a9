"""No tile seams: no row or column of a map is anomalous at tile borders.

Regression for issue 12: the 5 % highlight of the 512^2 camera image showed straight stripes at
rows 96/192/288/384 (the tile borders of 128^2 patches). Cause: the gaussian blending weights were
> 0 up to the tile edge, where the network sees zero padding; on a saturated prediction the edge
outputs, although weighted ~4e-4, dominated the interior entropy (~1e-30 nats). The blending now
gives exactly zero weight to the outer quarter of every overlap (engine/_tiling.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import camera
from torch import nn

from napari_probseg import engine
from napari_probseg.engine._tiling import edge_profile, plan_tiles
from napari_probseg.models.methods import SoftmaxMethod

PATCH, OVERLAP = 32, 0.25


def _saturating_method() -> SoftmaxMethod:
    """A real conv net with zero padding (two 3x3 means, receptive field 5 px) and large logits.

    Interior logits are 20..60 (entropy 1e-8..1e-25 nats); at an edge the zero padding drops the
    means by a third, as the bundled U-Nets' outputs change at tile edges on unnormalised images.
    """
    conv1, conv2 = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)
    head = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        for conv in (conv1, conv2):
            conv.weight.fill_(1.0 / 9.0)
            conv.bias.zero_()
        head.weight.copy_(torch.tensor([0.0, 40.0]).view(2, 1, 1, 1))
        head.bias.copy_(torch.tensor([0.0, -20.0]))
    net = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), head)
    kw = {"class_names": ["background", "lesion"], "spatial_dims": 2, "in_channels": 1}
    return SoftmaxMethod(net.eval(), **kw)


def _borders(size: int) -> list[int]:
    plan = plan_tiles((size, size), spatial_dims=2, patch_size=(PATCH,) * 2, overlap=OVERLAP)
    starts = sorted({int(w.weight_index[0].start) for w in plan.windows})
    return sorted({s for s in starts if s > 0} | {s + PATCH - 1 for s in starts[:-1]})


def _anomaly(profile: np.ndarray, b: int) -> float:
    """How far row ``b`` of a per-row profile stands out from the rows within +-6 (not +-1)."""
    near = [profile[j] for j in range(max(0, b - 6), min(len(profile), b + 7)) if abs(j - b) > 1]
    return float(profile[b] - np.median(near))


def _profiles(m: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row and per-column share of the 5 % highlight and mean of log10 of the map."""
    hi = m >= np.quantile(m, 0.95)
    logm = np.log10(m.astype(np.float64) + 1e-45)
    return {
        "highlight rows": hi.mean(1),
        "highlight cols": hi.mean(0),
        "log rows": logm.mean(1),
        "log cols": logm.mean(0),
    }


@pytest.fixture(scope="module")
def camera_runs():
    # 128^2: 5 x 5 tiles of 32^2. Intensities 1..2 (as unnormalised real images are): the zero
    # padding at tile edges is a strong edge for the network, as for the bundled models on camera
    img = 1.0 + camera()[::4, ::4].astype(np.float32) / 255.0
    method = _saturating_method()
    kw = dict(n_samples=1, normalization="none", device="cpu")
    tiled = engine.run_prediction(img, method, patch_size=(PATCH,) * 2, overlap=OVERLAP, **kw)
    whole = engine.run_prediction(img, method, **kw)
    assert tiled.provenance["tiling"]["n_tiles"] == 25
    return tiled, whole


def test_no_row_or_column_anomalous_at_tile_borders(camera_runs):
    tiled, whole = camera_runs
    pe = tiled.maps.predictive_entropy
    assert float(np.quantile(pe, 0.5)) < 1e-6  # saturated: the case that showed the stripes
    borders = _borders(pe.shape[0])
    assert borders == [24, 31, 48, 55, 72, 79, 96, 103]
    for name, prof in _profiles(pe).items():
        ref = _profiles(whole.maps.predictive_entropy)[name]
        others = [b for b in range(8, len(prof) - 8) if min(abs(b - x) for x in borders) > 2]
        worst_elsewhere = max(abs(_anomaly(prof, b)) for b in others)
        for b in borders:
            # a border row stands out no more than the untiled map at that row, nor than the
            # most unusual non-border row of the tiled map
            assert abs(_anomaly(prof, b)) <= max(abs(_anomaly(ref, b)), worst_elsewhere) + 1e-6, (
                name,
                b,
            )


def test_tiled_equals_untiled_beyond_the_receptive_field(camera_runs):
    """Edge voxels (within the 2 px receptive-field margin) get weight 0 where a neighbour
    covers them, so tiling changes nothing, even in log-entropy."""
    tiled, whole = camera_runs
    np.testing.assert_allclose(tiled.maps.mean_probs, whole.maps.mean_probs, atol=5e-7, rtol=0)
    a = np.log10(tiled.maps.predictive_entropy.astype(np.float64) + 1e-45)
    b = np.log10(whole.maps.predictive_entropy.astype(np.float64) + 1e-45)
    assert np.abs(a - b).max() < 0.05


def test_edge_profile_is_a_partition_of_unity_with_zero_edges():
    for overlap in (1, 2, 8, 32, 33):
        left = edge_profile(128, 0, overlap)
        right = edge_profile(128, overlap, 0)
        np.testing.assert_allclose(left[128 - overlap :] + right[:overlap], 1.0, atol=1e-12)
        assert (right[: overlap // 4] == 0).all() and right[overlap:].min() == 1.0
    plan = plan_tiles((100, 77), spatial_dims=2, patch_size=(32, 32), overlap=0.4)
    np.testing.assert_allclose(plan.weight_sum.numpy()[:100, :77], 1.0, atol=1e-5)
    assert float(plan.weight_sum.min()) > 0
