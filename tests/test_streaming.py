"""Big volumes: slab-by-slab streaming, output stores, lazy zarr/dask inputs, memory estimates,
CPU out-of-memory recognition (issue 13, item 6 and "Memory and scale of big volumes")."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_probseg import engine
from napari_probseg.engine._device import is_out_of_memory
from test_engine import TinyMethod, _image

KW = dict(n_samples=5, seed=2, normalization="none", device="cpu")


def _same(a, b, atol=1e-5):
    np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(b.samples))
    for name in ("mean_probs", "variance", "predictive_entropy", "mutual_information"):
        np.testing.assert_allclose(
            np.asarray(getattr(a.maps, name)), np.asarray(getattr(b.maps, name)), atol=atol
        )
    np.testing.assert_allclose(a.maps.volumes, b.maps.volumes, rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "dims", "patch", "extra"),
    [
        ((41, 37), 2, (16, 16), {}),
        ((19, 23, 21), 3, (8, 8, 8), {}),
        ((5, 20, 24), 2, (16, 16), {"slice_by_slice": True}),
        ((20, 24), 2, None, {}),
    ],
)
def test_slab_streaming_equals_the_whole_image_path(shape, dims, patch, extra):
    method = TinyMethod(spatial_dims=dims, kernel=3)
    img = _image(shape)
    kw = dict(KW, patch_size=patch, batch_size=2, **extra)
    whole = engine.run_prediction(img, method, streaming=False, **kw)
    slab = engine.run_prediction(img, method, streaming=True, **kw)
    assert whole.provenance["memory"]["mode"] == "whole"
    assert slab.provenance["memory"]["mode"] == "slab"
    _same(slab, whole)


def test_output_store_is_filled_slab_by_slab_and_reads_back(tmp_path):
    method, img = TinyMethod(), _image((41, 37))
    ref = engine.run_prediction(img, method, patch_size=(16, 16), **KW)
    out = tmp_path / "pred.zarr"
    res = engine.run_prediction(img, method, patch_size=(16, 16), output=out, **KW)
    assert isinstance(res.samples, zarr.Array) and isinstance(res.maps.mean_probs, zarr.Array)
    assert res.provenance["output"] == str(out) and res.samples.dtype == np.uint8
    _same(res, ref)
    loaded, _regions = engine.load_result(out)
    _same(loaded, ref)
    # saving the streamed result to its own store only writes the attributes
    engine.save_result(res, out, regions=[{"label": 1}])
    assert engine.load_result(out)[1] == [{"label": 1}]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(ValueError, match=r"^output"):
        engine.predict(img, method, output=out)


class _CountingSource:
    """An on-disk zarr array behind a dask array, recording how many rows each read takes."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.rows_read: list[int] = []

    def __getitem__(self, index):
        block = self.array[index]
        self.rows_read.append(int(block.shape[0]))
        return block


def test_zarr_and_dask_inputs_are_read_in_slabs_never_whole(tmp_path):
    import dask.array as da

    img = _image((48, 40))
    z = zarr.create_array(
        str(tmp_path / "img.zarr"), shape=img.shape, dtype=img.dtype, chunks=(8, 40)
    )
    z[...] = img
    method = TinyMethod()
    kw = dict(KW, patch_size=(16, 16), normalization={"kind": "zscore"})
    ref = engine.run_prediction(img, method, **kw)
    from_zarr = engine.run_prediction(z, method, **kw)
    assert from_zarr.provenance["memory"]["mode"] == "slab"
    assert from_zarr.input_signature == ref.input_signature  # the same digest, hashed by slabs
    _same(from_zarr, ref, atol=1e-4)
    source = _CountingSource(z)
    lazy = da.from_array(source, chunks=(8, 40), asarray=True)
    from_dask = engine.run_prediction(lazy, method, **kw)
    _same(from_dask, ref, atol=1e-4)
    assert source.rows_read and max(source.rows_read) <= 16 < img.shape[0]


