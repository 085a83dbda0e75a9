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


@pytest.mark.slow
def test_demo_trains_a_loadable_model(tmp_path):
    """`python -m napari_probseg.training.demo` end to end on a few steps (card, weights, metrics)."""
    from napari_probseg.models.cards import load_card
    from napari_probseg.training import demo

    assert demo.main(["--out", str(tmp_path), "--only", "lesions2d-ssn", "--scale", "0.005"]) == 0
    card = load_card(tmp_path / "lesions2d-ssn.json")
    assert card.training["runs"][0]["steps"] == 5  # round(1000 * 0.005)
    assert card.training["cpu_seconds"] > 0
    ssn = card.metrics["ssn"]
    assert 0 <= ssn["dice_consensus_vs_majority"] <= 1 and 0 <= ssn["ged16"] <= 2
    m = load_method(tmp_path / "lesions2d-ssn.json")
    p = m.sample(torch.zeros(1, 1, 16, 16), 2, generator=torch.Generator().manual_seed(0))
    assert p.shape == (2, 2, 16, 16)


def test_bundled_cards_record_good_held_out_metrics():
    """The recorded held-out metrics (card test set) of the trained 2D models are sane and the SSN
    and probabilistic U-Net model the raters better than parameter sampling (the full check is `make validate`)."""
    unet = CARDS["lesions2d-unet"].metrics
    ens = CARDS["lesions2d-ensemble"].metrics["ensemble"]
    ssn = CARDS["lesions2d-ssn"].metrics["ssn"]
    pun = CARDS["lesions2d-prob-unet"].metrics["prob_unet"]
    for m in (unet["softmax"], unet["mc_dropout"], ens, ssn, pun):
        assert m["dice_consensus_vs_majority"] > 0.75 and m["n_samples"] == 16
    assert ssn["ged16"] < min(unet["mc_dropout"]["ged16"], ens["ged16"])
    assert pun["ged16"] < min(unet["mc_dropout"]["ged16"], ens["ged16"])
    assert CARDS["lesions2d-unet"].methods["mc_dropout"]["p"] == 0.25
