"""Engine tests with tiny real torch methods (1x1/3x3 convolutions with per-hypothesis dropout).

The methods implement the Method interface of docs/ARCHITECTURE.md: all randomness comes from the
generator and the per-hypothesis randomness (a channel-dropout mask) is drawn first, so the engine's
tile-coherent sampling makes tiled inference of a translation-equivariant network equal to untiled
inference.
"""

from __future__ import annotations

import threading
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_probseg import engine
from napari_probseg.engine._tiling import plan_tiles
from napari_probseg.models.methods import hypothesis_seed


class TinyMethod:
    """conv(C->H) -> relu -> channel dropout per hypothesis -> conv(H->K) -> softmax."""

    name = "mc_dropout"
    source = ("parameter",)
    deterministic = False

    def __init__(self, *, spatial_dims=2, in_channels=1, n_classes=2, kernel=1, p=0.5, hidden=8):
        torch.manual_seed(1234)
        conv = torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d
        self.spatial_dims, self.in_channels, self.n_classes = spatial_dims, in_channels, n_classes
        self.class_names = ["background"] + [f"class{i}" for i in range(1, n_classes)]
        self.p, self.hidden = p, hidden
        self.conv1 = conv(in_channels, hidden, kernel, padding=kernel // 2)
        self.conv2 = conv(hidden, n_classes, 1)
        with torch.no_grad():
            self.conv2.weight.mul_(4.0)
        self.device = torch.device("cpu")
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def to(self, device):
        self.device = torch.device(device)
        self.conv1.to(self.device)
        self.conv2.to(self.device)
        return self

    def sample(self, x, n, *, generator, first_index=0):
        self.calls.append((n, tuple(x.shape)))
        # per-hypothesis masks from (key, global index): batch-invariant, as the contract says
        key = int(torch.randint(0, 2**62, (1,), generator=generator))
        gens = [
            torch.Generator().manual_seed(hypothesis_seed(key, i, 0))
            for i in range(first_index, first_index + n)
        ]
        keep = torch.stack([torch.rand(self.hidden, generator=g) for g in gens])
        keep = (keep > self.p).float() / (1 - self.p)
        h = torch.relu(self.conv1(x))
        h = h * keep.to(x.device).view(n, self.hidden, *([1] * self.spatial_dims))
        return torch.softmax(self.conv2(h), dim=1)

    def describe(self):
        return {"p": self.p, "hidden": self.hidden}


class SoftmaxMethod(TinyMethod):
    name = "softmax"
    source = ("none",)
    deterministic = True

    def sample(self, x, n, *, generator, first_index=0):
        h = torch.relu(self.conv1(x))
        return torch.softmax(self.conv2(h), dim=1).expand(n, -1, *x.shape[2:])


class SlowMethod(TinyMethod):
    def sample(self, x, n, *, generator, first_index=0):
        time.sleep(0.3)
        return super().sample(x, n, generator=generator, first_index=first_index)


class OOMMethod(TinyMethod):
    """Raises a CUDA-style OOM for batches larger than ``limit`` or on any non-CPU device."""

    def __init__(self, limit=2, **kw):
        super().__init__(**kw)
        self.limit = limit

    def to(self, device):  # the weights stay on the CPU ("meta" stands in for a GPU)
        self.device = torch.device(device)
        return self

    def sample(self, x, n, *, generator, first_index=0):
        if n > self.limit or x.device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().sample(x, n, generator=generator, first_index=first_index)


def _image(shape=(40, 44), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _stacked(method, x, n, seed):
    """The probabilities the engine should draw, computed on the whole image in one batch."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return method.sample(torch.from_numpy(x)[None], n, generator=g, first_index=0).numpy()


def _xlogx(p):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)


# --------------------------------------------------------------------------------------------


def test_accumulated_maps_equal_stacked_computation():
    method, img = TinyMethod(), _image()
    res = engine.run_prediction(
        img, method, n_samples=7, seed=3, batch_size=3, normalization="none"
    )
    probs = _stacked(method, img[None], 7, 3).astype(np.float64)  # (N, K, *S)
    mean = probs.mean(0)
    pe = -_xlogx(mean).sum(0)
    ee = (-_xlogx(probs).sum(1)).mean(0)
    m = res.maps
    np.testing.assert_allclose(m.mean_probs, mean, atol=1e-5)
    np.testing.assert_allclose(m.predictive_entropy, pe, atol=1e-5)
    np.testing.assert_allclose(m.expected_entropy, ee, atol=1e-5)
    np.testing.assert_allclose(m.mutual_information, np.maximum(pe - ee, 0), atol=1e-5)
    np.testing.assert_allclose(m.variance, probs.var(0), atol=1e-5)
    np.testing.assert_allclose(m.volumes, probs[:, 1].sum(axis=(1, 2)), rtol=1e-5)
    assert res.samples.dtype == np.uint8 and res.samples.shape == (7, 40, 44)
    np.testing.assert_array_equal(res.samples, probs.argmax(1))
    assert res.maps.n_samples == res.n_samples == 7
    # the maps are not trivially equal across samples: the dropout masks differ
    assert float(m.mutual_information.max()) > 1e-3


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tiled_equals_untiled_for_translation_equivariant_network(spatial_dims):
    method = TinyMethod(spatial_dims=spatial_dims)
    img = _image((37, 45) if spatial_dims == 2 else (19, 23, 21))
    kw = dict(n_samples=5, seed=1, batch_size=5, normalization="none")
    whole = engine.run_prediction(img, method, **kw)
    patch = (16, 16) if spatial_dims == 2 else (8, 8, 8)
    tiled = engine.run_prediction(img, method, patch_size=patch, overlap=0.25, **kw)
    assert tiled.provenance["tiling"]["n_tiles"] > 4
    assert tiled.provenance["tiling"]["blend"] == "edge-ramp"
    np.testing.assert_allclose(tiled.maps.mean_probs, whole.maps.mean_probs, atol=1e-5)
    np.testing.assert_allclose(
        tiled.maps.mutual_information, whole.maps.mutual_information, atol=1e-5
    )
    np.testing.assert_array_equal(tiled.samples, whole.samples)


def test_tiling_with_receptive_field_is_seam_free():
    """A 3x3 network sees zero padding at tile edges; gaussian blending hides it."""
    method, img = TinyMethod(kernel=3), _image((48, 48))
    kw = dict(n_samples=4, seed=0, batch_size=4, normalization="none")
    whole = engine.run_prediction(img, method, **kw)
    tiled = engine.run_prediction(img, method, patch_size=(16, 16), overlap=0.5, **kw)
    diff = np.abs(tiled.maps.mean_probs - whole.maps.mean_probs)
    assert diff.max() < 2e-3
    # no seams: the error at tile borders is not larger than far away from them
    assert np.abs(tiled.maps.predictive_entropy - whole.maps.predictive_entropy).max() < 5e-3


def test_plan_tiles_covers_image_and_pads_small_axes():
    plan = plan_tiles((40, 10), spatial_dims=2, patch_size=(16, 16), overlap=0.25)
    assert plan.padded_shape == (40, 16)
    cover = np.zeros(plan.padded_shape, int)
    for w in plan.windows:
        cover[w.weight_index] += 1
    assert cover.min() >= 1
    assert plan.n_tiles == len(plan.windows) == 3  # starts 0, 12, 24
    with pytest.raises(ValueError, match=r"^overlap"):
        plan_tiles((40, 10), spatial_dims=2, patch_size=(16, 16), overlap=1.0)
    with pytest.raises(ValueError, match=r"^patch_size"):
        plan_tiles((40, 10), spatial_dims=2, patch_size=(16,), overlap=0.1)


def test_image_smaller_than_patch_is_padded_and_cropped():
    method, img = TinyMethod(), _image((10, 12))
    small = engine.run_prediction(img, method, n_samples=3, batch_size=3, patch_size=(16, 16))
    whole = engine.run_prediction(img, method, n_samples=3, batch_size=3)
    assert small.maps.mean_probs.shape == (2, 10, 12)
    np.testing.assert_allclose(small.maps.mean_probs, whole.maps.mean_probs, atol=1e-6)


def test_same_seed_identical_different_seed_differs():
    method, img = TinyMethod(), _image()
    a = engine.run_prediction(img, method, n_samples=6, seed=11, patch_size=(16, 16))
    b = engine.run_prediction(img, method, n_samples=6, seed=11, patch_size=(16, 16))
    c = engine.run_prediction(img, method, n_samples=6, seed=12, patch_size=(16, 16))
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.maps.mean_probs, b.maps.mean_probs)
    assert not np.array_equal(a.maps.mean_probs, c.maps.mean_probs)


def test_progress_counts_samples_and_tiles():
    method, img = TinyMethod(), _image((40, 40))
    gen = engine.predict(img, method, n_samples=6, batch_size=2, patch_size=(16, 16), overlap=0.25)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    stages = [e.stage for e in events]
    assert stages[0] == "prepare" and stages[-1] == "finalize"
    sample_events = [e for e in events if e.stage == "sample"]
    assert len(sample_events) == 3 * 9  # 3 batches x 9 tiles
    assert [e.tiles_done for e in sample_events] == list(range(1, 10)) * 3
    assert all(e.tiles_total == 9 and e.samples_total == 6 for e in sample_events)
    assert [e.samples_done for e in sample_events if e.tiles_done == 9] == [2, 4, 6]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len(method.calls) == 27 and all(n == 2 for n, _ in method.calls)
    assert result.n_samples == 6


def test_cancel_stops_promptly_without_result():
    method, img = SlowMethod(), _image((64, 64))
    cancel = threading.Event()
    first_sample = threading.Event()
    outcome = {}

    def work():
        def callback(event):
            if event.stage == "sample":
                first_sample.set()

        try:
            outcome["result"] = engine.run_prediction(
                img,
                method,
                n_samples=16,
                batch_size=2,
                patch_size=(16, 16),
                cancel=cancel,
                callback=callback,
            )
        except engine.Cancelled:
            outcome["cancelled"] = time.perf_counter()

    thread = threading.Thread(target=work)
    thread.start()
    assert first_sample.wait(30)
    t_cancel = time.perf_counter()
    cancel.set()
    thread.join(10)
    assert "result" not in outcome
    assert outcome["cancelled"] - t_cancel < 1.0
    assert len(method.calls) < 10


class _SlowLayer(torch.nn.Module):
    def __init__(self, started):
        super().__init__()
        self.started = started

    def forward(self, x):
        self.started.set()
        time.sleep(0.15)
        return x


class SlowNetworkMethod(TinyMethod):
    """One forward of ``network`` takes 3 s (20 layers x 0.15 s) whatever the batch."""

    def __init__(self, started):
        super().__init__()
        self.network = torch.nn.Sequential(*[_SlowLayer(started) for _ in range(20)])

    def sample(self, x, n, *, generator, first_index=0):
        self.network(x)
        return super().sample(x, n, generator=generator, first_index=first_index)


def test_cancel_interrupts_a_long_forward_and_removes_hooks():
    started, cancel, outcome = threading.Event(), threading.Event(), {}
    method = SlowNetworkMethod(started)

    def work():
        try:
            outcome["result"] = engine.run_prediction(
                _image((16, 16)), method, n_samples=16, cancel=cancel
            )
        except engine.Cancelled:
            outcome["cancelled"] = time.perf_counter()

    thread = threading.Thread(target=work)
    thread.start()
    assert started.wait(30)
    t_cancel = time.perf_counter()
    cancel.set()
    thread.join(10)
    assert "result" not in outcome and outcome["cancelled"] - t_cancel < 1.0
    assert all(not m._forward_pre_hooks for m in method.network.modules())


def test_cancel_callable_before_start():
    with pytest.raises(engine.Cancelled):
        engine.predict(_image(), TinyMethod(), cancel=lambda: True)


def test_oom_halves_batch_and_records_warning():
    method = OOMMethod(limit=2)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        res = engine.run_prediction(_image((20, 20)), method, n_samples=8, batch_size=8)
    assert res.n_samples == 8 and res.samples.shape[0] == 8
    assert [n for n, _ in method.calls if n <= 2] == [2, 2, 2, 2]
    assert res.provenance["batch_size"] == 8 and res.provenance["batch_size_final"] == 2
    assert sum("out of memory" in w for w in res.provenance["warnings"]) == 2  # 8->4, 4->2


def test_oom_on_accelerator_falls_back_to_cpu():
    method = OOMMethod(limit=100)  # fails on any non-CPU device ("meta" stands in for a GPU)
    with pytest.warns(RuntimeWarning, match="falling back to the CPU"):
        res = engine.run_prediction(
            _image((20, 20)), method, n_samples=4, batch_size=2, device="meta"
        )
    assert res.provenance["device"] == "cpu" and res.provenance["device_requested"] == "meta"
    assert any("falling back" in w for w in res.provenance["warnings"])
    assert res.maps.mean_probs.shape == (2, 20, 20)


@pytest.mark.parametrize("streaming", [False, True])
def test_oom_on_cpu_with_one_sample_is_a_memory_error(streaming):
    method = OOMMethod(limit=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(MemoryError, match="on the CPU even with 1 sample per batch"):
            engine.run_prediction(
                _image((20, 20)), method, n_samples=2, batch_size=2, streaming=streaming
            )


def test_2d_model_on_3d_image_slice_by_slice():
    method, vol = TinyMethod(), _image((4, 20, 24))
    with pytest.raises(ValueError, match="slice_by_slice"):
        engine.predict(vol, method)
    res = engine.run_prediction(vol, method, n_samples=3, seed=5, slice_by_slice=True, batch_size=3)
    assert res.samples.shape == (3, 4, 20, 24) and res.maps.mean_probs.shape == (2, 4, 20, 24)
    assert res.provenance["slice_by_slice"] is True
    # the same hypotheses on every plane: each plane equals a 2D run with the same seed
    for z in range(4):
        plane = engine.run_prediction(vol[z], method, n_samples=3, seed=5, batch_size=3)
        np.testing.assert_array_equal(res.samples[:, z], plane.samples)
    # volumes are per sample over the whole volume
    assert res.maps.volumes.shape == (3,)


def test_deterministic_method_draws_one_sample():
    res = engine.run_prediction(_image(), SoftmaxMethod(), n_samples=16)
    assert res.n_samples == 1 and res.samples.shape[0] == 1
    assert res.meanings["mutual_information"] is None
    assert res.provenance["n_samples_requested"] == 16
    assert any("deterministic" in w for w in res.provenance["warnings"])


def test_provenance_fields_and_spacing_warning():
    method = TinyMethod()
    method.card = SimpleNamespace(
        sha256="ab" * 32,
        name="tiny",
        spacing=(1.0, 1.0),
        patch_size=(16, 16),
        normalization={"kind": "zscore"},
    )
    with pytest.warns(RuntimeWarning, match="spacing"):
        res = engine.run_prediction(_image(), method, n_samples=2, scale=(2.0, 2.0))
    p = res.provenance
    for key in (
        "card_sha256",
        "method",
        "method_params",
        "n_samples",
        "seed",
        "device",
        "versions",
        "input_signature",
        "timings",
        "warnings",
        "normalization",
        "tiling",
    ):
        assert key in p, key
    assert p["card_sha256"] == "ab" * 32 and p["method"] == "mc_dropout"
    assert p["method_params"] == {"p": 0.5, "hidden": 8}
    assert set(p["versions"]) == {"napari_probseg", "torch", "numpy", "monai"}
    assert p["versions"]["torch"] == torch.__version__.split("+")[0] or p["versions"]["torch"]
    assert set(p["timings"]) == {"prepare", "sample", "finalize", "total"}
    assert p["tiling"]["patch_size"] == [16, 16] and p["normalization"]["kind"] == "zscore"
    assert p["resampled"] is False and any("does not resample" in w for w in p["warnings"])
    assert res.input_signature == engine.image_signature(_image()) == p["input_signature"]
    assert res.meanings == {"mutual_information": "epistemic", "expected_entropy": "aleatoric"}
    assert res.scale == (2.0, 2.0)


def test_image_signature_detects_changes():
    img = _image((8, 8))
    sig = engine.image_signature(img)
    assert sig.startswith("8x8|float32|sha256:")
    assert engine.image_signature(img.copy()) == sig
    changed = img.copy()
    changed[3, 3] += 1
    assert engine.image_signature(changed) != sig
    assert engine.image_signature(img.astype(np.float64)) != sig
    assert engine.image_signature(img.reshape(4, 16)) != sig


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.full((8, 8), np.nan, np.float32), {}, "^image: contains NaN"),
        (np.zeros((3, 8, 8, 8)), {}, "^image: expected shape"),
        (np.zeros((8, 8)), {"n_samples": 0}, "^n_samples"),
        (np.zeros((8, 8)), {"seed": -1}, "^seed"),
        (np.zeros((8, 8)), {"overlap": 1.5}, "^overlap"),
        (np.zeros((8, 8)), {"device": "cuda"}, "^device"),
        (np.zeros((8, 8)), {"device": "bogus"}, "^device"),
        (np.zeros((8, 8)), {"scale": (1.0,)}, "^scale"),
        (np.zeros((8, 8)), {"normalization": "fancy"}, "^normalization"),
    ],
)
def test_bad_arguments_raise_value_error_at_call(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        engine.predict(image, TinyMethod(), **kwargs)


def test_3d_model_rejects_2d_image_and_channels_are_checked():
    with pytest.raises(ValueError, match="3D model"):
        engine.predict(np.zeros((8, 8)), TinyMethod(spatial_dims=3))
    two = TinyMethod(in_channels=2)
    with pytest.raises(ValueError, match="2 channels"):
        engine.predict(np.zeros((8, 8)), two)
    res = engine.run_prediction(np.zeros((2, 8, 8)), two, n_samples=2)
    assert res.maps.mean_probs.shape == (2, 8, 8)


def test_resolve_device_auto_picks_cuda_then_mps_then_cpu():
    import torch

    # "auto" prefers CUDA, then MPS, then the CPU: on a host with an accelerator it is not the CPU.
    mps = getattr(torch.backends, "mps", None)
    if torch.cuda.is_available():
        expected = "cuda"
    elif mps is not None and mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert engine.resolve_device("auto").type == expected
    assert engine.resolve_device("cpu").type == "cpu"


# -- normalization (known answers) -----------------------------------------------------------


def test_normalize_zscore_known_answer():
    x = np.array([[0.0, 1.0, 2.0, 3.0]])
    out = engine.normalize(x, {"kind": "zscore"})
    np.testing.assert_allclose(out, [[-1.5, -0.5, 0.5, 1.5]] / np.sqrt(1.25), rtol=1e-6)
    out = engine.normalize(x, {"kind": "zscore", "mean": 1.0, "std": 2.0})
    np.testing.assert_allclose(out, [[-0.5, 0.0, 0.5, 1.0]])
    assert out.dtype == np.float32


def test_normalize_percentile_and_window_known_answers():
    x = np.arange(101, dtype=float)[None]
    out = engine.normalize(x, {"kind": "percentile", "low": 10, "high": 90})
    np.testing.assert_allclose(out[0, [10, 50, 90]], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[0, 0], -0.125, atol=1e-6)  # not clipped by default
    clipped = engine.normalize(x, {"kind": "percentile", "low": 10, "high": 90, "clip": True})
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    out = engine.normalize(hu, {"kind": "window", "center": 40, "width": 400})
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(
        engine.normalize(hu, {"mode": "ct_window", "window": [-160, 240]}), out
    )


def test_normalize_per_channel_and_errors():
    x = np.stack([np.arange(4.0), 10 * np.arange(4.0)])
    out = engine.normalize(x, "zscore")
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    assert engine.parse_normalization(None) == {"kind": "none"}
    with pytest.raises(ValueError, match=r"^normalization: window needs"):
        engine.parse_normalization({"kind": "window"})
    with pytest.raises(ValueError, match=r"^image: contains NaN"):
        engine.normalize(np.array([[np.nan]]), "none")


@pytest.mark.parametrize("n", [1025, 100_000])
def test_n_samples_above_the_cap_is_refused_at_call_time(n):
    from napari_probseg.engine._predict import MAX_SAMPLES

    method = TinyMethod()
    with pytest.raises(ValueError, match=rf"^n_samples: at most {MAX_SAMPLES} samples .* got {n}"):
        engine.predict(_image(), method, n_samples=n)  # the generator is not even started
    assert method.calls == []
    res = engine.run_prediction(_image((8, 8)), method, n_samples=1, device="cpu")
    assert res.n_samples == 1  # small N still runs
