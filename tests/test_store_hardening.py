"""Regression tests of issue 13's medium store items: export names, damaged parents, classes,
staging leftovers, hostile ids, ``verify``/``info`` exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_probseg.cli import main
from napari_probseg.store import InvalidIdentifierError, ProjectStore, export_store
from napari_probseg.store._fs import file_lock


def _mask(value: int = 1, shape=(8, 8)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[:4, :4] = value
    return m


@pytest.fixture
def store(tmp_path):
    s = ProjectStore.create(tmp_path / "p.zarr", class_names=["bg", "fg", "other"])
    s.add_image(np.arange(64, dtype=np.float32).reshape(8, 8), image_id="img", label_chunks=(4, 4))
    return s


def test_export_case_names_never_collide(tmp_path):
    store = ProjectStore.create(tmp_path / "p.zarr", class_names=["bg", "fg"])
    for image_id in ("a_b", "a"):
        store.add_image(np.zeros((4, 4), np.float32), image_id=image_id)
    store.save_annotation("a_b", "c", _mask(1, (4, 4)), role="expert")
    store.save_annotation("a", "b_c", np.ones((4, 4), np.uint8), role="expert")
    index = export_store(store, tmp_path / "out", format="monai")
    cases = sorted(e["case"] for e in index["training"])
    assert cases == ["a+b_c", "a_b+c"]
    assert len(list((tmp_path / "out" / "labels").iterdir())) == 2


def test_export_refuses_colliding_names():
    from napari_probseg.store._export import _check_case_names

    with pytest.raises(ValueError, match="same export file"):
        _check_case_names([("Img+a",), ("img+a",)])


def test_labels_outside_the_classes_are_refused(store, tmp_path):
    with pytest.raises(ValueError, match=r"mask: label 7 is outside the store's classes"):
        store.save_annotation("img", "alice", _mask(7), role="expert")
    with pytest.raises(ValueError, match=r"mask: label 3 is outside"):
        store.save_draft("img", "alice", _mask(3))
    assert store.raters("img") == [] and store.draft_raters("img") == []
    store.save_annotation("img", "alice", _mask(2), role="expert")
    index = export_store(store, tmp_path / "out", format="nnunet")
    assert index["labels"] == {"bg": 0, "fg": 1, "other": 2}


def test_damaged_parent_never_blocks_a_save(store):
    v1 = _mask(1)
    store.save_annotation("img", "alice", v1, role="expert")
    chunk = store.path / "images/img/annotations/alice/v000001/c/0/0"
    assert chunk.is_file()
    chunk.unlink()  # the parent version lost a chunk
    v2 = v1.copy()
    v2[6, 6] = 2  # the damaged chunk itself is unchanged: it would be linked
    draft = v1.copy()
    draft[7, 7] = 1
    store.save_draft("img", "alice", draft)  # autosave
    rec = store.save_annotation("img", "alice", v2, role="expert", parent_version=1)
    np.testing.assert_array_equal(store.read_version("img", "alice", rec.version)[0], v2)
    store.save_draft("img", "alice", draft)
    np.testing.assert_array_equal(store.load_draft("img", "alice")[0], draft)
    bad = [p for p in store.verify() if p.severity == "error"]
    assert [p.path for p in bad] == [str(chunk)]  # only the old damage, nothing spread


def test_corrupt_parent_chunk_is_not_linked_into_the_new_version(store):
    store.save_annotation("img", "alice", _mask(1), role="expert")
    chunk = store.path / "images/img/annotations/alice/v000001/c/0/0"
    chunk.write_bytes(chunk.read_bytes() + b"x")  # trailing garbage: checksum mismatch
    m = _mask(1)
    m[7, 7] = 2  # chunk 0/0 unchanged: it would be linked
    rec = store.save_annotation("img", "alice", m, role="expert", parent_version=1)
    new = str(store.path / "images/img/annotations/alice/v000002")
    assert not [p for p in store.verify() if p.path.startswith(new)]
    np.testing.assert_array_equal(store.read_version("img", "alice", rec.version)[0], m)


def test_staging_leftovers_are_cleaned_on_open_unless_their_writer_is_alive(store):
    tmp = store.path / ".probseg" / "tmp"
    (tmp / "img+dead").mkdir(parents=True)
    (tmp / "img+dead" / "half.bin").write_bytes(b"x")
    (tmp / "other+busy").mkdir()
    with file_lock(store.path / ".probseg" / "locks" / "other.lock"):  # a writer at work
        assert [p.path for p in ProjectStore.open(store.path, mode="r").verify()] == [
            str(tmp / "img+dead")
        ]
        ProjectStore.open(store.path)  # read-write open cleans what crashed writers left
        assert sorted(p.name for p in tmp.iterdir()) == ["other+busy"]
    ProjectStore.open(store.path)
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("bad", ["COM0", "lpt0", "com1.txt", "name.", "a..", "NUL", "x" * 65, ""])
def test_ids_unsafe_on_windows_are_refused(store, bad):
    with pytest.raises(InvalidIdentifierError, match="image_id"):
        store.add_image(np.zeros((8, 8)), image_id=bad)
    with pytest.raises(InvalidIdentifierError, match="rater"):
        store.save_annotation("img", bad, _mask(), role="expert")


def test_ids_differing_only_in_case_are_refused(store):
    with pytest.raises(InvalidIdentifierError, match=r"'IMG' differs from the existing 'img'"):
        store.add_image(np.zeros((8, 8)), image_id="IMG")
    store.save_annotation("img", "alice", _mask(), role="expert")
    with pytest.raises(InvalidIdentifierError, match="only in letter case"):
        store.save_annotation("img", "Alice", _mask(), role="expert")
    with pytest.raises(InvalidIdentifierError, match="only in letter case"):
        store.save_draft("img", "ALICE", _mask())
    store.save_prediction("img", {"samples": _mask()[None]}, {}, run_id="run1")
    with pytest.raises(InvalidIdentifierError, match="only in letter case"):
        store.save_prediction("img", {"samples": _mask()[None]}, {}, run_id="RUN1")
    assert store.raters("img") == ["alice"] and store.image_ids() == ["img"]


def test_cli_store_add_refuses_an_empty_id(store, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((8, 8), np.float32))
    assert main(["store", "add", str(store.path), str(tmp_path / "x.npy"), "--id", ""]) == 1
    assert "--id: '' is not a valid identifier" in capsys.readouterr().err
    assert store.image_ids() == ["img"]


def test_cli_store_info_fails_on_damaged_metadata(store, capsys):
    (store.path / "images/img/zarr.json").write_text(json.dumps({"zarr_format": 3}))
    assert main(["store", "info", str(store.path)]) == 1
    assert "damaged metadata in img" in capsys.readouterr().err
