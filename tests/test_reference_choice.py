"""The verdict's choice of scores (`training.reference`): known answers on hand-made rows."""

from __future__ import annotations

import pytest

from napari_probseg.core.summary import verdict
from napari_probseg.models.cards import ModelCard
from napari_probseg.training.reference import candidates, choose_verdict_scores


def _q(v):
    return {"n": 32, "quantiles": {"0.05": v / 4, "0.5": v / 2, "0.95": v, "0.99": 1.2 * v}}


ENTRY = {
    "mutual_information/mean": _q(0.02),
    "mutual_information/foreground_normalized": _q(1.0),
    "mutual_information/patch_max": _q(0.2),
    "expected_entropy/mean": _q(0.2),
    "structure/volume_cov": _q(0.6),
}


def _row(mi=0.01, fg=0.5, patch=0.1, cov=0.3):
    return {
        "scores": {
            "mutual_information/mean": mi,
            "mutual_information/foreground_normalized": fg,
            "mutual_information/patch_max": patch,
            "expected_entropy/mean": 0.1,
            "structure/volume_cov": cov,
        },
        "domain": {"in_domain": True},
    }


def test_candidates_follow_the_source():
    assert candidates(("parameter",))[-1] == "structure/volume_cov"
    assert candidates(("latent",)) == [
        "expected_entropy/mean",
        "expected_entropy/foreground_normalized",
        "expected_entropy/patch_max",
    ]
    assert all(k.startswith("predictive_entropy/") for k in candidates(("none",)))


def test_choice_takes_the_score_that_flags_most_shifted_images():
    # volume spread above its 0.95 point on 3 of 4 images, mean MI on 1, foreground MI on none;
    # the 4th image has no consensus foreground (undefined: falls back to the mean)
    rows = [_row(cov=0.9), _row(cov=0.9), _row(cov=0.9, mi=0.05), _row(fg=None, mi=0.001)]
    choice = choose_verdict_scores(
        "mc_dropout", ("parameter",), ENTRY, rows, n_images=4, severity=3
    )
    assert choice["epistemic"] == "structure/volume_cov"
    assert choice["aleatoric"] == "expected_entropy/mean"
    assert choice["detection"] == {
        "mutual_information/mean": 0.25,
        "mutual_information/foreground_normalized": 0.0,  # image 4 compared by its mean: in range
        "mutual_information/patch_max": 0.0,
        "structure/volume_cov": 0.75,
    }
    assert "75%" in choice["chosen_by"] and "4 other held-out images" in choice["chosen_by"]
    # the choice is a valid card entry, and the verdict then compares it
    ref = {"data": "x", "n_images": 32, "methods": {"mc_dropout": ENTRY}}
    ref["verdict"] = {"mc_dropout": choice}
    card = ModelCard.from_dict(_card(ref))
    summary = {
        "method": "mc_dropout",
        "source": ["parameter"],
        "scores": [
            {"key": "mutual_information/mean", "map": "mutual_information", "value": 0.001},
            {"key": "expected_entropy/mean", "map": "expected_entropy", "value": 0.1},
        ],
        "structure": [{"measure": "volume_cov", "value": 0.95}],
    }
    v = verdict(summary, reference=card.reference)
    assert v["kind"] == "unfamiliar" and v["epistemic"]["key"] == "structure/volume_cov"


def test_ties_go_to_the_earlier_candidate():
    rows = [_row(mi=0.05, cov=0.9), _row()]
    choice = choose_verdict_scores(
        "mc_dropout", ("parameter",), ENTRY, rows, n_images=2, severity=3
    )
    assert choice["epistemic"] == "mutual_information/mean"
    assert (
        choice["detection"]["structure/volume_cov"]
        == choice["detection"]["mutual_information/mean"]
    )


def _card(reference):
    from test_normalize_cards import _card as make

    return make(reference=reference)


@pytest.mark.parametrize("name", ["lesions2d-unet", "lesions2d-ensemble", "lesions2d-ssn"])
def test_bundled_cards_name_a_verdict_score_for_every_method(name):
    from napari_probseg.models.registry import bundled_models

    card = bundled_models()[name]
    chosen = card.reference["verdict"]
    assert set(chosen) == set(card.available_methods)
    for method, entry in chosen.items():
        assert entry["epistemic"] in card.reference["methods"][method]
        assert entry["detection"][entry["epistemic"]] == max(entry["detection"].values())


def test_probseg_models_names_the_score_each_verdict_compares(capsys):
    import json

    from napari_probseg.cli import main
    from napari_probseg.models.registry import bundled_models

    assert main(["models", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)["models"]}
    card = bundled_models()["lesions2d-unet"]
    compares = entries["lesions2d-unet"]["verdict_compares"]
    assert compares["mc_dropout"] == card.reference["verdict"]["mc_dropout"]["epistemic"]
    assert set(compares) == set(card.available_methods)
    assert main(["models"]) == 0
    assert "verdict compares (epistemic): " in capsys.readouterr().out
