"""Every bundled model card loads (weights sha256 verified) and samples on a small crop."""

from __future__ import annotations

import numpy as np
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


@pytest.fixture(scope="module")
def held_out():
    """Held-out 2D lesions (seed 4000: not training, validation, card test set or reference)."""
    from napari_probseg.data.synthetic import make_lesions

    return make_lesions(6, ndim=2, n_raters=4, seed=4000)


def _engine_run(card_name, method_name, image, n=16):
    from napari_probseg.engine import run_prediction

    return run_prediction(image, load_method(card_name, method_name), n_samples=n, device="cpu")


def _dice(a, b):
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


@pytest.mark.slow
def test_bundled_2d_models_recompute_good_held_out_metrics(held_out):
    """Recomputed with the engine on held-out images (not re-read from the cards): the consensus
    agrees with the raters' majority, the latent models model the raters better (GED16) than the
    ensemble, and no SSN sample covers more than twice the largest rater's area."""
    from napari_probseg.training._common import ged16

    rows = {
        "mc_dropout": "lesions2d-unet",
        "softmax": "lesions2d-unet",
        "ensemble": "lesions2d-ensemble",
        "ssn": "lesions2d-ssn",
        "prob_unet": "lesions2d-prob-unet",
    }
    geds = {}
    for method, card_name in rows.items():
        dice, ged = [], []
        for i, image in enumerate(held_out.images):
            res = _engine_run(card_name, method, image)
            raters = held_out.raters[i]
            majority = raters.mean(0) > 0.5
            dice.append(_dice(res.maps.mean_probs.argmax(0) > 0, majority))
            samples = np.repeat(res.samples, 16 // len(res.samples), axis=0).astype(np.uint8)
            ged.append(ged16(samples, raters))
            if method == "ssn":
                largest_rater = raters.reshape(4, -1).sum(1).max()
                assert res.samples.reshape(16, -1).sum(1).max() <= 2 * largest_rater
        # median: an image whose majority is empty (faint lesions only) scores Dice 0 by definition
        assert np.median(dice) > 0.6, (method, dice)
        geds[method] = float(np.mean(ged))
    assert geds["ssn"] < geds["ensemble"] and geds["prob_unet"] < geds["ensemble"], geds
    assert geds["mc_dropout"] < geds["softmax"], geds


@pytest.mark.slow
def test_bundled_reference_matches_recomputed_in_domain_scores(held_out):
    """The card's in-domain reference describes what the engine computes on held-out images."""
    from napari_probseg.engine._summary import summarize
    from napari_probseg.training._common import score_table

    card = CARDS["lesions2d-unet"]
    ref = card.reference["methods"]["mc_dropout"]["mutual_information/mean"]["quantiles"]
    values = [
        score_table(summarize(_engine_run("lesions2d-unet", "mc_dropout", img)))[
            "mutual_information/mean"
        ]
        for img in held_out.images
    ]
    assert ref["0.05"] <= np.median(values) <= ref["0.99"], (values, ref)
    for name, c in CARDS.items():
        assert set(c.reference["methods"]) == set(c.available_methods), name
        assert c.training_distribution["synthetic"] is True
        assert c.normalization == {"kind": "zscore"}


@pytest.mark.slow
def test_real_photo_is_not_all_lesion_and_is_flagged_out_of_domain():
    """scikit-image's camera and cell were ~100 % lesion with the fixed-statistics z-score."""
    import skimage.data

    for image in (skimage.data.camera()[::2, ::2], skimage.data.cell()[::2, ::2]):
        res = _engine_run("lesions2d-unet", "mc_dropout", image.astype(np.float32), n=4)
        assert (res.maps.mean_probs.argmax(0) > 0).mean() < 0.5
        dom = res.provenance["domain"]
        assert dom["checked"] and dom["in_domain"] is False and dom["synthetic"] is True
        assert any(w.startswith("domain:") for w in res.provenance["warnings"])
        assert any("synthetic lesions" in w for w in res.provenance["warnings"])
