"""Evaluation of stored runs (napari_probseg.evaluation) on real zarr stores, known answers."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest

from model_helpers import tiny_card
from napari_probseg.core.calibration import calibration, fit_temperature
from napari_probseg.evaluation import (
    calibrate_card,
    evaluate_store,
    format_table,
    load_run,
    parse_reference,
    predict_store,
    save_run,
    write_plots,
)
from napari_probseg.store import ProjectStore

SHAPE = (32, 32)
BOXES = [(8, 20), (8, 22), (10, 20)]  # rater r0, r1, r2: squares [lo:hi, lo:hi]


def _box(lo: int, hi: int, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[lo:hi, lo:hi] = 1
    return m


def _raters() -> np.ndarray:
    return np.stack([_box(lo, hi) for lo, hi in BOXES])


@pytest.fixture
def store(tmp_path):
    """Two images, three raters each (r0, r1, r2 squares of different sizes)."""
    s = ProjectStore.create(tmp_path / "p.zarr", class_names=["background", "lesion"])
    rng = np.random.default_rng(0)
    for iid in ("a", "b"):
        s.add_image(rng.normal(size=SHAPE).astype(np.float32), image_id=iid)
        for j, m in enumerate(_raters()):
            s.save_annotation(iid, f"r{j}", m, role="expert")
    return s


def _soft(masks: np.ndarray) -> np.ndarray:
    f = masks.mean(axis=0)
    return np.stack([1 - f, f])


def _pairwise_dice(masks: np.ndarray) -> float:
    vals = [2 * np.sum(a & b) / (a.sum() + b.sum()) for a, b in combinations(masks.astype(bool), 2)]
    return float(np.mean(vals))


def test_samples_equal_to_raters_give_ged_zero_hm_iou_one(store):
    m = _raters()
    for iid in ("a", "b"):
        store.save_prediction(iid, {"samples": m, "probs": _soft(m)}, {"method": "hand"})
    ev = evaluate_store(store, reference="soft")
    assert [e.image_id for e in ev.images] == ["a", "b"]
    for e in ev.images:
        v = e.values
        assert abs(v["ged"]) < 1e-12
        assert v["hm_iou"] == pytest.approx(1.0)
        assert v["ncc"] == pytest.approx(1.0)
        # soft reference = the probabilities: expected agreement equals confidence in every bin
        assert v["ece"] == pytest.approx(0.0, abs=1e-7)
        assert v["pairwise_dice"] == pytest.approx(_pairwise_dice(m))
        vol = m.reshape(3, -1).sum(1)
        assert v["volume_cov"] == pytest.approx(vol.std() / vol.mean())
        assert e.n_samples == 3 and e.raters == ["r0", "r1", "r2"]
        assert e.method == "hand" and e.probs_from == "probs"
    assert ev.means["ged"].mean == pytest.approx(0.0, abs=1e-12)
    assert ev.means["mean_mutual_information"].n_nan == 2  # not stored by the hand-made run


@pytest.mark.parametrize(
    ("reference", "accuracy"),
    [
        ("majority", lambda m: (m.sum(0) >= 2).mean()),
        ("soft", lambda m: m.mean()),
        ("rater:r1", lambda m: m[1].mean()),
        ("all", lambda m: m.mean()),
    ],
)
def test_constant_probability_ece_per_reference(store, reference, accuracy):
    # p(lesion) = 0.8 everywhere: every pixel predicts lesion with confidence 0.8, one bin, so
    # ECE = MCE = ACE = |accuracy - 0.8| with accuracy the lesion share of the reference.
    m = _raters()
    probs = np.stack([np.full(SHAPE, 0.2), np.full(SHAPE, 0.8)])
    store.save_prediction("a", {"samples": m, "probs": probs}, {"method": "const"})
    ev = evaluate_store(store, reference=reference, image_ids=["a"])
    expected = abs(accuracy(m) - 0.8)
    v = ev.images[0].values
    assert v["ece"] == pytest.approx(expected)
    assert v["mce"] == pytest.approx(expected)
    assert v["ace"] == pytest.approx(expected)
    assert v["adaptive_ece"] == pytest.approx(expected)
    assert ev.calibration.ece == pytest.approx(expected)
    assert ev.reference["mode"] == reference


def test_dataset_calibration_is_merged_pixels_and_nan_counted(store):
    m = _raters()
    rng = np.random.default_rng(1)
    pa = rng.uniform(0, 1, SHAPE)
    pb = rng.uniform(0, 1, SHAPE)
    same = np.stack([m[0]] * 3)  # all samples agree: constant variance map -> NCC NaN
    store.save_prediction("a", {"samples": m, "probs": np.stack([1 - pa, pa])})
    store.save_prediction("b", {"samples": same, "probs": np.stack([1 - pb, pb])})
    ev = evaluate_store(store, reference="majority")
    maj = (m.sum(0) >= 2).astype(np.uint8)
    pooled = np.stack([np.concatenate([1 - pa, 1 - pb]), np.concatenate([pa, pb])])
    ref = calibration(pooled.astype(np.float32), np.concatenate([maj, maj]))
    assert ev.calibration.ece == pytest.approx(ref.ece, abs=1e-6)
    assert ev.calibration.n_pixels == 2 * SHAPE[0] * SHAPE[1]
    assert math.isnan(ev.images[1].values["ncc"])
    assert ev.means["ncc"].n == 1 and ev.means["ncc"].n_nan == 1
    assert ev.means["ncc"].mean == pytest.approx(ev.images[0].values["ncc"])
    assert math.isnan(ev.images[1].values["pairwise_dice"]) is False
    assert ev.images[1].values["pairwise_dice"] == pytest.approx(1.0)


def test_aurc_ranks_by_aggregated_uncertainty(store):
    # Image a: confident and right (risk 0). Image b: unsure and wrong (risk 1): perfect ranking.
    m = _raters()
    maj = (m.sum(0) >= 2).astype(np.uint8)
    sure = np.stack([1.0 - maj, maj.astype(float)]) * 0.98 + 0.01
    wrong = 1 - maj
    unsure = np.stack([1.0 - wrong, wrong.astype(float)]) * 0.4 + 0.3
    store.save_prediction("a", {"samples": m, "probs": sure})
    store.save_prediction("b", {"samples": m, "probs": unsure})
    ev = evaluate_store(store, aggregation="mean")
    assert ev.images[0].values["dice"] == pytest.approx(1.0)
    assert ev.images[1].values["dice"] == pytest.approx(0.0)
    assert ev.aurc.e_aurc == pytest.approx(0.0)
    assert ev.aurc.aurc == pytest.approx((0 + 0.5) / 2)
    assert "mean of the predictive entropy" in ev.aurc_info["confidence"]
    ev2 = evaluate_store(store, aggregation="patch_max")
    assert ev2.images[0].uncertainty["aggregation"] == "patch_max"


def test_pavpu_counts_match_definition(store):
    m = _raters()
    maj = (m.sum(0) >= 2).astype(np.uint8)
    probs = np.stack([1.0 - maj, maj.astype(float)]) * 0.98 + 0.01
    store.save_prediction("a", {"samples": m, "probs": probs})
    ev = evaluate_store(store)
    pv = ev.images[0].pavpu
    # prediction == majority everywhere and entropy(0.99) < 0.25 ln 2: all 64 patches accurate-certain
    assert (pv["n_ac"], pv["n_au"], pv["n_ic"], pv["n_iu"]) == (64, 0, 0, 0)
    assert ev.images[0].values["pavpu"] == 1.0


def test_latest_run_by_default_and_run_selects(store):
    m = _raters()
    store.save_prediction("a", {"samples": m, "probs": _soft(m)}, {"method": "old"}, run_id="r1")
    store.save_prediction("a", {"samples": m[:1]}, {"method": "new"}, run_id="r2")
    ev = evaluate_store(store)
    assert [e.image_id for e in ev.images] == ["a"]
    assert ev.images[0].run_id == "r2" and ev.images[0].method == "new"
    assert ev.images[0].probs_from == "samples"  # no probabilities stored: sample frequencies
    assert ev.skipped == [{"image_id": "b", "reason": "has no prediction run"}]
    ev = evaluate_store(store, run="r1")
    assert ev.images[0].method == "old"


def test_bad_input_raises_naming_the_argument(store):
    with pytest.raises(ValueError, match=r"^store: nothing to evaluate"):
        evaluate_store(store)
    m = _raters()
    store.save_prediction("a", {"samples": m, "probs": _soft(m)})
    with pytest.raises(ValueError, match=r"^image_ids: 'b' has no prediction run"):
        evaluate_store(store, image_ids=["a", "b"])
    with pytest.raises(ValueError, match=r"^image_ids: no image 'zz'"):
        evaluate_store(store, image_ids=["zz"])
    with pytest.raises(ValueError, match=r"^reference:"):
        evaluate_store(store, reference="median")
    with pytest.raises(ValueError, match=r"^image_ids: 'a' has no annotation by rater 'x'"):
        evaluate_store(store, image_ids=["a"], reference="rater:x")
    with pytest.raises(ValueError, match=r"^n_bins"):
        evaluate_store(store, n_bins=0)
    assert parse_reference("rater:r0") == ("rater", "r0")
    with pytest.raises(ValueError, match=r"^reference"):
        parse_reference("rater:")


def test_json_schema_and_table(store):
    m = _raters()
    for iid in ("a", "b"):
        store.save_prediction(iid, {"samples": m, "probs": _soft(m)}, {"method": "hand"})
    ev = evaluate_store(store, curves=True)
    data = json.loads(json.dumps(ev.to_dict(), allow_nan=False))
    assert set(data) >= {"store", "reference", "settings", "images", "skipped", "dataset", "curves"}
    img = data["images"][0]
    assert set(img["metrics"]) >= {
        "ece", "mce", "ace", "adaptive_ece", "ged", "ged_unbiased", "hm_iou", "ncc", "pavpu",
        "pairwise_dice", "volume_cov", "dice",
    }  # fmt: skip
    assert img["n_samples"] == 3 and img["n_raters"] == 3 and img["method"] == "hand"
    ds = data["dataset"]
    assert ds["n_images"] == 2 and len(ds["calibration"]["bins"]["counts"]) == 15
    assert ds["means"]["ncc"]["n_nan"] == 0 and ds["aurc"]["aggregation"] == "mean"
    assert data["curves"]["ged_vs_n"]["n"] == [1, 2, 3]
    assert data["curves"]["ged_vs_n"]["ged"][-1] == pytest.approx(0.0, abs=1e-12)
    abl = data["curves"]["rater_ablation"]
    assert abl["n_raters"] == [1, 2, 3] and abl["hm_iou"][-1] == pytest.approx(1.0)
    assert abl["n_subsets"] == [3, 3, 1]
    table = format_table(ev)
    assert "GED16" in table and "HM-IoU16" in table and "AURC" in table
    assert table.count("\n") > 6


def test_plots_written_as_png_and_svg(store, tmp_path):
    m = _raters()
    for iid in ("a", "b"):
        store.save_prediction(iid, {"samples": m, "probs": _soft(m)}, {"method": "hand"})
    files = write_plots(evaluate_store(store, curves=True), tmp_path / "plots")
    names = sorted(f.name for f in files)
    assert names == sorted(
        f"{s}.{e}" for s in ("reliability", "ged_vs_n", "rater_ablation") for e in ("png", "svg")
    )
    for f in files:
        head = f.read_bytes()[:8]
        assert f.stat().st_size > 1000
        assert head.startswith(b"\x89PNG") if f.suffix == ".png" else b"<?xml" in head


# ------------------------------------------------------------------ engine runs and temperature


def _tiny_card(folder, *, scale: float = 1.0):
    """A tiny 2D BasicUNet card (softmax, mc_dropout) with random weights in ``folder``."""
    from napari_probseg.models import resolve_card

    path = tiny_card(
        folder, name="tiny2d", dropout=0.2, temperature=1.5, spacing=[1.0, 1.0], final_scale=scale
    )
    return resolve_card(path)


def test_predict_store_saves_engine_runs_that_load_and_evaluate(store, tmp_path):
    card = _tiny_card(tmp_path / "models")
    runs = predict_store(store, card.path, "mc_dropout", n_samples=4, seed=3, run_id="mc")
    assert runs == {"a": "mc", "b": "mc"}
    data = load_run(store, "a")
    assert data.run_id == "mc" and data.method == "mc_dropout" and data.source == ("parameter",)
    assert data.samples.shape == (4, *SHAPE) and data.probs.shape == (2, *SHAPE)
    assert data.probs_from == "mean_probs"
    assert set(data.maps) >= {"predictive_entropy", "mutual_information", "expected_entropy"}
    assert data.metadata["meanings"]["mutual_information"] == "epistemic"
    assert len(data.metadata["volumes"]) == 4
    ev = evaluate_store(store, run="mc", reference="all")
    assert ev.methods == ["mc_dropout"] and ev.images[0].n_samples == 4
    assert ev.images[0].values["mean_mutual_information"] >= 0
    # a run whose input signature is not the stored image is refused
    from napari_probseg import engine
    from napari_probseg.models import load_method

    other = np.zeros(SHAPE, np.float32)
    res = engine.run_prediction(other, load_method(card.path, "softmax"), n_samples=1)
    save_run(store, "a", res, run_id="stale")
    with pytest.raises(ValueError, match=r"^run: run 'stale' of 'a' was computed from another"):
        evaluate_store(store, run="stale", image_ids=["a"])


def test_temperature_from_log_probabilities_recovers_known_t():
    # Labels drawn from softmax(z / T); fitting on log softmax(z) (what calibrate_card sees
    # instead of z) recovers T, since log p differs from z by a per-pixel constant.
    rng = np.random.default_rng(0)
    z = rng.normal(scale=4.0, size=(3, 40000))
    t_true = 2.5
    p_true = np.exp(z / t_true) / np.exp(z / t_true).sum(0)
    y = (rng.random(z.shape[1])[None] > np.cumsum(p_true, 0)).sum(0)
    logp = z - np.log(np.exp(z).sum(0))
    fit = fit_temperature(logp, y)
    assert fit.temperature == pytest.approx(t_true, rel=0.05)
    assert fit.temperature == pytest.approx(fit_temperature(z, y).temperature, rel=1e-6)
    assert fit.ece_after < fit.ece_before


def test_calibrate_card_recovers_t_and_writes_loadable_card(tmp_path):
    from napari_probseg import engine
    from napari_probseg.models import load_method, resolve_card

    card = _tiny_card(tmp_path / "models", scale=20.0)
    s = ProjectStore.create(tmp_path / "t.zarr", class_names=["background", "lesion"])
    unit = load_method(card.path, "softmax")
    unit.temperature = 1.0
    rng = np.random.default_rng(1)
    t_true = 3.0
    for i in range(2):
        img = rng.normal(size=(48, 48)).astype(np.float32)
        s.add_image(img, image_id=f"i{i}")
        p = engine.run_prediction(img, unit, n_samples=1).maps.mean_probs.astype(np.float64)
        q = np.exp(np.log(np.clip(p, 1e-30, 1)) / t_true)
        q /= q.sum(0)
        for r in range(4):  # raters drawn from the tempered distribution
            mask = (rng.random(img.shape) < q[1]).astype(np.uint8)
            s.save_annotation(f"i{i}", f"r{r}", mask, role="expert")
    out = tmp_path / "cards" / "cal.json"
    rep = calibrate_card(s, card.path, out, reference="all")
    assert rep.temperature == pytest.approx(t_true, rel=0.15)
    assert rep.previous_temperature == 1.5 and rep.n_images == 2
    assert rep.n_pixels == 2 * 4 * 48 * 48
    assert rep.ece_after < rep.ece_t1
    new = resolve_card(out)
    assert new.name == "tiny2d-calibrated"
    assert new.methods["softmax"]["temperature"] == pytest.approx(rep.temperature, rel=1e-5)
    assert new.metrics["temperature_scaling"]["ece_after"] == pytest.approx(rep.ece_after)
    m = load_method(new, "softmax")  # weights resolve from the new folder (relinked path)
    assert m.temperature == pytest.approx(rep.temperature, rel=1e-5)
    with pytest.raises(ValueError, match=r"^out: .* exists"):
        calibrate_card(s, card.path, out)