def test_memory_estimate_refuses_before_computing(monkeypatch):
    method, img = TinyMethod(), _image((64, 64))
    monkeypatch.setenv("PROBSEG_MEMORY_LIMIT", str(1e5))  # less than one tile's activations
    with pytest.raises(MemoryError, match=r"^image: .* needs ~.* GiB .* available"):
        engine.run_prediction(img, method, patch_size=(16, 16), **KW)
    assert method.calls == []  # refused before any forward pass


def test_memory_estimate_switches_to_slabs_when_the_whole_image_does_not_fit(monkeypatch):
    method, img = TinyMethod(), _image((256, 256))
    kw = dict(KW, patch_size=(32, 32), batch_size=1)
    whole = engine.run_prediction(img, method, streaming=False, **kw)
    slab = engine.run_prediction(img, method, streaming=True, **kw)
    need_whole = whole.provenance["memory"]["additional_bytes"]
    need_slab = slab.provenance["memory"]["additional_bytes"]
    assert need_slab < need_whole
    monkeypatch.setenv("PROBSEG_MEMORY_LIMIT", str((need_whole + need_slab) / 2))
    with pytest.warns(RuntimeWarning, match="streaming slab by slab"):
        auto = engine.run_prediction(img, method, **kw)
    assert auto.provenance["memory"]["mode"] == "slab"
    _same(auto, whole)


def test_cpu_out_of_memory_is_recognised_and_halves_the_batch():
    msg = "[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes"
    assert is_out_of_memory(RuntimeError(msg))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))

    class CPUOOM(TinyMethod):
        def sample(self, x, n, *, generator, first_index=0):
            if n > 2:
                raise RuntimeError(msg)
            return super().sample(x, n, generator=generator, first_index=first_index)

    method = CPUOOM()
    for streaming in (False, True):
        with pytest.warns(RuntimeWarning, match="out of memory"):
            res = engine.run_prediction(
                _image((20, 20)), method, n_samples=8, batch_size=8, streaming=streaming
            )
        assert res.provenance["batch_size_final"] == 2 and res.n_samples == 8


def test_oom_on_accelerator_falls_back_to_cpu_slab_by_slab():
    """The streaming path follows the whole-image path's policy (one helper): halve the batch,
    then, with one sample on an accelerator ("meta" stands in), go on on the CPU."""
    from test_engine import OOMMethod

    kw = dict(n_samples=4, batch_size=2, seed=3, normalization="none")
    with pytest.warns(RuntimeWarning, match="falling back to the CPU"):
        res = engine.run_prediction(
            _image((20, 20)), OOMMethod(limit=100), device="meta", streaming=True, **kw
        )
    assert res.provenance["device"] == "cpu" and res.provenance["device_requested"] == "meta"
    assert res.provenance["memory"]["mode"] == "slab"
    ref = engine.run_prediction(_image((20, 20)), OOMMethod(limit=100), device="cpu", **kw)
    _same(res, ref)


# -- body passes per tile, strips, volumes larger than memory (issue 13, big volumes) ------


@pytest.fixture(scope="module")
def ssn3d(tmp_path_factory):
    from model_helpers import tiny_card
    from napari_probseg.models import load_card, load_method

    path = tiny_card(tmp_path_factory.mktemp("ssn"), wrapper="ssn", spatial_dims=3)
    return load_method(load_card(path), "ssn", device="cpu")


def _count_body_calls(method):
    calls = [0]
    handle = method.network.body.register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    return calls, handle


def test_ssn_body_runs_once_per_tile_with_16_samples(ssn3d, tmp_path):
    """N = 16 hypotheses of a multi-tile volume, streamed into an output store, from one body
    pass per tile. The memory budget is one a whole-slab blend buffer of 16 samples does not fit
    (before strips the batch was split 8 + 8: two passes per tile) but a strip of it does."""
    assert ssn3d.shared_body
    img = _image((24, 96, 96), seed=3)
    kw = dict(n_samples=16, seed=1, device="cpu", patch_size=(16, 32, 32))
    calls, handle = _count_body_calls(ssn3d)
    try:
        res = engine.run_prediction(
            img, ssn3d, memory_budget_bytes=24e6, output=tmp_path / "out.zarr", **kw
        )
    finally:
        handle.remove()
    n_tiles = res.provenance["tiling"]["n_tiles"]
    assert n_tiles == 32 and res.provenance["memory"]["mode"] == "slab"
    assert res.provenance["batch_size"] == 16
    assert calls[0] == n_tiles  # once per tile, whatever the N
    ref = engine.run_prediction(img, ssn3d, streaming=False, batch_size=16, **kw)
    _same(res, ref)  # the same hypotheses as an in-memory run of all 16 at once


