"""Probabilistic segmentation models: networks, sampling methods, model cards and loading.

Cards and errors import without torch; the torch-based parts (methods, networks, loading) are
imported lazily on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

from napari_probseg.models.cards import ModelCard, card_sha256, load_card
from napari_probseg.models.errors import (
    ChannelMismatchError,
    DegenerateCovarianceWarning,
    DimensionalityError,
    IncompatibleInputError,
    MissingModelFileError,
    ModelCardError,
    UnknownMethodError,
    UntrustedModelError,
    WeightsHashError,
    WeightsMismatchError,
)
from napari_probseg.models.registry import bundled_models

_LAZY = {
    "Method": "methods",
    "SoftmaxMethod": "methods",
    "MCDropoutMethod": "methods",
    "EnsembleMethod": "methods",
    "TTAMethod": "methods",
    "SSNMethod": "methods",
    "ProbUNetMethod": "methods",
    "LaplaceMethod": "methods",
    "build_network": "networks",
    "load_method": "loading",
    "MethodProtocol": "protocol",
    "WholeImageMethod": "protocol",
    "load_network": "loading",
    "build_method": "loading",
    "resolve_card": "loading",
}

__all__ = [
    "ChannelMismatchError",
    "DegenerateCovarianceWarning",
    "DimensionalityError",
    "IncompatibleInputError",
    "MissingModelFileError",
    "ModelCard",
    "ModelCardError",
    "UnknownMethodError",
    "UntrustedModelError",
    "WeightsHashError",
    "WeightsMismatchError",
    "bundled_models",
    "card_sha256",
    "load_card",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"napari_probseg.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'napari_probseg.models' has no attribute {name!r}")
