"""Model cards: round trips, hashes, loading errors and trust."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from napari_probseg.models import (
    ChannelMismatchError,
    DimensionalityError,
    IncompatibleInputError,
    MissingModelFileError,
    ModelCard,
    ModelCardError,
    UnknownMethodError,
    UntrustedModelError,
    WeightsHashError,
    WeightsMismatchError,
    bundled_models,
    load_card,
    load_method,
    load_network,
)
from napari_probseg.models.loading import resolve_card
from test_models import make_card


def test_json_and_yaml_round_trip(tmp_path):
    card = make_card(tmp_path, "ssn", 3)
    card.metrics = {"ssn": {"ged16": 0.5}}
    card.spacing = (2.0, 1.0, 1.0)
    for suffix in (".json", ".yaml"):
        path = card.save(tmp_path / f"copy{suffix}")
        back = load_card(path)
        assert back == card
        assert back.spacing == (2.0, 1.0, 1.0) and back.patch_size == (16, 16, 16)
        assert back.path == path
    raw = json.loads((tmp_path / "copy.json").read_text())
    assert raw["schema_version"] == 1 and raw["architecture"]["wrapper"] == "ssn"


def test_sha256_of_card_file_and_weights_verified(tmp_path):
    card = make_card(tmp_path)
    assert card.sha256 == hashlib.sha256(card.path.read_bytes()).hexdigest()
    w = card.weights_path
    card.weights["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    card.save(card.path)
    load_network(card.path)  # matches
    net = load_network(card.path)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_file(state, str(w))
    with pytest.raises(WeightsHashError, match="sha256"):
        load_network(card.path)


def test_missing_weights(tmp_path):
    card = make_card(tmp_path)
    card.weights_path.unlink()
    with pytest.raises(MissingModelFileError, match="not found") as info:
        load_method(card.path, "softmax")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    with pytest.raises(MissingModelFileError):
        load_card(tmp_path / "nope.json")
    with pytest.raises(MissingModelFileError, match="bundled"):
        resolve_card("no-such-model")


def test_mismatched_weights_name_keys_and_shapes(tmp_path):
    card = make_card(tmp_path)
    other = make_card(tmp_path / ".." / tmp_path.name, "plain", 2, name="other")
    # a network with wider features: same keys, other shapes
    card.architecture["args"]["features"] = [4, 4, 4, 4, 8, 4]
    card.save(card.path)
    with pytest.raises(WeightsMismatchError, match="shape mismatches") as info:
        load_network(card.path)
    assert info.value.shape_mismatch and "down_4" in info.value.shape_mismatch[0][0]
    # missing / unexpected keys
    save_file({"foo": torch.zeros(2)}, str(other.weights_path))
    with pytest.raises(WeightsMismatchError, match=r"missing keys: .*unexpected keys: foo") as info:
        load_network(other.path)
    assert "foo" in info.value.unexpected and info.value.missing


def test_untrusted_torchscript_and_pickle(tmp_path):
    net = torch.jit.script(nn.Sequential(nn.Conv2d(1, 2, 1)))
    net.save(str(tmp_path / "m.pt"))
    card = make_card(tmp_path)
    card.weights = {"path": "m.pt", "format": "torchscript"}
    card.methods = {"softmax": {}}
    card.default_method = "softmax"
    card.save(card.path)
    with pytest.raises(UntrustedModelError, match="trust=True"):
        load_method(card.path)
    m = load_method(card.path, trust=True)
    assert m.sample(torch.randn(1, 1, 5, 5), 1).shape == (1, 2, 5, 5)
    torch.save(nn.Conv2d(1, 2, 1), tmp_path / "full.pt")
    card.weights = {"path": "full.pt", "format": "pickle"}
    card.save(card.path)
    with pytest.raises(UntrustedModelError, match="executes code"):
        load_network(card.path)
    # a pickled module under the "state_dict" format is refused by weights_only=True
    card.weights = {"path": "full.pt", "format": "state_dict"}
    card.save(card.path)
    with pytest.raises(ModelCardError, match="weights_only=True"):
        load_network(card.path)


def test_state_dict_format_loads_with_weights_only(tmp_path):
    card = make_card(tmp_path)
    net = load_network(card.path)
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    card.weights = {"path": "sd.pt", "format": "state_dict"}
    card.save(card.path)
    again = load_network(card.path)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


def test_third_party_factory_needs_trust(tmp_path):
    card = make_card(tmp_path)
    data = card.to_dict()
    data["architecture"] = {
        "wrapper": "plain",
        "factory": "torch.nn:Conv2d",
        "args": {"in_channels": 1, "out_channels": 2, "kernel_size": 1},
    }
    data["methods"] = {"softmax": {}}
    data["default_method"] = "softmax"
    c = ModelCard.from_dict(data, path=card.path)
    save_file(nn.Conv2d(1, 2, 1).state_dict(), str(c.weights_path))
    c.save(card.path)
    with pytest.raises(UntrustedModelError, match=r"torch\.nn"):
        load_network(c.path)
    assert load_method(c.path, trust=True).sample(torch.randn(1, 1, 4, 4), 1).shape[1] == 2


def test_unknown_method_lists_supported(tmp_path):
    card = make_card(tmp_path, "ssn")
    with pytest.raises(UnknownMethodError, match="supported: ssn, tta\\+ssn") as info:
        load_method(card.path, "mc_dropout")
    assert info.value.supported == ["ssn", "tta+ssn"]
    assert card.available_methods == ["ssn", "tta+ssn"]


def test_input_errors_are_typed(tmp_path):
    m = load_method(make_card(tmp_path).path, "softmax")
    with pytest.raises(DimensionalityError, match="slice by slice") as info:
        m.sample(torch.randn(1, 1, 16, 16, 16), 1)
    assert (info.value.model_dims, info.value.image_dims) == (2, 3)
    with pytest.raises(ChannelMismatchError, match="1 channel") as info2:
        m.sample(torch.randn(1, 3, 16, 16), 1)
    assert isinstance(info2.value, IncompatibleInputError) and info2.value.got == 3
    with pytest.raises(ValueError, match=r"^n:"):
        m.sample(torch.randn(1, 1, 16, 16), 0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"classes": ["only"]}, "classes"),
        ({"patch_size": [16]}, "patch_size"),
        ({"normalization": {"kind": "magic"}}, "normalization.kind"),
        ({"default_method": "laplace"}, "default_method"),
        ({"methods": {"ssn": {}}}, "methods"),
        ({"schema_version": 99}, "schema_version"),
        ({"weights": {"path": "x", "format": "onnx"}}, "weights.format"),
        ({"bogus": 1}, "unknown field"),
    ],
)
def test_invalid_cards_name_the_field(tmp_path, change, field):
    data = make_card(tmp_path).to_dict()
    data["methods"] = {"softmax": {}, "mc_dropout": {}}
    data["default_method"] = "softmax"
    data.update(change)
    with pytest.raises(ModelCardError, match=field):
        ModelCard.from_dict(data)


def test_unparsable_card(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModelCardError, match="cannot parse"):
        load_card(tmp_path / "bad.json")


def test_bundled_registry_and_name_resolution():
    cards = bundled_models()
    for name, card in cards.items():
        assert card.name == name and resolve_card(name) is not None
        assert card.path is not None and card.path.suffix == ".json"