def _body_module(method):
    """The module whose forward is the method's shared body (Laplace: the whole MAP network)."""
    return getattr(method.network, "body", method.network)


@pytest.mark.parametrize(
    "wrapper,name", [("ssn", "ssn"), ("prob_unet", "prob_unet"), ("plain", "laplace")]
)
def test_shared_body_runs_once_per_tile_whatever_n(tmp_path, wrapper, name):
    """N = 64 hypotheses take several sample batches (at most 32 per batch), on the streaming
    and on the whole-image path; each tile's body is kept between them, so it runs once per tile,
    and the samples are those of one batch of all 64 (whose body runs once per tile anyway)."""
    from napari_probseg.models import load_method
    from test_models import make_card

    method = load_method(make_card(tmp_path, wrapper, 3).path, name, device="cpu")
    img = _image((20, 40, 40), seed=5)
    kw = dict(n_samples=64, seed=3, device="cpu", patch_size=(16, 16, 16))
    calls = [0]
    handle = _body_module(method).register_forward_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    try:
        streamed = engine.run_prediction(img, method, output=tmp_path / "out.zarr", **kw)
        n_tiles = streamed.provenance["tiling"]["n_tiles"]
        assert streamed.provenance["memory"]["mode"] == "slab"
        assert streamed.provenance["batch_size"] < 64  # several batches per strip
        assert calls[0] == n_tiles > 1
        assert streamed.provenance["memory"]["body_passes"] == n_tiles
        calls[0] = 0
        whole = engine.run_prediction(img, method, streaming=False, batch_size=7, **kw)
        assert calls[0] == n_tiles  # 10 batches, one body pass per tile
        calls[0] = 0
        ref = engine.run_prediction(img, method, streaming=False, batch_size=64, **kw)
        assert calls[0] == n_tiles and ref.provenance["memory"]["body_passes"] is None
    finally:
        handle.remove()
    _same(streamed, ref)
    _same(whole, ref)


def test_bodies_that_do_not_fit_run_once_per_batch_and_say_so(ssn3d):
    """A budget the kept bodies would fill more than half of: they are not kept, each batch runs
    the body (the same samples), and the result's notes say why it was slower."""
    img = _image((20, 40, 72), seed=6)
    kw = dict(n_samples=6, seed=1, device="cpu", patch_size=(16, 32, 32), batch_size=2)
    calls, handle = _count_body_calls(ssn3d)
    try:
        tight = engine.run_prediction(img, ssn3d, streaming=True, memory_budget_bytes=2e5, **kw)
    finally:
        handle.remove()
    n_tiles = tight.provenance["tiling"]["n_tiles"]
    assert calls[0] == 3 * n_tiles  # 3 batches of 2
    assert tight.provenance["memory"]["body_cache_bytes"] == 0
    assert any(
        "once per tile and batch (3 batches of 2)" in n for n in tight.provenance["warnings"]
    )
    kept = engine.run_prediction(img, ssn3d, streaming=True, **kw)
    assert kept.provenance["memory"]["body_passes"] == n_tiles
    _same(tight, kept)


