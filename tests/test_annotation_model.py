"""Qt-free rules of the annotation panel: identifiers, sessions (tools, time, drafts), blind mode,
autosave bookkeeping, never-lose saving, and agreement (Dice matrix from its definition)."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_probseg._napari._annotation_model import (
    AutosavePolicy,
    EditSession,
    agreement,
    blind_action,
    can_see_others,
    dice_matrix,
    edit_start,
    hypothesis_source,
    run_id_from_metadata,
    sanitize_identifier,
    save_or_keep,
    visible_raters,
)
from napari_probseg.store import ProjectStore, validate_identifier


class FakeClock:
    """A settable monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    s = ProjectStore.create(tmp_path / "p.zarr")
    s.add_image(np.zeros((6, 8), np.uint8), image_id="img", scale=(0.5, 2.0))
    return s


def test_model_imports_no_qt_or_napari():
    import subprocess

    code = (
        "import sys; import napari_probseg._napari._annotation_model as m; "
        "bad = [k for k in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6') if k in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("case 01 · T1w", "case_01_T1w"),
        ("../../etc/passwd", "etc_passwd"),
        ("...", "image"),
        ("CON", "CON_img"),
        ("a" * 100, "a" * 64),
    ],
)
def test_sanitize_identifier_known_answers(name, expected):
    assert sanitize_identifier(name) == expected


@given(st.text(max_size=120))
def test_sanitize_identifier_is_always_valid(name):
    assert validate_identifier(sanitize_identifier(name), "x")


def test_hypothesis_source_from_review_metadata():
    prov = {"seed": 3, "created": "2025-01-02T03:04:05.678+00:00", "card_sha256": "abc"}
    meta = {
        "probseg": {
            "what": "annotation",
            "method": "mc_dropout",
            "n_samples": 8,
            "provenance": prov,
            "origin": "sample 5",
            "kind": "sample",
            "index": 5,
            "input_signature": "sig",
        }
    }
    src = hypothesis_source(meta)
    assert src["source_run"] == "mc_dropout-seed3-20250102030405678000"
    assert src["source_sample"] == 5
    assert src["extra"]["source_mask"] == "sample 5" and src["extra"]["card_sha256"] == "abc"
    meta["probseg"].update(kind="hypothesis", index=2, origin="hypothesis 2")
    assert hypothesis_source(meta)["source_sample"] is None  # a hypothesis is not one sample
    meta["probseg"]["run_id"] = "run-42"
    assert run_id_from_metadata(meta) == "run-42"
    assert run_id_from_metadata({}) is None


def test_session_tools_time_and_save_kwargs():
    clock = FakeClock()
    s = EditSession(image_id="img", rater="alice", role="expert", origin="hypothesis", clock=clock)
    assert s.tools == ["accepted_hypothesis"] and not s.dirty
    s.record_paint("pan_zoom")  # not a tool, but the data changed
    assert s.dirty and s.tools == ["accepted_hypothesis"]
    for mode in ("paint", "fill", "paint", "erase", "polygon"):
        s.record_paint(mode)
    assert s.tools == ["accepted_hypothesis", "brush", "fill", "eraser", "polygon"]
    clock.t += 90.5
    kw = s.save_kwargs("done")
    assert kw["time_spent_s"] == pytest.approx(90.5) and kw["note"] == "done"
    assert kw["tools"] == ("accepted_hypothesis", "brush", "fill", "eraser", "polygon")
    assert kw["extra"]["origin"] == "hypothesis"
    with pytest.raises(ValueError, match=r"^origin"):
        EditSession(image_id="img", rater="alice", role="expert", origin="magic")
    with pytest.raises(ValueError, match=r"^rater"):
        EditSession(image_id="img", rater="../x", role="expert")


def test_session_round_trips_through_a_draft(store):
    clock = FakeClock()
    s = EditSession(
        image_id="img",
        rater="bob",
        role="resident",
        origin="consensus",
        clock=clock,
        source_run="run-1",
        source_sample=2,
    )
    s.record_paint("paint")
    clock.t += 40
    mask = np.eye(6, 8, dtype=np.uint8)
    draft = store.save_draft("img", "bob", mask, extra=s.draft_extra("wip"))
    clock.t += 1000  # the crash: time after the draft is not counted
    back = EditSession.from_draft(store.load_draft("img", "bob")[1], role="other", clock=clock)
    assert back.origin == "draft" and back.role == "resident"
    assert back.tools == ["consensus", "brush"]
    assert (back.source_run, back.source_sample) == ("run-1", 2)
    assert back.time_spent_s() == pytest.approx(40)
    clock.t += 5
    assert back.time_spent_s() == pytest.approx(45)
    assert back.extra["recovered_draft"] == draft.saved


