"""Model cards: a JSON (or YAML) description of a segmentation model and how to sample from it.

A card names the architecture (a MONAI network or a ``module:factory`` plus its arguments and the
wrapper kind), the weights file (safetensors, or a torch state dict loaded with
``weights_only=True``; TorchScript/pickled models only with ``trust=True``), the classes, the input
(channels, spatial dimensions, normalization, spacing, patch size), the supported sampling methods
with their parameters, the default method, how the model was trained and its held-out metrics.

Example (JSON)::

    {
      "schema_version": 1,
      "name": "lesions2d-dropout-unet",
      "architecture": {"wrapper": "plain", "network": "BasicUNet",
                       "args": {"spatial_dims": 2, "features": [16, 16, 32, 64, 128, 16],
                                "dropout": 0.1, "norm": "batch"},
                       "dropout_mode": "channel"},
      "weights": {"path": "lesions2d-dropout-unet.safetensors", "format": "safetensors",
                  "sha256": "..."},
      "classes": ["background", "lesion"], "in_channels": 1, "spatial_dims": 2,
      "normalization": {"kind": "zscore"}, "spacing": [1.0, 1.0], "patch_size": [128, 128],
      "methods": {"softmax": {"temperature": 1.2}, "mc_dropout": {"p": 0.1}, "tta": {}},
      "default_method": "mc_dropout",
      "training": {...}, "metrics": {...}
    }

This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_probseg.core._normalize import MODES as _NORMALIZATION_KINDS
from napari_probseg.core._normalize import parse_normalization
from napari_probseg.models.errors import MissingModelFileError, ModelCardError

__all__ = [
    "BASE_METHODS",
    "INTENSITY_QUANTILES",
    "NORMALIZATIONS",
    "REFERENCE_QUANTILES",
    "SCHEMA_VERSION",
    "WEIGHT_FORMATS",
    "WRAPPERS",
    "ModelCard",
    "card_sha256",
    "file_sha256",
    "load_card",
]

SCHEMA_VERSION = 1
WRAPPERS = ("plain", "ssn", "prob_unet", "ensemble")
WEIGHT_FORMATS = ("safetensors", "state_dict", "torchscript", "pickle")
# the kinds understood by the engine (napari_probseg.engine.normalize)
NORMALIZATIONS = (*(k for k in _NORMALIZATION_KINDS if k != "none"), "none")
BASE_METHODS = ("softmax", "mc_dropout", "ensemble", "tta", "ssn", "prob_unet", "laplace")

# Which base methods each wrapper kind can serve (tta composes with any of them).
_WRAPPER_METHODS = {
    "plain": {"softmax", "mc_dropout", "tta", "laplace"},
    "ensemble": {"ensemble", "tta"},
    "ssn": {"ssn", "tta"},
    "prob_unet": {"prob_unet", "tta"},
}


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_sha256(card: ModelCard | str | Path) -> str:
    """Return the sha256 of a card: of its file when it has one, else of its canonical JSON."""
    if isinstance(card, ModelCard):
        if card.path is not None and Path(card.path).is_file():
            return file_sha256(card.path)
        return hashlib.sha256(card.to_json().encode()).hexdigest()
    return file_sha256(card)


@dataclass
class ModelCard:
    """A model card (see the module docstring for the file format).

    Attributes
    ----------
    name : str
        Identifier of the model.
    architecture : dict
        ``wrapper`` (one of `WRAPPERS`), ``network`` (a name in ``monai.networks.nets``) or
        ``factory`` (``"module:callable"``), ``args`` (keyword arguments) and wrapper-specific keys:
        ``dropout_mode`` ("channel" | "element"), ``members`` (ensemble), ``rank`` (ssn),
        ``latent_dim`` (prob_unet), ``feature_layer`` (the 1x1 output conv cut off to get features,
        default ``"final_conv"``), ``last_layer`` (laplace, default ``"final_conv"``).
    weights : dict
        ``path`` (relative to the card), ``format`` (one of `WEIGHT_FORMATS`), optional ``sha256``.
    classes : list of str
        Class names, background first.
    in_channels, spatial_dims : int
    normalization : dict
        ``{"kind": "zscore"}``, ``{"kind": "percentile", "low": 1, "high": 99}``,
        ``{"kind": "window", "center": c, "width": w}``, ``{"kind": "minmax"}`` or
        ``{"kind": "none"}``; applied by ``napari_probseg.engine.normalize``.
    spacing : tuple of float or None
        Pixel spacing of the training data, spatial axes (plane, row, column).
    patch_size : tuple of int
        Tile size the engine should use.
    methods : dict of str to dict
        Supported base methods and their parameters; ``"tta+<inner>"`` is available when both ``tta``
        and ``<inner>`` are (see `available_methods`).
    default_method : str
    description : str
    training : dict
        How the model was trained (data, epochs, seed...).
    metrics : dict
        Held-out metrics (e.g. Dice of the consensus, GED16).
    training_distribution : dict or None
        What the model was trained on, for the engine's input check
        (``napari_probseg.engine._domain``): ``data`` (str), ``synthetic`` (bool), ``n_images``
        (int), ``spacing`` (list of float) and ``intensity_quantiles`` (``{"0.01": v, "0.05": v,
        "0.5": v, "0.95": v, "0.99": v}``: quantiles of the *normalised* intensities over the
        training images). None when unknown.
    reference : dict or None
        The in-domain distribution, over held-out images, of each image-level score of the engine's
        summary: ``{"data": str, "n_images": int, "methods": {<method>: {"<map>/<aggregation>" or
        "structure/<measure>": {"n": int, "quantiles": {"0.05": v, "0.5": v, "0.95": v,
        "0.99": v}}}}, "verdict": {<method>: {"epistemic": key, "aleatoric": key or None,
        "chosen_by": str, "detection": {key: share}}}}``; ``verdict`` (optional) names the
        scores the verdict compares (``napari_probseg.training.reference``). None when unknown.
    schema_version : int
    path : Path or None
        File the card was read from; relative file names resolve against its folder.
    """

    name: str
    architecture: dict[str, Any]
    weights: dict[str, Any]
    classes: list[str]
    in_channels: int
    spatial_dims: int
    normalization: dict[str, Any]
    patch_size: tuple[int, ...]
    methods: dict[str, dict[str, Any]]
    default_method: str
    spacing: tuple[float, ...] | None = None
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training_distribution: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    schema_version: int = SCHEMA_VERSION
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        def fail(field_name: str, expected: str, value: Any) -> ModelCardError:
            return ModelCardError(f"{field_name}: expected {expected}, got {value!r}")

        if not isinstance(self.classes, (list, tuple)):
            raise fail("classes", "a list of class names", self.classes)
        self.classes = [str(c) for c in self.classes]
        if not isinstance(self.patch_size, (list, tuple)) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in self.patch_size
        ):
            raise fail("patch_size", "a list of integers", self.patch_size)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.spacing is not None:
            if not isinstance(self.spacing, (list, tuple)) or not all(
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v > 0
                for v in self.spacing
            ):
                raise fail("spacing", "a list of finite positive numbers", self.spacing)
            self.spacing = tuple(float(s) for s in self.spacing)
        if not isinstance(self.methods, dict) or not all(
            isinstance(v, dict) or v is None for v in self.methods.values()
        ):
            raise fail("methods", "a mapping of method name to parameters", self.methods)
        self.methods = {str(k): dict(v or {}) for k, v in dict(self.methods).items()}
        self.validate()

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise `ModelCardError` naming the first invalid field."""

        def bad(field_name: str, msg: str) -> ModelCardError:
            return ModelCardError(f"{field_name}: {msg} (card {self.name!r})")

        def integer(field_name: str, value: Any) -> int:
            # bool is an int subclass and "3" is not a number: name the field, not int()'s error
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(field_name, f"expected an integer, got {value!r}")
            if not math.isfinite(value) or value != int(value):
                raise bad(field_name, f"expected an integer, got {value!r}")
            return int(value)

        if not isinstance(self.name, str) or not self.name:
            raise ModelCardError("name: expected a non-empty string")
        if self.schema_version != SCHEMA_VERSION:
            raise bad("schema_version", f"unsupported version {self.schema_version!r}")
        arch = self.architecture
        if not isinstance(arch, dict):
            raise bad("architecture", "expected a mapping")
        if arch.get("wrapper", "plain") not in WRAPPERS:
            raise bad(
                "architecture.wrapper", f"expected one of {WRAPPERS}, got {arch['wrapper']!r}"
            )
        if ("network" in arch) == ("factory" in arch):
            raise bad("architecture", "give exactly one of 'network' (MONAI name) or 'factory'")
        if "factory" in arch and ":" not in str(arch["factory"]):
            raise bad(
                "architecture.factory", f"expected 'module:callable', got {arch['factory']!r}"
            )
        if not isinstance(arch.get("args", {}), dict):
            raise bad("architecture.args", "expected a mapping of keyword arguments")
        if (
            arch.get("wrapper") == "ensemble"
            and integer("architecture.members", arch.get("members", 0)) < 1
        ):
            raise bad("architecture.members", "an ensemble needs members >= 1")
        if arch.get("wrapper") == "ssn" and integer("architecture.rank", arch.get("rank", 0)) < 1:
            raise bad("architecture.rank", "an SSN needs rank >= 1")
        if (
            arch.get("wrapper") == "prob_unet"
            and integer("architecture.latent_dim", arch.get("latent_dim", 0)) < 1
        ):
            raise bad("architecture.latent_dim", "a probabilistic U-Net needs latent_dim >= 1")
        if not isinstance(self.weights, dict) or "path" not in self.weights:
            raise bad("weights", "expected a mapping with a 'path'")
        if self.weights.get("format", "safetensors") not in WEIGHT_FORMATS:
            raise bad("weights.format", f"expected one of {WEIGHT_FORMATS}")
        if len(self.classes) < 2:
            raise bad("classes", f"expected at least 2 class names, got {self.classes}")
        if self.spatial_dims not in (2, 3):
            raise bad("spatial_dims", f"expected 2 or 3, got {self.spatial_dims!r}")
        if integer("in_channels", self.in_channels) < 1:
            raise bad("in_channels", f"expected >= 1, got {self.in_channels!r}")
        if len(self.patch_size) != self.spatial_dims or min(self.patch_size) < 1:
            raise bad("patch_size", f"expected {self.spatial_dims} positive sizes")
        if self.spacing is not None and len(self.spacing) != self.spatial_dims:
            raise bad("spacing", f"expected {self.spatial_dims} values")
        if not isinstance(self.normalization, dict):
            raise bad("normalization", f"expected a mapping, got {self.normalization!r}")
        try:  # the engine's own parser, so a card that validates also normalises
            parse_normalization(self.normalization)
        except ValueError as exc:
            raise ModelCardError(f"{exc} (card {self.name!r})") from None
        if self.training_distribution is not None:
            _check_training_distribution(self.training_distribution, self.spatial_dims, bad)
        if self.reference is not None:
            _check_reference(self.reference, bad)
        allowed = _WRAPPER_METHODS[arch.get("wrapper", "plain")]
        for m in self.methods:
            if m not in BASE_METHODS:
                raise bad("methods", f"unknown method {m!r}; known: {', '.join(BASE_METHODS)}")
            if m not in allowed:
                raise bad("methods", f"method {m!r} cannot run on a {arch['wrapper']!r} network")
        if self.default_method not in self.available_methods:
            raise bad("default_method", f"{self.default_method!r} is not among {self.methods}")

    # -- convenience --------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def wrapper(self) -> str:
        return str(self.architecture.get("wrapper", "plain"))

    @property
    def available_methods(self) -> list[str]:
        """Base methods, then the TTA compositions ``"tta+<inner>"``.

        ``"tta"`` alone (TTA over the softmax) is listed only for plain networks; on other wrappers
        ``"tta"`` in `methods` just enables ``"tta+<wrapper method>"``.
        """
        # "tta" alone is TTA over the plain softmax, so only plain networks list it
        names = [m for m in self.methods if m != "tta" or self.wrapper == "plain"]
        if "tta" in self.methods:
            names += [f"tta+{m}" for m in self.methods if m not in ("tta", "softmax")]
        return names

    @property
    def sha256(self) -> str:
        """sha256 of the card file (of its canonical JSON when not read from a file)."""
        return card_sha256(self)

    def resolve(self, relative: str | Path) -> Path:
        """Resolve a file name of the card against the card's folder."""
        p = Path(relative)
        if not p.is_absolute() and self.path is not None:
            p = Path(self.path).parent / p
        return p

    @property
    def weights_path(self) -> Path:
        return self.resolve(self.weights["path"])

    # -- (de)serialization --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the card (without ``path``)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "path":
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return json.loads(json.dumps(out))  # deep copy, plain types only

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the card as JSON, or YAML when ``path`` ends in ``.yaml``/``.yml``."""
        path = Path(path)
        text = self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json()
        path.write_text(text, encoding="utf-8")
        self.path = path
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: str | Path | None = None) -> ModelCard:
        """Build a card from a dict; unknown keys raise `ModelCardError`."""
        if not isinstance(data, dict):
            raise ModelCardError(f"card: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        unknown = set(data) - names
        if unknown:
            raise ModelCardError(f"card: unknown field(s) {sorted(unknown)}")
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = required - set(data)
        if missing:
            raise ModelCardError(f"card: missing field(s) {sorted(missing)}")
        try:
            return cls(**data, path=Path(path) if path is not None else None)
        except (TypeError, KeyError) as exc:
            raise ModelCardError(f"card: invalid field value ({exc})") from exc


#: Quantile keys of ``training_distribution["intensity_quantiles"]`` and of ``reference`` entries.
INTENSITY_QUANTILES = ("0.01", "0.05", "0.5", "0.95", "0.99")
REFERENCE_QUANTILES = ("0.05", "0.5", "0.95", "0.99")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_quantiles(q: Any, keys: tuple[str, ...], name: str, bad: Any) -> None:
    if not isinstance(q, dict) or set(q) != set(keys):
        raise bad(name, f"expected a mapping with exactly the keys {list(keys)}")
    values = [q[k] for k in keys]
    if not all(_finite_number(v) for v in values):
        raise bad(name, f"expected finite numbers, got {values}")
    if any(b < a for a, b in itertools.pairwise(values)):
        raise bad(name, f"expected non-decreasing quantiles, got {values}")


def _check_training_distribution(td: Any, spatial_dims: int, bad: Any) -> None:
    """Validate ``training_distribution`` (see `ModelCard`), naming the bad sub-field."""
    name = "training_distribution"
    if not isinstance(td, dict):
        raise bad(name, "expected a mapping")
    keys = {"data", "synthetic", "n_images", "spacing", "intensity_quantiles"}
    if set(td) != keys:
        raise bad(name, f"expected exactly the keys {sorted(keys)}, got {sorted(td)}")
    if not isinstance(td["data"], str) or not td["data"]:
        raise bad(f"{name}.data", "expected a non-empty string")
    if not isinstance(td["synthetic"], bool):
        raise bad(f"{name}.synthetic", f"expected true or false, got {td['synthetic']!r}")
    n = td["n_images"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad(f"{name}.n_images", f"expected a positive integer, got {n!r}")
    sp = td["spacing"]
    if (
        not isinstance(sp, list)
        or len(sp) != spatial_dims
        or not all(_finite_number(v) and v > 0 for v in sp)
    ):
        raise bad(f"{name}.spacing", f"expected {spatial_dims} positive numbers, got {sp!r}")
    _check_quantiles(
        td["intensity_quantiles"], INTENSITY_QUANTILES, f"{name}.intensity_quantiles", bad
    )


def _check_reference(ref: Any, bad: Any) -> None:
    """Validate ``reference`` (see `ModelCard`), naming the bad sub-field."""
    name = "reference"
    if not isinstance(ref, dict) or not (
        {"data", "n_images", "methods"} <= set(ref) <= {"data", "n_images", "methods", "verdict"}
    ):
        raise bad(
            name,
            "expected a mapping with the keys 'data', 'n_images', 'methods' and optionally "
            "'verdict'",
        )
    if not isinstance(ref["data"], str) or not ref["data"]:
        raise bad(f"{name}.data", "expected a non-empty string")
    n = ref["n_images"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad(f"{name}.n_images", f"expected a positive integer, got {n!r}")
    if not isinstance(ref["methods"], dict):
        raise bad(f"{name}.methods", "expected a mapping of method name to scores")
    for method, scores in ref["methods"].items():
        where = f"{name}.methods.{method}"
        if not isinstance(scores, dict) or not scores:
            raise bad(where, "expected a non-empty mapping of score name to distribution")
        for key, entry in scores.items():
            if not isinstance(key, str) or key.count("/") != 1 or "" in key.split("/"):
                raise bad(where, f"score names are '<map>/<aggregation>', got {key!r}")
            if not isinstance(entry, dict) or set(entry) != {"n", "quantiles"}:
                raise bad(f"{where}.{key}", "expected a mapping with 'n' and 'quantiles'")
            en = entry["n"]
            if not isinstance(en, int) or isinstance(en, bool) or en < 1:
                raise bad(f"{where}.{key}.n", f"expected a positive integer, got {en!r}")
            _check_quantiles(
                entry["quantiles"], REFERENCE_QUANTILES, f"{where}.{key}.quantiles", bad
            )
    _check_verdict_choice(ref.get("verdict"), ref["methods"], bad)


def _check_verdict_choice(choice: Any, methods: dict, bad: Any) -> None:
    """Validate ``reference.verdict``: per method the score keys the verdict compares, each one
    a score of that method's reference (a key it has no quantiles for could never be judged)."""
    if choice is None:
        return
    name = "reference.verdict"
    if not isinstance(choice, dict):
        raise bad(name, "expected a mapping of method name to chosen scores")
    for method, entry in choice.items():
        where = f"{name}.{method}"
        if method not in methods:
            raise bad(where, "no reference scores for this method")
        if not isinstance(entry, dict) or not isinstance(entry.get("epistemic"), str):
            raise bad(where, "expected a mapping with an 'epistemic' score name")
        for role in ("epistemic", "aleatoric"):
            key = entry.get(role)
            if key is None and role == "aleatoric":
                continue
            if not isinstance(key, str) or key not in methods[method]:
                raise bad(f"{where}.{role}", f"not a score of the method's reference: {key!r}")
        if "chosen_by" in entry and not isinstance(entry["chosen_by"], str):
            raise bad(f"{where}.chosen_by", "expected a string")


def load_card(path: str | Path) -> ModelCard:
    """Read a card from a JSON or YAML file.

    Raises
    ------
    MissingModelFileError
        If the file does not exist.
    ModelCardError
        If it cannot be parsed or is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(f"path: model card {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json/yaml raise various types
        raise ModelCardError(f"path: cannot parse model card {str(path)!r}: {exc}") from exc
    return ModelCard.from_dict(data, path=path)
