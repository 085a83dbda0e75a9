"""StoreDataset on a real project store: rater modes with known answers, seeding, splits, patches."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from napari_probseg.data import StoreDataset, collate_items, split_images
from napari_probseg.engine import normalize
from napari_probseg.store import ProjectStore

CLASSES = ["background", "lesion", "edema"]


def _square(r0: int, r1: int, c0: int, c1: int, value: int = 1) -> np.ndarray:
    m = np.zeros((32, 32), np.uint8)
    m[r0:r1, c0:c1] = value
    return m


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """Images: a (raters x, y, z: shifted squares), b (x: left half = 1, y: top half = 2),
    c (no annotation), vol 16^3 (x, y). Rater x of a has 2 versions (v1 empty)."""
    path = tmp_path_factory.mktemp("ds") / "project.zarr"
    store = ProjectStore.create(path, class_names=CLASSES)
    rng = np.random.default_rng(0)
    for image_id in ("a", "b", "c"):
        store.add_image(rng.normal(10, 3, (32, 32)).astype(np.float32), image_id=image_id)
    store.add_image(rng.normal(0, 1, (16, 16, 16)), image_id="vol")
    store.save_annotation("a", "x", np.zeros((32, 32), np.uint8), role="expert")
    store.save_annotation("a", "x", _square(4, 12, 4, 12), role="expert", parent_version=1)
    store.save_annotation("a", "y", _square(6, 14, 6, 14), role="resident")
    store.save_annotation("a", "z", _square(8, 16, 8, 16), role="trainee")
    store.save_annotation("b", "x", _square(0, 32, 0, 16, 1), role="expert")
    store.save_annotation("b", "y", _square(0, 16, 0, 32, 2), role="expert")
    vx = np.zeros((16, 16, 16), np.uint8)
    vx[4:10, 4:10, 4:10] = 1
    store.save_annotation("vol", "x", vx, role="expert")
    store.save_annotation("vol", "y", np.roll(vx, 2, axis=0), role="expert")
    return path


def _item(ds: StoreDataset, image_id: str, index: int = 0) -> dict:
    spi = ds.samples_per_image
    return ds[ds.image_ids.index(image_id) * spi + index]


def test_majority_soft_all_known_values(store_path):
    maj = StoreDataset(store_path, rater_mode="majority", spatial_dims=2)
    assert maj.image_ids == ["a", "b"]
    assert maj.n_classes == 3
    a = _item(maj, "a")
    assert a["target"].dtype == torch.int64 and a["target"].shape == (32, 32)
    assert a["raters"] == ["x", "y", "z"] and a["versions"] == {"x": 2, "y": 1, "z": 1}
    # a: voxel marked by 3, 2, 2, 1, 1 raters
    t = a["target"]
    assert (t[9, 9], t[7, 7], t[13, 13], t[5, 5], t[15, 15], t[0, 0]) == (1, 1, 1, 0, 0, 0)
    votes = _square(4, 12, 4, 12) + _square(6, 14, 6, 14) + _square(8, 16, 8, 16)
    np.testing.assert_array_equal(t.numpy(), votes >= 2)
    # b: x says 1 on the left half, y says 2 on the top half; ties go to the lowest label
    b = _item(maj, "b")["target"]
    assert (b[:16, :16] == 1).all() and (b[:16, 16:] == 0).all() and (b[16:] == 0).all()

    soft = StoreDataset(store_path, rater_mode="soft", spatial_dims=2)
    s = _item(soft, "b")["target"]
    assert s.dtype == torch.float32 and s.shape == (3, 32, 32)
    np.testing.assert_allclose(s[:, 3, 3], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(s[:, 3, 20], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(s[:, 20, 3], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(s[:, 20, 20], [1.0, 0.0, 0.0])
    sa = _item(soft, "a")["target"]
    np.testing.assert_allclose(sa.sum(0), 1.0)
    np.testing.assert_allclose(
        sa[1, [9, 7, 5, 0], [9, 7, 5, 0]], [1.0, 2 / 3, 1 / 3, 0.0], atol=1e-6
    )

    every = StoreDataset(store_path, rater_mode="all", spatial_dims=2)
    stack = _item(every, "a")["target"]
    assert stack.shape == (3, 32, 32)
    expected = np.stack([_square(4, 12, 4, 12), _square(6, 14, 6, 14), _square(8, 16, 8, 16)])
    np.testing.assert_array_equal(stack.numpy(), expected)


def test_random_mode_is_seeded_per_seed_epoch_index(store_path):
    ds = StoreDataset(store_path, rater_mode="random", image_ids=["a"], samples_per_image=30)
    masks = {r: ProjectStore.open(store_path, mode="r").latest("a", r)[0] for r in "xyz"}
    picks = []
    for i in range(len(ds)):
        item = ds[i]
        (rater,) = item["raters"]
        np.testing.assert_array_equal(item["target"].numpy(), masks[rater])
        assert item["versions"] == {rater: {"x": 2, "y": 1, "z": 1}[rater]}
        picks.append(rater)
    assert set(picks) == {"x", "y", "z"}
    again = StoreDataset(store_path, rater_mode="random", image_ids=["a"], samples_per_image=30)
    assert [again[i]["raters"][0] for i in range(len(ds))] == picks
    ds.set_epoch(1)
    assert [ds[i]["raters"][0] for i in range(len(ds))] != picks
    other_seed = StoreDataset(
        store_path, rater_mode="random", image_ids=["a"], samples_per_image=30, seed=1
    )
    assert [other_seed[i]["raters"][0] for i in range(len(ds))] != picks


def test_versions_pinning_and_rater_subset(store_path):
    pinned = StoreDataset(store_path, rater_mode="all", versions={"a": {"x": 1, "y": 1}})
    item = pinned[0]
    assert item["versions"] == {"x": 1, "y": 1}
    assert int(item["target"][0].sum()) == 0  # x's first version is empty
    sub = StoreDataset(store_path, rater_mode="majority", raters=["z"])
    assert sub.image_ids == ["a"] and sub.annotations == {"a": {"z": 1}}
    assert sorted(sub.skipped["no_annotations"]) == ["b", "c", "vol"]


def test_skips_unannotated_images_and_other_dimensionality(store_path):
    ds = StoreDataset(store_path, spatial_dims=2)
    assert ds.skipped == {"no_annotations": ["c"], "other_dims": ["vol"]}
    assert ds.n_skipped == 2 and "skipped=2" in repr(ds)
    everything = StoreDataset(store_path)
    assert everything.image_ids == ["a", "b", "vol"] and everything.n_skipped == 1
    assert len(StoreDataset(store_path, samples_per_image=3)) == 9


def test_images_normalized_like_the_engine(store_path):
    store = ProjectStore.open(store_path, mode="r")
    raw, _ = store.read_image("a")
    ds = StoreDataset(store, normalization={"kind": "zscore"}, image_ids=["a"])
    img = ds[0]["image"]
    assert img.dtype == torch.float32 and img.shape == (1, 32, 32)
    np.testing.assert_allclose(img.numpy(), normalize(raw[None], {"kind": "zscore"}), rtol=1e-6)
    assert abs(float(img.mean())) < 1e-5 and float(img.std(unbiased=False)) == pytest.approx(1.0)
    fixed = StoreDataset(store, normalization={"kind": "zscore", "mean": 10.0, "std": 2.0})
    np.testing.assert_allclose(fixed[0]["image"][0].numpy(), (raw - 10.0) / 2.0, rtol=1e-5)


def test_3d_patches_have_the_patch_shape_and_lie_in_the_image(store_path):
    store = ProjectStore.open(store_path, mode="r")
    vol, _ = store.read_image("vol")
    norm = normalize(vol[None], {"kind": "zscore"})
    ds = StoreDataset(
        store,
        patch_size=(8, 6, 10),
        samples_per_image=12,
        rater_mode="all",
        normalization="zscore",
        foreground_fraction=0.0,
    )
    assert ds.image_ids == ["vol"] and ds.skipped["other_dims"] == ["a", "b", "c"]
    masks = np.stack([store.latest("vol", r)[0] for r in ("x", "y")])
    origins = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 8, 6, 10) and item["target"].shape == (2, 8, 6, 10)
        o = item["origin"]
        assert all(0 <= a and a + p <= 16 for a, p in zip(o, (8, 6, 10)))
        sl = tuple(slice(a, a + p) for a, p in zip(o, (8, 6, 10)))
        np.testing.assert_allclose(item["image"].numpy(), norm[(slice(None), *sl)], rtol=1e-6)
        np.testing.assert_array_equal(item["target"].numpy(), masks[(slice(None), *sl)])
        origins.add(o)
    assert len(origins) > 6  # patches move
    fg = StoreDataset(
        store, patch_size=(4, 4, 4), samples_per_image=10, foreground_fraction=1.0, rater_mode="all"
    )
    assert all(int(fg[i]["target"].sum()) > 0 for i in range(len(fg)))
    batch = collate_items([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 8, 6, 10) and len(batch["origin"]) == 3


def test_patch_larger_than_image_is_mirror_padded(store_path):
    ds = StoreDataset(store_path, patch_size=(40, 20), rater_mode="all", image_ids=["a"])
    item = ds[0]
    assert item["image"].shape == (1, 40, 20) and item["target"].shape == (3, 40, 20)
    assert item["origin"][0] == 0
    t = item["target"].numpy()
    np.testing.assert_array_equal(t[:, 32:40], t[:, 31:23:-1])


def test_split_by_image_never_shares_an_image(store_path):
    ds = StoreDataset(store_path, patch_size=(8, 8), samples_per_image=5, spatial_dims=2)
    train, val = ds.split(0.5, seed=3)
    assert len(train.image_ids) == 1 and len(val.image_ids) == 1
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert {train[i]["image_id"] for i in range(len(train))} == set(train.image_ids)
    assert {val[i]["image_id"] for i in range(len(val))} == set(val.image_ids)
    assert ds.split(0.5, seed=3)[0].image_ids == train.image_ids
    t0, v0 = ds.split(n_val=0)
    assert t0.image_ids == ["a", "b"] and len(v0) == 0


@given(
    n=st.integers(1, 40),
    frac=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**16),
)
def test_split_images_partitions(n, frac, seed):
    ids = [f"img{i:03d}" for i in range(n)]
    train, val = split_images(ids, frac, seed=seed)
    assert set(train).isdisjoint(val) and sorted(train + val) == ids
    assert len(train) >= 1
    if frac > 0 and n >= 2:
        assert len(val) >= 1
    assert (train, val) == split_images(list(reversed(ids)), frac, seed=seed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rater_mode": "mean"}, r"^rater_mode: "),
        ({"patch_size": (8,)}, r"^patch_size: "),
        ({"patch_size": (8, 8), "spatial_dims": 3}, r"^patch_size: "),
        ({"n_classes": 2}, r"^n_classes: image 'b' has label 2"),
        ({"image_ids": ["nope"]}, r"^image_ids: not in the store"),
        ({"image_ids": ["c"]}, r"^store: no annotated images"),
        ({"samples_per_image": 0}, r"^samples_per_image: "),
        ({"normalization": "fancy"}, r"^normalization: "),
    ],
)
def test_bad_arguments(store_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        StoreDataset(store_path, **kwargs)


def test_split_images_errors():
    with pytest.raises(ValueError, match=r"^val_fraction: give exactly one"):
        split_images(["a", "b"])
    with pytest.raises(ValueError, match=r"^n_val: "):
        split_images(["a", "b"], n_val=2)
    with pytest.raises(ValueError, match=r"^image_ids: "):
        split_images(["a", "a"], 0.5)


def test_data_package_exports_lazily_without_importing_torch():
    import napari_probseg.data
    from napari_probseg.data import dataset

    assert napari_probseg.data.StoreDataset is dataset.StoreDataset
    code = "import sys, napari_probseg.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
