"""Normalisation kinds (one parser for the engine, the data layer and the card) and the card's
``training_distribution`` / ``reference`` fields: known answers and hypothesis property tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_probseg import data, engine
from napari_probseg.models.cards import ModelCard
from napari_probseg.models.errors import ModelCardError

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
positive = st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def valid_specs(draw):
    kind = draw(
        st.sampled_from(["none", "zscore", "zscore_fixed", "percentile", "window", "minmax"])
    )
    if kind == "zscore_fixed":
        return {"kind": "zscore", "mean": draw(finite), "std": draw(positive)}
    if kind == "percentile":
        low = draw(st.floats(0, 99))
        high = draw(st.floats(low + 0.5, 100)) if low + 0.5 <= 100 else 100.0
        return {"kind": "percentile", "low": low, "high": high, "clip": draw(st.booleans())}
    if kind == "window":
        if draw(st.booleans()):
            return {"kind": "window", "center": draw(finite), "width": draw(positive)}
        lo = draw(finite)
        return {"kind": "window", "window": [lo, lo + draw(positive)]}
    return {"kind": kind}


def _card(**overrides) -> dict:
    card = {
        "name": "t",
        "architecture": {"network": "BasicUNet", "args": {}},
        "weights": {"path": "t.safetensors"},
        "classes": ["background", "lesion"],
        "in_channels": 1,
        "spatial_dims": 2,
        "normalization": {"kind": "zscore"},
        "patch_size": [32, 32],
        "methods": {"softmax": {}},
        "default_method": "softmax",
    }
    card.update(overrides)
    return card


TD = {
    "data": "synthetic lesions",
    "synthetic": True,
    "n_images": 64,
    "spacing": [1.0, 1.0],
    "intensity_quantiles": {"0.01": -1.5, "0.05": -1.0, "0.5": -0.2, "0.95": 1.6, "0.99": 4.5},
}
REF = {
    "data": "held-out",
    "n_images": 32,
    "methods": {
        "softmax": {
            "predictive_entropy/mean": {
                "n": 32,
                "quantiles": {"0.05": 0.01, "0.5": 0.02, "0.95": 0.04, "0.99": 0.05},
            },
            "structure/volume_cov": {
                "n": 32,
                "quantiles": {"0.05": 0.0, "0.5": 0.0, "0.95": 0.0, "0.99": 0.0},
            },
        }
    },
}


def test_one_implementation_serves_engine_data_and_card():
    assert engine.normalize is data.normalize
    assert engine.parse_normalization is data.parse_normalization


@settings(max_examples=60, deadline=None)
@given(valid_specs())
def test_valid_specs_parse_idempotently_and_pass_card_validation(spec):
    parsed = engine.parse_normalization(spec)
    assert engine.parse_normalization(parsed) == parsed
    card = ModelCard.from_dict(_card(normalization=spec))
    assert ModelCard.from_dict(card.to_dict()).normalization == card.normalization


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"kind": "zscore", "mean": 0.0}, "normalization"),
        ({"kind": "zscore", "mean": 0.0, "std": 0.0}, "normalization.std"),
        ({"kind": "zscore", "mean": float("nan"), "std": 1.0}, "normalization.mean"),
        ({"kind": "percentile", "low": 99, "high": 1}, "normalization.low/high"),
        ({"kind": "percentile", "low": 1, "high": 99, "clip": "yes"}, "normalization.clip"),
        ({"kind": "window", "center": 40, "width": -1}, "normalization.width"),
        ({"kind": "window", "window": [5, 5]}, "normalization.window"),
        ({"kind": "window"}, "normalization: window needs"),
        ({"kind": "zscore", "offset": 1}, "normalization: unknown key"),
        ({"kind": "magic"}, "normalization: unknown normalization.kind"),
    ],
)
def test_bad_specs_name_the_field_in_engine_and_card(spec, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        engine.parse_normalization(spec)
    with pytest.raises(ModelCardError, match=f"^{field}"):
        ModelCard.from_dict(_card(normalization=spec))


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, (2, 6, 7), elements=st.floats(-100, 100, width=32)),
    st.floats(0.1, 50),
    st.floats(-500, 500),
)
def test_per_image_zscore_and_percentile_ignore_gain_and_offset(x, gain, offset):
    """What real images need: a camera gain / scanner offset does not change the network input."""
    if np.ptp(x, axis=(1, 2)).min() < 1e-2:
        return  # a flat channel has no contrast to preserve
    y = (gain * x.astype(np.float64) + offset).astype(np.float64)
    for spec in ({"kind": "zscore"}, {"kind": "percentile", "low": 2, "high": 98, "clip": True}):
        np.testing.assert_allclose(engine.normalize(y, spec), engine.normalize(x, spec), atol=2e-3)
    clipped = engine.normalize(x, {"kind": "percentile", "low": 5, "high": 95, "clip": True})
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_window_is_absolute_and_fixed_zscore_is_not_per_image():
    hu = np.array([[[-1000.0, 0.0, 40.0, 240.0, 3000.0]]])
    out = engine.normalize(hu, {"kind": "window", "center": 40, "width": 400})
    np.testing.assert_allclose(out[0, 0], [0, 0.4, 0.5, 1, 1])
    fixed = {"kind": "zscore", "mean": 1.0, "std": 2.0}
    np.testing.assert_allclose(engine.normalize(hu + 10, fixed), engine.normalize(hu, fixed) + 5)
    with pytest.raises(ValueError, match=r"^image: has more channels"):
        engine.normalize(np.zeros((3, 4, 4)), {"kind": "zscore", "mean": [0, 0], "std": [1, 1]})


def test_card_fields_round_trip_json_and_yaml(tmp_path):
    card = ModelCard.from_dict(_card(training_distribution=TD, reference=REF))
    assert card.training_distribution["synthetic"] is True
    assert card.reference["methods"]["softmax"]["predictive_entropy/mean"]["n"] == 32
    for suffix in (".json", ".yaml"):
        path = card.save(tmp_path / f"c{suffix}")
        from napari_probseg.models.cards import load_card

        back = load_card(path)
        assert back.training_distribution == TD and back.reference == REF
    plain = ModelCard.from_dict(_card())
    assert plain.training_distribution is None and plain.reference is None


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("training_distribution", {"synthetic": "yes"}),
        ("training_distribution.n_images", {"n_images": 0}),
        ("training_distribution.spacing", {"spacing": [1.0]}),
        ("training_distribution.intensity_quantiles", {"intensity_quantiles": {"0.5": 0.0}}),
        (
            "training_distribution.intensity_quantiles",
            {"intensity_quantiles": {"0.01": 1, "0.05": 0, "0.5": 0, "0.95": 1, "0.99": 2}},
        ),
    ],
)
def test_bad_training_distribution_names_the_field(field, change):
    td = {**TD, **change}
    with pytest.raises(ModelCardError, match=f"^{field}"):
        ModelCard.from_dict(_card(training_distribution=td))


@settings(max_examples=40, deadline=None)
@given(
    st.text(min_size=1, max_size=12).filter(lambda s: "/" not in s),
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=4, max_size=4),
    st.integers(-2, 40),
)
def test_reference_parser_accepts_exactly_the_contract(name, values, n):
    entry = {"n": n, "quantiles": dict(zip(("0.05", "0.5", "0.95", "0.99"), values))}
    ref = {"data": "x", "n_images": 3, "methods": {"softmax": {f"{name}/mean": entry}}}
    ok = n >= 1 and values == sorted(values)
    if ok:
        card = ModelCard.from_dict(_card(reference=ref))
        assert ModelCard.from_dict(card.to_dict()).reference == ref
    else:
        with pytest.raises(ModelCardError, match=r"^reference\.methods\.softmax"):
            ModelCard.from_dict(_card(reference=ref))
    with pytest.raises(ModelCardError, match=r"^reference\.methods\.softmax"):
        bad = {"data": "x", "n_images": 3, "methods": {"softmax": {name: entry}}}
        ModelCard.from_dict(_card(reference=bad))


@pytest.mark.parametrize(
    ("verdict_choice", "field"),
    [
        ({"softmax": {"epistemic": "predictive_entropy/mean"}}, None),
        (
            {"softmax": {"epistemic": "structure/volume_cov"}},
            r"reference\.verdict\.softmax\.epistemic",
        ),
        ({"ensemble": {"epistemic": "predictive_entropy/mean"}}, r"reference\.verdict\.ensemble"),
        ({"softmax": "predictive_entropy/mean"}, r"reference\.verdict\.softmax"),
        (["softmax"], r"reference\.verdict"),
        (
            {"softmax": {"epistemic": "predictive_entropy/mean", "aleatoric": "x/mean"}},
            r"reference\.verdict\.softmax\.aleatoric",
        ),
    ],
)
def test_reference_verdict_choice_names_known_scores(verdict_choice, field):
    entry = {"n": 3, "quantiles": {"0.05": 0.0, "0.5": 0.1, "0.95": 0.2, "0.99": 0.3}}
    ref = {
        "data": "x",
        "n_images": 3,
        "methods": {"softmax": {"predictive_entropy/mean": entry}},
        "verdict": verdict_choice,
    }
    if field is None:
        assert ModelCard.from_dict(_card(reference=ref)).reference["verdict"] == verdict_choice
    else:
        with pytest.raises(ModelCardError, match=f"^{field}"):
            ModelCard.from_dict(_card(reference=ref))