def test_blind_mode_rules(store):
    assert can_see_others(blind=False, own_versions=0)
    assert not can_see_others(blind=True, own_versions=0)
    assert can_see_others(blind=True, own_versions=1)
    store.save_annotation("img", "alice", np.ones((6, 8), np.uint8), role="expert")
    assert visible_raters(store, "img", "bob", blind=True) == []
    assert visible_raters(store, "img", "bob", blind=False) == ["alice"]
    store.save_annotation("img", "bob", np.zeros((6, 8), np.uint8), role="trainee")
    assert visible_raters(store, "img", "bob", blind=True) == ["alice", "bob"]


def test_blind_action_known_answers():
    def meta(what, image="img", rater=None):
        return {"probseg": {"what": what, "image_id": image, "rater": rater}}

    assert blind_action(meta("store-annotation", rater="alice"), "img", "bob") == "remove"
    assert blind_action(meta("store-annotation", rater="bob"), "img", "bob") is None
    assert blind_action(meta("store-annotation", "other", "alice"), "img", "bob") is None
    assert blind_action(meta("store-agreement"), "img", "bob") == "remove"
    assert blind_action(meta("store-edit", rater="alice"), "img", "bob") == "hide"
    assert blind_action(meta("store-image"), "img", "bob") is None
    assert blind_action({}, "img", "bob") is None


def test_edit_start_origins(store):
    a = np.zeros((6, 8), np.uint8)
    a[:3] = 1
    mask, kw = edit_start(store, "img", "bob", "empty", blind=True)
    assert not mask.any() and kw == {"parent_version": None}
    with pytest.raises(ValueError, match=r"^origin: you have no saved version"):
        edit_start(store, "img", "bob", "version", blind=True)
    with pytest.raises(ValueError, match=r"^origin: no rater"):
        edit_start(store, "img", "bob", "consensus", blind=False)
    for rater in ("alice", "carol"):
        store.save_annotation("img", rater, a, role="expert")
    store.save_annotation("img", "dan", np.zeros_like(a), role="expert")
    with pytest.raises(ValueError, match=r"^origin: blind mode"):
        edit_start(store, "img", "bob", "consensus", blind=True)
    mask, kw = edit_start(store, "img", "bob", "consensus", blind=False)
    np.testing.assert_array_equal(mask, a)  # 2 of 3 raters
    assert kw["extra"]["consensus_of"] == ["alice", "carol", "dan"]
    mask, kw = edit_start(store, "img", "alice", "version", blind=True)
    np.testing.assert_array_equal(mask, a)
    assert kw["parent_version"] == 1
    meta = {"probseg": {"what": "annotation", "method": "ssn", "kind": "sample", "index": 1}}
    mask, kw = edit_start(
        store, "img", "bob", "hypothesis", blind=True, hypothesis=(a, meta, "img · annotation")
    )
    assert mask is None and (kw["source_run"], kw["source_sample"]) == ("ssn", 1)
    with pytest.raises(ValueError, match=r"^hypothesis: layer"):
        edit_start(store, "img", "bob", "hypothesis", blind=True, hypothesis=(a[:2], meta, "x"))
    with pytest.raises(ValueError, match=r"^origin: expected"):
        edit_start(store, "img", "bob", "magic", blind=True)


def test_autosave_policy():
    p = AutosavePolicy(interval_s=120)
    assert p.interval_ms == 120_000
    s = EditSession(image_id="img", rater="a", role="expert")
    assert not p.should_save(None) and not p.should_save(s)
    s.dirty = True
    assert p.should_save(s)
    p.enabled = False
    assert not p.should_save(s)
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(ValueError, match=r"^seconds"):
            p.set_interval(bad)


def test_save_or_keep_commits_then_versions_grow(store):
    s = EditSession(image_id="img", rater="alice", role="expert", source_run="r1")
    s.record_paint("paint")
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 2:5] = 1
    out = save_or_keep(store, s, mask, note="first")
    assert out.committed and out.version.version == 1 and out.error is None
    assert not s.dirty and s.parent_version == 1
    assert out.version.tools == ("brush",) and out.version.source_run == "r1"
    out2 = save_or_keep(store, s, mask * 2)
    assert out2.version.version == 2 and not out2.version.conflict
    assert [v.version for v in store.history("img", "alice")] == [1, 2]


