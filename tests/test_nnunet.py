"""nnU-Net v2 trained-model folders as sampling methods: correctness against nnU-Net's own
predictor, the engine's whole-image path, the CLI, safety and the Method protocol."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
torch = pytest.importorskip("torch")

from napari_probseg import engine  # noqa: E402
from napari_probseg.models import UntrustedModelError, load_method  # noqa: E402
from napari_probseg.models.adapters import (  # noqa: E402
    MissingExtraError,
    detect_model_folder,
    inspect_model_folder,
)
from napari_probseg.models.errors import MissingModelFileError, ModelCardError  # noqa: E402
from napari_probseg.models.protocol import MethodProtocol, WholeImageMethod  # noqa: E402
from nnunet_helpers import CLASSES, build_nnunet_folder, nnunet_reference  # noqa: E402

SHAPES = {3: (1, 10, 12, 9), 2: (1, 20, 18)}


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def model(request, tmp_path_factory):
    dims = request.param
    folder = build_nnunet_folder(tmp_path_factory.mktemp(f"nnunet{dims}d"), spatial_dims=dims)
    image = np.random.default_rng(dims).normal(1.0, 2.0, SHAPES[dims]).astype(np.float32)
    return dims, folder, image


def _all_hypotheses(method, image):
    out = np.zeros((method.n_hypotheses, method.n_classes, *image.shape[1:]), np.float32)
    for rows, probs in method.predict_hypotheses(
        image, scale=None, indices=list(range(method.n_hypotheses)), check_cancel=lambda: None
    ):
        out[rows] = probs
    return out


def test_folder_is_described_without_loading(model):
    dims, folder, _ = model
    assert detect_model_folder(folder) == "nnunet"
    info = inspect_model_folder(folder)
    assert info.kind == "nnunet"
    assert info.class_names == CLASSES
    assert info.spatial_dims == dims and info.in_channels == 1
    assert info.methods[0] == "tta+ensemble"


def test_hypotheses_reproduce_nnunet(model):
    """softmax is nnU-Net's own output; each fold alone is nnU-Net with that fold; the mean of the
    fold x mirroring hypotheses' logits is nnU-Net's ensemble of the same folds."""
    dims, folder, image = model
    ref = nnunet_reference(folder, image, folds=(0, 1))

    softmax = load_method(folder, "softmax")
    assert softmax.deterministic and softmax.n_hypotheses == 1
    np.testing.assert_allclose(_all_hypotheses(softmax, image)[0], ref, atol=1e-6)

    ensemble = load_method(folder, "ensemble")
    folds = _all_hypotheses(ensemble, image)
    assert folds.shape == (2, 3, *image.shape[1:])
    for f in (0, 1):
        np.testing.assert_allclose(folds[f], nnunet_reference(folder, image, folds=(f,)), atol=1e-5)
    assert np.abs(folds[0] - folds[1]).max() > 1e-3  # the folds really differ

    both = load_method(folder, "tta+ensemble")
    n_mirror = 2**dims
    assert both.n_hypotheses == 2 * n_mirror and both.source == ("input", "parameter")
    data, props = both.preprocess(image, None)
    logits = dict(both.hypothesis_logits(data, list(range(both.n_hypotheses))))
    assert sorted(logits) == list(range(both.n_hypotheses))
    # hypothesis 0 = fold 0 without mirroring = nnU-Net with one fold and no mirroring
    plain0 = both.export(logits[0], props, squeeze=dims == 2)
    np.testing.assert_allclose(
        plain0, nnunet_reference(folder, image, folds=(0,), use_mirroring=False), atol=1e-5
    )
    mean = torch.stack([v.float() for v in logits.values()]).mean(0)
    mean_probs = both.export(mean, props, squeeze=dims == 2)
    # nnU-Net accumulates tiles in float16 with gaussian weights that fall below float16's range
    # at a tile's edges (~1e-11 in its corners): at the image border its own output carries that
    # rounding noise, so the identity is checked where its weights are representable
    inner = (slice(None), *[slice(2, -2)] * dims)
    assert np.abs(mean_probs - ref)[inner].max() <= 1e-4
    streamed = dict(
        (rows[0], probs[0])
        for rows, probs in both.predict_hypotheses(
            image, scale=None, indices=[5, 2], check_cancel=lambda: None
        )
    )
    for row, h in ((0, 5), (1, 2)):
        np.testing.assert_allclose(
            streamed[row], both.export(logits[h], props, squeeze=dims == 2), atol=1e-6
        )
    # the mirrorings differ from each other (a wrong flip would not average to nnU-Net's output)
    assert np.abs(streamed[1] - plain0).max() > 1e-3


def test_engine_runs_folder_like_our_models(model):
    dims, folder, image = model
    method = load_method(folder)
    assert isinstance(method, MethodProtocol) and isinstance(method, WholeImageMethod)
    events = []
    result = engine.run_prediction(
        image[0], method, n_samples=64, seed=3, device="cpu", callback=events.append
    )
    n = 2 * 2**dims
    assert result.n_samples == n and result.samples.shape == (n, *image.shape[1:])
    assert any("distinct" in w for w in result.provenance["warnings"])
    assert result.method == "tta+ensemble"
    assert result.maps.mean_probs.shape == (3, *image.shape[1:])
    np.testing.assert_allclose(result.maps.mean_probs.sum(0), 1.0, atol=1e-5)
    assert float(result.maps.mutual_information.max()) > 0
    prov = result.provenance
    assert prov["card_sha256"] == method.model_sha256 and len(prov["card_sha256"]) == 64
    assert prov["method_params"]["folds"] == [0, 1]
    assert prov["input_signature"] == engine.image_signature(image[0])
    assert events[0].stage == "prepare" and events[-1].stage == "finalize"
    assert result.class_names == CLASSES
    summary = engine.summarize(result)
    assert summary["method"] == "tta+ensemble" and summary["n_samples"] == n

    calls = {"n": 0}

    def cancel_after_first_pass() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(engine.Cancelled):
        engine.run_prediction(image[0], method, n_samples=4, cancel=cancel_after_first_pass)


def test_cli_predict_on_folder(model, tmp_path):
    from napari_probseg.cli import main

    dims, folder, image = model
    if dims == 2:
        pytest.skip("the 3D folder covers the CLI")
    npy = tmp_path / "img.npy"
    np.save(npy, image[0])
    out = tmp_path / "pred.zarr"
    code = main(
        ["predict", str(npy), "--model", str(folder), "--method", "ensemble", "--folds", "0,1",
         "--out", str(out), "--json", "-n", "8"]
    )  # fmt: skip
    assert code == 0
    result, _ = engine.load_result(out)
    assert result.method == "ensemble" and result.n_samples == 2
    assert result.samples.shape == (2, *image.shape[1:])
    assert main(["predict", str(npy), "--model", str(folder), "--method", "mc_dropout",
                 "--out", str(tmp_path / "x.zarr")]) != 0  # fmt: skip


def test_protocol_covers_our_methods(tmp_path):
    from model_helpers import tiny_card

    method = load_method(tiny_card(tmp_path), "mc_dropout")
    assert isinstance(method, MethodProtocol)
    assert not isinstance(method, WholeImageMethod)


class _Sentinel:
    """Unpickling this writes a file: proof that code from the checkpoint ran."""

    path = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_malicious_checkpoint_never_runs_without_trust(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    evil = _Sentinel()
    evil.path = str(sentinel)
    folder = build_nnunet_folder(tmp_path / "m", spatial_dims=2, extra={"payload": evil})
    assert not sentinel.exists()
    with pytest.raises(UntrustedModelError, match="trust"):
        load_method(folder, "ensemble")
    assert not sentinel.exists()
    load_method(folder, "ensemble", trust=True)  # the user trusts it: nnU-Net's own behaviour
    assert sentinel.read_text() == "pwned"


def test_plans_importing_arbitrary_classes_need_trust(tmp_path):
    folder = build_nnunet_folder(tmp_path, spatial_dims=2)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(UntrustedModelError, match=r"os\.system"):
        load_method(folder, "softmax")


def test_regions_and_missing_folds_are_refused(tmp_path):
    folder = build_nnunet_folder(
        tmp_path / "r", spatial_dims=2, labels={"background": 0, "whole": [1, 2], "core": 2}
    )
    with pytest.raises(ModelCardError, match="region"):
        inspect_model_folder(folder)
    folder = build_nnunet_folder(tmp_path / "f", spatial_dims=2, folds=1)
    from napari_probseg.models.adapters.nnunet import load_nnunet

    with pytest.raises(MissingModelFileError, match="fold"):
        load_nnunet(folder, folds=[0, 3])
    one = load_method(folder, "ensemble")
    assert one.n_hypotheses == 1 and one.folds == (0,)


def test_without_nnunetv2_the_error_names_the_extra(tmp_path, monkeypatch):
    folder = build_nnunet_folder(tmp_path, spatial_dims=2, folds=1)
    for name in [m for m in sys.modules if m == "nnunetv2" or m.startswith("nnunetv2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import nnunetv2 -> ImportError
    with pytest.raises(MissingExtraError, match=r"napari-probseg\[nnunet\]"):
        load_method(folder)


def test_napari_run_panel_adds_and_runs_a_folder(make_napari_viewer, qtbot, tmp_path):
    pytest.importorskip("napari")
    from napari_probseg._napari._run_widget import LOAD_FOLDER, RunWidget

    folder = build_nnunet_folder(tmp_path / "ok", spatial_dims=2)
    viewer = make_napari_viewer()
    image = np.random.default_rng(0).normal(size=(20, 18)).astype(np.float32)
    viewer.add_image(image, name="scan")
    widget = RunWidget(viewer)
    items = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert LOAD_FOLDER in items
    assert not widget.add_model_folder(tmp_path / "missing")  # a notification, no traceback
    assert widget.add_model_folder(folder)
    methods = [widget.method_combo.itemText(i) for i in range(widget.method_combo.count())]
    assert methods == ["tta+ensemble", "ensemble", "tta", "softmax"]
    widget.select(image="scan", method="ensemble", n_samples=4, device="cpu")
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.last_error is None and widget.last_record is not None
    assert len(viewer.layers) > 1

    # a checkpoint that would run code: refused until the user confirms in a dialog
    sentinel = tmp_path / "sentinel.txt"
    evil = _Sentinel()
    evil.path = str(sentinel)
    bad = build_nnunet_folder(tmp_path / "bad", spatial_dims=2, folds=1, extra={"x": evil})
    asked: list[str] = []
    widget._confirm_trust = lambda message: asked.append(message) or False
    assert widget.add_model_folder(bad)
    widget.select(image="scan", method="softmax", device="cpu")
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert asked and "trust" in asked[0] and not sentinel.exists(), repr(widget.last_error)
    assert isinstance(widget.last_error, UntrustedModelError)
