"""ProjectStore on real zarr stores on disk: round trips, OME-Zarr reading, ids, corruption."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from napari_probseg.store import (
    AnnotationVersion,
    InvalidIdentifierError,
    ProjectStore,
    StoreCorruptionError,
    StoreError,
    StoreVersionError,
    validate_identifier,
)


@pytest.fixture
def image3d():
    rng = np.random.default_rng(0)
    return rng.normal(size=(12, 40, 48)).astype(np.float32)


@pytest.fixture
def store(tmp_path, image3d):
    s = ProjectStore.create(tmp_path / "p.zarr", class_names=["background", "lesion", "edema"])
    s.add_image(image3d, image_id="case1", scale=(2.0, 0.5, 0.25), metadata={"modality": "CT"})
    return s


def blob(shape, center, radius, label=1):
    grid = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return np.where(d2 <= radius**2, label, 0).astype(np.uint8)


def test_image_round_trip_and_reopen(store, image3d, tmp_path):
    data, scale = store.read_image("case1")
    np.testing.assert_array_equal(data, image3d)
    assert scale == (2.0, 0.5, 0.25)
    store.add_image(np.arange(30 * 20, dtype=np.uint16).reshape(30, 20), image_id="slice_2d")
    again = ProjectStore.open(tmp_path / "p.zarr", mode="r")
    assert again.image_ids() == ["case1", "slice_2d"]
    assert again.image_info("case1")["metadata"] == {"modality": "CT"}
    assert again.class_names == ["background", "lesion", "edema"]
    data2, scale2 = again.read_image("slice_2d")
    assert data2.shape == (30, 20) and scale2 == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"^image_id: 'case1' already exists"):
        store.add_image(image3d, image_id="case1")
    with pytest.raises(ValueError, match=r"^data:"):
        store.add_image(np.zeros((2, 3, 4, 5)), image_id="four_d")
    with pytest.raises(ValueError, match=r"^scale:"):
        store.add_image(image3d, image_id="bad_scale", scale=(1, 0, 1))
    with pytest.raises(StoreError, match=r"read-only"):
        again.add_image(image3d, image_id="nope")


def test_annotation_versions_history_and_metadata(store):
    shape = (12, 40, 48)
    m1 = blob(shape, (6, 20, 24), 5)
    v1 = store.save_annotation(
        "case1",
        "alice",
        m1,
        role="expert",
        tools=["brush", "fill"],
        time_spent_s=12.5,
        source_run="run-1",
        source_sample=3,
        note="first pass",
    )
    assert isinstance(v1, AnnotationVersion)
    assert (v1.version, v1.previous, v1.based_on, v1.conflict) == (1, None, None, False)
    assert v1.labels == (0, 1) and v1.shape == shape and v1.created.endswith("+00:00")
    m2 = m1.copy()
    m2[6, 5:10, 5:10] = 2
    v2 = store.save_annotation(
        "case1", "alice", m2.astype(np.int64), role="expert", parent_version=1
    )
    assert (v2.version, v2.previous, v2.based_on, v2.conflict) == (2, 1, 1, False)
    assert v2.parent_version == 1
    store.save_annotation("case1", "bob", m1.astype(bool), role="trainee", tools="polygon")
    assert store.raters("case1") == ["alice", "bob"]

    mask, rec = store.latest("case1", "alice")
    np.testing.assert_array_equal(mask, m2)
    assert rec == v2 and mask.dtype == np.uint8
    old, rec1 = store.read_version("case1", "alice", 1)
    np.testing.assert_array_equal(old, m1)
    assert rec1.tools == ("brush", "fill") and rec1.source_sample == 3 and rec1.note == "first pass"
    assert [v.rater for v in store.history("case1")] == ["alice", "alice", "bob"]
    assert [v.version for v in store.history("case1", "alice")] == [1, 2]
    # JSON round trip of the record
    assert AnnotationVersion.from_dict(json.loads(json.dumps(v1.to_dict()))) == v1

    with pytest.raises(ValueError, match=r"^role:"):
        store.save_annotation("case1", "alice", m1, role="boss")
    with pytest.raises(ValueError, match=r"^mask: expected the image's shape"):
        store.save_annotation("case1", "alice", m1[:, :10], role="expert")
    with pytest.raises(ValueError, match=r"^mask: labels must be >= 0"):
        store.save_annotation("case1", "alice", -m1.astype(np.int8), role="expert")
    with pytest.raises(ValueError, match=r"^parent_version: rater 'alice' has no version 7"):
        store.save_annotation("case1", "alice", m1, role="expert", parent_version=7)
    with pytest.raises(ValueError, match=r"^time_spent_s:"):
        store.save_annotation("case1", "alice", m1, role="expert", time_spent_s=-1)
    with pytest.raises(ValueError, match=r"^version:"):
        store.read_version("case1", "alice", 3)
    with pytest.raises(ValueError, match=r"^rater: 'carol' has no annotation"):
        store.latest("case1", "carol")
    with pytest.raises(ValueError, match=r"^image_id: no image 'nope'"):
        store.latest("nope", "alice")


def test_stale_edit_becomes_conflicting_version(store):
    shape = (12, 40, 48)
    a = blob(shape, (6, 20, 24), 5)
    store.save_annotation("case1", "alice", a, role="expert")
    # two editors both started from version 1
    store.save_annotation("case1", "alice", a * 0, role="expert", parent_version=1)
    v3 = store.save_annotation("case1", "alice", a, role="expert", parent_version=1)
    assert (v3.version, v3.based_on, v3.previous, v3.conflict) == (3, 1, 2, True)
    # both edits are kept
    assert store.read_version("case1", "alice", 2)[0].sum() == 0
    np.testing.assert_array_equal(store.read_version("case1", "alice", 3)[0], a)
    # saving without naming a parent while versions exist is flagged too
    assert store.save_annotation("case1", "alice", a, role="expert").conflict


def test_ome_zarr_reader_finds_one_label_image_per_rater(store):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Labels, Multiscales, Reader

    shape = (12, 40, 48)
    masks = {
        r: blob(shape, (6, 20, 10 + 10 * i), 4) for i, r in enumerate(["alice", "bob", "c.d-e_f"])
    }
    for r, m in masks.items():
        store.save_annotation("case1", r, m, role="resident")
    store.save_annotation("case1", "alice", masks["bob"], role="resident", parent_version=1)
    masks["alice"] = masks["bob"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray entry confuses zarr's hierarchy listing
        nodes = list(Reader(parse_url(str(store.path / "images" / "case1")))())
    image = nodes[0]
    assert any(isinstance(s, Multiscales) for s in image.specs)
    image_ms = next(s for s in image.specs if isinstance(s, Multiscales))
    assert image_ms.lookup("version", None) in ("0.5", None)
    assert [a["name"] for a in image.metadata["axes"]] == ["z", "y", "x"]
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == [2.0, 0.5, 0.25]
    labels = [n for n in nodes if any(isinstance(s, Labels) for s in n.specs)]
    assert len(labels) == 1
    label_nodes = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    found = {n.metadata["name"]: np.asarray(n.data[0]) for n in label_nodes}
    assert sorted(found) == sorted(masks)
    for r, m in masks.items():
        np.testing.assert_array_equal(found[r], m)
    # the OME attributes follow 0.5: everything under "ome", with a version
    attrs = json.loads((store.path / "images/case1/labels/zarr.json").read_text())["attributes"]
    assert attrs["ome"] == {"version": "0.5", "labels": sorted(masks)}
    label_attrs = json.loads((store.path / "images/case1/labels/alice/zarr.json").read_text())
    assert "image-label" in label_attrs["attributes"]["ome"]
    assert label_attrs["attributes"]["probseg"]["version"] == 2


def test_only_changed_chunks_are_written(tmp_path):
    shape = (64, 128, 128)
    s = ProjectStore.create(tmp_path / "big.zarr")
    s.add_image(np.zeros(shape, np.uint8), image_id="vol", label_chunks=(8, 64, 64))
    rng = np.random.default_rng(1)
    mask = (rng.random(shape) > 0.5).astype(np.uint8)
    v1 = s.save_annotation("vol", "alice", mask, role="expert")
    assert v1.chunks_written == 8 * 2 * 2 and v1.chunks_linked == 0
    mask2 = mask.copy()
    mask2[20, 10:30, 70:90] = 2  # one slice, one chunk
    v2 = s.save_annotation("vol", "alice", mask2, role="expert", parent_version=1)
    assert (v2.chunks_written, v2.chunks_linked) == (1, 31)
    assert v2.bytes_written * 10 < v1.bytes_written
    d1, d2 = (
        s.path / "images/vol/annotations/alice/v000001",
        s.path / "images/vol/annotations/alice/v000002",
    )
    same = os.stat(d1 / "c/0/0/0"), os.stat(d2 / "c/0/0/0")
    assert same[0].st_ino == same[1].st_ino  # shared, not copied
    assert os.stat(d1 / "c/2/0/1").st_ino != os.stat(d2 / "c/2/0/1").st_ino
    np.testing.assert_array_equal(s.read_version("vol", "alice", 1)[0], mask)
    np.testing.assert_array_equal(s.latest("vol", "alice")[0], mask2)
    assert s.verify() == []


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "a/b",
        "",
        "x" * 65,
        "con\0",
        ".",
        "..",
        ".hidden",
        "-flag",
        "a b",
        "é",
        "CON",
        "a\\b",
        None,
        5,
    ],
)
def test_hostile_identifiers_rejected(store, bad):
    m = np.zeros((12, 40, 48), np.uint8)
    with pytest.raises(InvalidIdentifierError):
        store.save_annotation("case1", bad, m, role="expert")
    with pytest.raises(InvalidIdentifierError):
        store.add_image(m, image_id=bad)
    with pytest.raises(ValueError):  # InvalidIdentifierError is a ValueError
        store.latest(bad, "alice")
    assert not (store.path.parent / "x").exists()


def test_valid_identifiers_accepted():
    for good in ["a", "A1", "rater_1", "dr.smith", "x-y", "9", "x" * 64, "a..b"]:
        assert validate_identifier(good, "rater") == good


def test_drafts_autosave_and_recovery(store, tmp_path):
    shape = (12, 40, 48)
    assert store.load_draft("case1", "alice") is None
    m = blob(shape, (6, 20, 24), 5)
    store.save_draft("case1", "alice", m, note="wip", extra={"tools": ["brush"]})
    m2 = m.copy()
    m2[0] = 1
    info = store.save_draft("case1", "alice", m2)
    # a new process (after a crash) finds the draft
    again = ProjectStore.open(tmp_path / "p.zarr")
    mask, info2 = again.load_draft("case1", "alice")
    np.testing.assert_array_equal(mask, m2)
    assert info2 == info and again.draft_raters("case1") == ["alice"]
    assert len([p for p in (store.path / "images/case1/drafts/alice").iterdir() if p.is_dir()]) == 1
    # committing discards the draft, unless asked to keep it
    store.save_annotation("case1", "alice", m2, role="expert", keep_draft=True)
    assert store.load_draft("case1", "alice") is not None
    store.save_annotation("case1", "alice", m2, role="expert", parent_version=1)
    assert store.load_draft("case1", "alice") is None
    store.save_draft("case1", "bob", m)
    assert store.discard_draft("case1", "bob") and not store.discard_draft("case1", "bob")
    assert store.verify() == []


def test_predictions_round_trip(store):
    rng = np.random.default_rng(2)
    samples = rng.integers(0, 3, size=(5, 12, 40, 48))
    probs = rng.dirichlet(np.ones(3), size=(12, 40, 48)).transpose(3, 0, 1, 2)
    regions = [{"label": 1, "bbox": [0, 1, 2, 3, 4, 5], "score": 0.7}]
    meta = {
        "provenance": {"method": "mc_dropout", "n_samples": 5, "seed": np.int64(0)},
        "regions": regions,
    }
    run = store.save_prediction("case1", {"samples": samples, "probs": probs}, meta, run_id="run-a")
    assert run == "run-a"

    class Result:  # duck-typed engine result
        def to_store(self):
            return {"entropy": probs[0]}, {"provenance": {"method": "softmax"}}

    run_b = store.save_prediction("case1", Result())
    listed = store.list_predictions("case1")
    assert [r["run_id"] for r in listed] == ["run-a", run_b]
    arrays, md = store.read_prediction("case1", "run-a")
    assert arrays["samples"].dtype == np.uint8 and arrays["probs"].dtype == np.float32
    np.testing.assert_array_equal(arrays["samples"], samples)
    np.testing.assert_allclose(arrays["probs"], probs, rtol=1e-6)
    assert md["regions"] == regions and md["provenance"]["seed"] == 0
    assert (
        store.read_prediction("case1", run_b, names=["entropy"])[1]["provenance"]["method"]
        == "softmax"
    )
    with pytest.raises(ValueError, match=r"^arrays: 'bad' must end with the image shape"):
        store.save_prediction("case1", {"bad": np.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"^run_id: 'run-a' already exists"):
        store.save_prediction("case1", {"samples": samples}, run_id="run-a")
    with pytest.raises(ValueError, match=r"^metadata: not JSON-able"):
        store.save_prediction("case1", {"samples": samples}, {"x": object()})
    assert store.verify() == []


def test_newer_schema_version_refused(store):
    meta_path = store.path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["probseg"]["schema_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreVersionError, match=r"schema version 99 is newer"):
        ProjectStore.open(store.path)


def test_open_non_store(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^path:"):
        ProjectStore.open(tmp_path / "missing.zarr")
    (tmp_path / "garbage.zarr").mkdir()
    (tmp_path / "garbage.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreCorruptionError, match=r"garbage.zarr/zarr.json: invalid JSON"):
        ProjectStore.open(tmp_path / "garbage.zarr")
    with pytest.raises(FileExistsError):
        ProjectStore.create(tmp_path / "garbage.zarr")


def _version_chunk(store, rater="alice", version=1):
    d = store.path / f"images/case1/annotations/{rater}/v{version:06d}/c"
    return sorted(p for p in d.rglob("*") if p.is_file())[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_damaged_chunk_reported(store, damage):
    m = blob((12, 40, 48), (6, 20, 24), 6)
    store.save_annotation("case1", "alice", m, role="expert")
    chunk = _version_chunk(store)
    raw = chunk.read_bytes()
    if damage == "truncate":
        chunk.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        chunk.write_bytes(
            bytes(np.random.default_rng(0).integers(0, 256, len(raw), dtype=np.uint8))
        )
    else:
        chunk.unlink()
    problems = [p for p in store.verify() if p.severity == "error"]
    assert problems and problems[0].path == str(chunk), problems
    with pytest.raises(StoreCorruptionError) as err:
        store.latest("case1", "alice")
    assert err.value.path == str(chunk)


def test_damaged_image_chunk_and_attributes_reported(store):
    m = blob((12, 40, 48), (6, 20, 24), 6)
    store.save_annotation("case1", "alice", m, role="expert")
    chunk = sorted(p for p in (store.path / "images/case1/0/c").rglob("*") if p.is_file())[-1]
    chunk.write_bytes(b"\x00" * 7)
    manifest = store.path / "images/case1/annotations/alice/zarr.json"
    manifest.write_text(manifest.read_text()[:50])
    paths = {p.path for p in store.verify() if p.severity == "error"}
    assert str(chunk) in paths and str(manifest) in paths
    with pytest.raises(StoreCorruptionError, match=r"invalid JSON"):
        store.latest("case1", "alice")
    with pytest.raises(StoreCorruptionError):
        store.read_image("case1")
    # the store still opens, and info reports the damaged image instead of crashing
    assert "error" in ProjectStore.open(store.path).info()["images"][0]


def test_derived_label_image_repaired(store):
    m = blob((12, 40, 48), (6, 20, 24), 6)
    store.save_annotation("case1", "alice", m, role="expert")
    label_dir = store.path / "images/case1/labels/alice/v000001/c"
    label_chunk = sorted(p for p in label_dir.rglob("*") if p.is_file())[0]
    label_chunk.write_bytes(b"garbage")
    problems = store.verify()
    assert [p.path for p in problems] == [str(label_chunk)] and problems[0].repairable
    fixed = store.verify(repair=True)
    assert fixed and all(p.repaired for p in fixed)
    assert store.verify() == []
    # a leftover uncommitted version (writer died before its commit) is a warning, then removed
    leftover = store.path / "images/case1/annotations/alice/v000002"
    (leftover / "c").mkdir(parents=True)
    assert [p.severity for p in store.verify()] == ["warning"]
    store.verify(repair=True)
    assert not leftover.exists() and store.verify() == []
    v2 = store.save_annotation("case1", "alice", m, role="expert", parent_version=1)
    assert v2.version == 2
