"""Typed errors of the models layer, so that callers (engine, CLI, napari) can react to each case.

Every error is a ``ValueError`` (bad card / bad input), except where a more specific builtin fits too
(a missing file is also a ``FileNotFoundError``).
"""

from __future__ import annotations

__all__ = [
    "ChannelMismatchError",
    "DegenerateCovarianceWarning",
    "DimensionalityError",
    "IncompatibleInputError",
    "MissingModelFileError",
    "ModelCardError",
    "UnknownMethodError",
    "UntrustedModelError",
    "WeightsHashError",
    "WeightsMismatchError",
]


class ModelCardError(ValueError):
    """A model card is invalid, or what it points at cannot be loaded."""


class MissingModelFileError(ModelCardError, FileNotFoundError):
    """A card, weights or curvature file named by a card does not exist."""


class WeightsMismatchError(ModelCardError):
    """The weights do not fit the architecture; the message lists the offending keys and shapes.

    Attributes
    ----------
    missing, unexpected : list of str
        Keys the network expects but the file lacks, and keys the file has but the network lacks.
    shape_mismatch : list of tuple
        ``(key, shape in file, shape in network)``.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.shape_mismatch = list(shape_mismatch or [])


class WeightsHashError(ModelCardError):
    """The sha256 of a weights file differs from the one recorded in its card."""


class UntrustedModelError(ModelCardError):
    """Loading this model would execute code from the file (TorchScript, pickle) or from an arbitrary
    module (a ``module:factory`` outside MONAI and napari-probseg); pass ``trust=True`` if you trust it.
    """


class UnknownMethodError(ModelCardError):
    """The requested sampling method is not supported by this model.

    Attributes
    ----------
    method : str
        The requested method.
    supported : list of str
        The methods this model supports.
    """

    def __init__(self, method: str, supported: list[str], model: str = "") -> None:
        where = f" by model {model!r}" if model else ""
        super().__init__(
            f"method: {method!r} is not supported{where}; supported: {', '.join(supported)}"
        )
        self.method = method
        self.supported = list(supported)


class IncompatibleInputError(ValueError):
    """An input image does not fit the model (dimensionality or channel count)."""


class DimensionalityError(IncompatibleInputError):
    """The image has another number of spatial dimensions than the model (e.g. a 2D model on a 3D
    volume); the engine catches it to offer slice-by-slice prediction.

    Attributes
    ----------
    model_dims, image_dims : int
        Spatial dimensions of the model and of the image.
    """

    def __init__(self, message: str, *, model_dims: int, image_dims: int) -> None:
        super().__init__(message)
        self.model_dims = model_dims
        self.image_dims = image_dims


class ChannelMismatchError(IncompatibleInputError):
    """The image has another number of channels than the model expects.

    Attributes
    ----------
    expected, got : int
    """

    def __init__(self, message: str, *, expected: int, got: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class DegenerateCovarianceWarning(RuntimeWarning):
    """An SSN covariance was non-finite or its low-rank factor collapsed: sampling fell back to the
    diagonal part only (no spatial correlation between pixels)."""
