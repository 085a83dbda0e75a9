"""Every bundled model card loads (weights sha256 verified) and samples on a small crop."""

from __future__ import annotations

import pytest
import torch

from napari_probseg.models import bundled_models, load_method
from napari_probseg.models.registry import bundled_model_dir

CARDS = bundled_models()


def test_bundled_models_exist_and_fit_the_size_budget():
    assert {
        "lesions2d-unet",
        "lesions2d-ensemble",
        "lesions2d-ssn",
        "lesions2d-prob-unet",
        "lesions3d-unet",
        "lesions3d-ssn",
    } <= set(CARDS)
    total = sum(p.stat().st_size for p in bundled_model_dir().iterdir())
    assert total <= 25 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CARDS))
def test_bundled_model_samples_every_method(name):
    card = CARDS[name]
    assert card.weights.get("sha256") and card.metrics and card.training
    for method in [m for m in card.methods if m != "tta" or card.wrapper == "plain"]:
        m = load_method(name, method)
        size = (32,) * card.spatial_dims
        x = torch.randn(1, card.in_channels, *size)
        p = m.sample(x, 2, generator=torch.Generator().manual_seed(0))
        assert p.shape == (2, card.n_classes, *size)
        torch.testing.assert_close(p.sum(1), torch.ones(2, *size), atol=1e-5, rtol=0)
        assert m.describe()["card_sha256"] == card.sha256
    if "softmax" in card.methods:
        assert card.methods["softmax"]["temperature"] > 0