def test_save_or_keep_falls_back_to_a_recovery_file(store, tmp_path):
    """A damaged history makes both the commit and the draft fail: the mask goes to a file."""
    store.save_annotation("img", "alice", np.zeros((6, 8), np.uint8), role="expert")
    manifest = store.path / "images" / "img" / "annotations" / "alice" / "zarr.json"
    manifest.write_text("{ not json")
    s = EditSession(image_id="img", rater="alice", role="expert", parent_version=1)
    mask = np.arange(48, dtype=np.uint8).reshape(6, 8) % 3
    out = save_or_keep(store, s, mask, recovery_dir=tmp_path / "rescue")
    assert not out.committed and out.draft is None
    assert "StoreCorruptionError" in out.error and "draft failed too" in out.error
    np.testing.assert_array_equal(np.load(out.recovery_path), mask)


def test_save_or_keep_falls_back_to_a_draft(store):
    """A commit the store refuses (the declared parent version does not exist) keeps the work
    as a draft."""
    s = EditSession(image_id="img", rater="alice", role="expert", parent_version=7)
    mask = np.ones((6, 8), np.uint8)
    out = save_or_keep(store, s, mask)  # parent_version 7 does not exist: the commit fails
    assert not out.committed and out.draft is not None and "parent_version" in out.error
    np.testing.assert_array_equal(store.load_draft("img", "alice")[0], mask)
    assert store.history("img", "alice") == []


def _dice_by_definition(a: np.ndarray, b: np.ndarray) -> float:
    classes = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    scores = []
    for c in classes:
        x, y = a == c, b == c
        if x.sum() + y.sum():
            scores.append(2 * (x & y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores)) if scores else 1.0


def test_agreement_known_answer():
    a = np.zeros((4, 4), np.uint8)
    a[0, 0:4] = 1  # 4 pixels
    b = np.zeros((4, 4), np.uint8)
    b[0, 0:2] = 1
    b[1, 0:2] = 1  # 2 shared with a
    c = np.zeros((4, 4), np.uint8)  # empty
    res = agreement({"a": a, "b": b, "c": c})
    expected = np.array([[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(res.dice, expected)
    assert res.mean_pairwise_dice == pytest.approx(0.5 / 3)
    # majority (2 of 3): only the 2 pixels a and b share
    np.testing.assert_array_equal(res.majority, (a & b))
    np.testing.assert_allclose(res.soft[0, :2], 2 / 3)
    np.testing.assert_allclose(res.soft[1, :2], 1 / 3)
    assert res.soft[3, 3] == 0 and res.soft.dtype == np.float32
    # disagreement: all 6 marked pixels differ between raters (c is empty) -> 6 of 16
    assert res.disagreement == pytest.approx(6 / 16)
    assert res.disagreement_foreground == pytest.approx(1.0)
    empty = agreement({"x": c, "y": c})
    assert empty.dice[0, 1] == 1 and np.isnan(empty.disagreement_foreground)
    with pytest.raises(ValueError, match=r"^masks"):
        agreement({"x": a, "y": a[:2]})
    with pytest.raises(ValueError, match=r"^masks"):
        agreement({})
    assert "Raters disagree on 37.50% of all voxels (100.0% of the voxels" in res.summary()


@given(arrays(np.uint8, (4, 5, 6), elements=st.integers(0, 3)))
def test_dice_matrix_matches_definition(masks):
    d = dice_matrix(masks)
    assert d.shape == (4, 4)
    np.testing.assert_allclose(d, d.T)
    np.testing.assert_allclose(np.diag(d), 1.0)
    for i, j in itertools.combinations(range(4), 2):
        assert d[i, j] == pytest.approx(_dice_by_definition(masks[i], masks[j]))


def test_agreement_is_computed_in_core():
    from napari_probseg._napari import _annotation_model
    from napari_probseg.core import agreement as core_agreement

    assert _annotation_model.agreement is core_agreement.agreement
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    a[:2, :2] = 1
    b[:2, :1] = 1
    np.testing.assert_allclose(core_agreement.dice_matrix(np.stack([a, b]))[0, 1], 2 * 2 / (4 + 2))