def test_bodies_are_kept_when_the_memory_limit_splits_the_batch(tmp_path, monkeypatch):
    """All N fit one batch until the process may allocate a little less: the batch is halved to
    fit, and the bodies, which fit beside the smaller batches, are kept between them."""
    from napari_probseg.models import load_method
    from test_models import make_card

    method = load_method(make_card(tmp_path, "ssn", 2).path, "ssn", device="cpu")
    img = _image((96, 96), seed=7)
    kw = dict(n_samples=32, seed=2, device="cpu", patch_size=(32, 32), streaming=False)
    free = engine.run_prediction(img, method, **kw)
    assert free.provenance["batch_size"] == 32 and free.provenance["memory"]["body_passes"] is None
    monkeypatch.setenv(
        "PROBSEG_MEMORY_LIMIT", str(0.98 * free.provenance["memory"]["additional_bytes"])
    )
    tight = engine.run_prediction(img, method, **kw)
    assert tight.provenance["batch_size"] == 16
    assert tight.provenance["memory"]["body_cache_bytes"] > 0
    assert tight.provenance["memory"]["body_passes"] == tight.provenance["tiling"]["n_tiles"]
    assert not any("do not fit" in w for w in tight.provenance["warnings"])
    _same(tight, free)


def test_strips_and_disk_carry_equal_the_whole_image_path_in_3d(tmp_path):
    method = TinyMethod(spatial_dims=3, kernel=3)
    img = _image((21, 30, 26), seed=4)
    kw = dict(KW, patch_size=(8, 8, 8), batch_size=2, overlap=0.5)  # overlaps of half a tile
    whole = engine.run_prediction(img, method, streaming=False, **kw)
    in_memory = engine.run_prediction(img, method, streaming=True, **kw)
    on_disk = engine.run_prediction(img, method, output=tmp_path / "o.zarr", **kw)
    _same(in_memory, whole)
    _same(on_disk, whole)
    assert sorted(p.name for p in (tmp_path / "o.zarr").iterdir() if p.name.startswith(".")) == []


class _ReadLog:
    """Records the voxels of every read of one zarr array (the input) during a prediction."""

    def __init__(self, array):
        self.path, self.sizes, self.rows = str(array.store_path), [], []

    def install(self, monkeypatch):
        real = zarr.Array.__getitem__

        def getitem(array, index):
            block = real(array, index)
            if str(array.store_path) == self.path:
                self.sizes.append(int(np.size(block)))
                self.rows.append(int(np.shape(block)[0]) if np.ndim(block) else 1)
            return block

        monkeypatch.setattr(zarr.Array, "__getitem__", getitem)


def test_zarr_volume_larger_than_the_memory_limit_is_read_slab_by_slab(tmp_path, monkeypatch):
    """The engine may hold less than the image: a zarr input is read a slab at a time (never
    whole) and gives the in-memory run's result."""
    method = TinyMethod(spatial_dims=3, kernel=3)
    method.activation_factor = 1.0  # a two-layer network: activations ~ its output
    img = _image((320, 32, 32), seed=5)
    kw = dict(KW, n_samples=2, patch_size=(16, 16, 16), batch_size=1)
    ref = engine.run_prediction(img, method, streaming=False, **kw)
    z = zarr.create_array(
        str(tmp_path / "img.zarr"), shape=img.shape, dtype=img.dtype, chunks=(8, 32, 32)
    )
    z[...] = img
    probe = engine.run_prediction(z, method, output=tmp_path / "probe.zarr", **kw)
    need = probe.provenance["memory"]["additional_bytes"]
    limit = need + 1e4
    assert limit < img.nbytes < ref.provenance["memory"]["additional_bytes"]
    monkeypatch.setenv("PROBSEG_MEMORY_LIMIT", str(limit))
    with pytest.raises(MemoryError, match=r"^image: "):  # the whole path cannot hold it
        engine.run_prediction(img, method, streaming=False, output=None, **kw)
    log = _ReadLog(z)
    log.install(monkeypatch)
    res = engine.run_prediction(z, method, output=tmp_path / "out.zarr", **kw)
    assert res.provenance["memory"]["mode"] == "slab"
    assert res.provenance["memory"]["available_bytes"] == round(limit)
    assert log.sizes, "the input was read through zarr"
    assert max(log.rows) <= 16 and max(log.sizes) <= 16 * 32 * 32 < img.size
    monkeypatch.undo()
    _same(res, ref)
