"""The engine ↔ models contract: what the engine may call on a sampling method.

Two protocols, checked structurally (``isinstance`` works, they are ``runtime_checkable``):

* `MethodProtocol` — every method: our card-based methods (`napari_probseg.models.methods`) and the
  adapters of models users bring (`napari_probseg.models.adapters`). The engine normalises and tiles
  the image itself and calls ``sample`` once per tile and sample batch.
* `WholeImageMethod` — a method that does its own preprocessing, resampling, tiling and export back
  to the image geometry (nnU-Net, MONAI bundles: their own code defines these steps). It sets
  ``whole_image = True`` and the engine hands it the raw image once
  (`napari_probseg.engine._external`), keeping everything else (accumulator, samples, provenance,
  progress, cancel) the same.

Optional attributes the engine uses when present: ``network`` (an ``nn.Module``: the engine hooks
it so a cancel lands within one layer); ``shared_body`` and ``activation_factor`` (the memory
estimate); ``body(x)`` with ``body_bytes(patch)`` and a ``body=`` keyword of ``sample`` (a
network body every hypothesis shares, kept between sample batches: see
`napari_probseg.models.methods.Method.body`). Nothing else is read by ``getattr``.

This module does not import torch at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = ["MethodProtocol", "WholeImageMethod", "is_whole_image"]


@runtime_checkable
class MethodProtocol(Protocol):
    """A sampling method as the engine sees it.

    Attributes
    ----------
    name : str
        ``"mc_dropout"``, ``"ensemble"``, ``"tta+ensemble"``, ...
    source : tuple of str
        Randomness sources, each ``"parameter"``, ``"input"``, ``"latent"`` or ``"none"``; they name
        what mutual information and expected entropy mean (`napari_probseg.core.uncertainty`).
    deterministic : bool
        True when every sample is the same (the engine then draws one).
    class_names : list of str
        One name per output class, background first.
    n_classes, spatial_dims, in_channels : int
    card : ModelCard or None
        The model card (patch size, normalization, spacing, sha256), None for adapters.
    device : torch.device
    """

    name: str
    source: tuple[str, ...]
    deterministic: bool
    class_names: list[str]
    n_classes: int
    spatial_dims: int
    in_channels: int
    card: Any
    device: Any

    def to(self, device: Any) -> MethodProtocol:
        """Move to ``device`` (in place) and return ``self``."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description (method, sources, parameters) for provenance."""
        ...

    def sample(
        self,
        x: torch.Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        first_index: int = 0,
    ) -> torch.Tensor:
        """Float32 probabilities ``(n, K, *S)`` for the input ``(1, C, *S)``.

        ``first_index`` is the global index of the first hypothesis of this call: hypothesis ``i``
        is the same whatever the batch split (an ensemble uses member ``i mod M``).
        """
        ...


@runtime_checkable
class WholeImageMethod(MethodProtocol, Protocol):
    """A method that runs its own preprocessing and tiling over the whole raw image.

    Attributes
    ----------
    whole_image : bool
        True (the engine dispatches on it).
    n_hypotheses : int
        Number of *distinct* hypotheses (folds × mirrorings ...); hypothesis ``i`` is hypothesis
        ``i mod n_hypotheses``, so the engine never draws more than this many.
    model_name, model_sha256 : str
        Name and content hash of the model folder (recorded in provenance like a card's).
    """

    whole_image: bool
    n_hypotheses: int
    model_name: str
    model_sha256: str

    def predict_hypotheses(
        self,
        image: np.ndarray,
        *,
        scale: Sequence[float] | None,
        indices: Sequence[int],
        check_cancel: Callable[[], None],
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield ``(rows, probs)``: probabilities ``(len(rows), K, *S)`` of hypotheses ``rows``
        (a subset of ``indices``, each exactly once over the iteration, in any order) in the
        geometry of ``image`` ``(C, *S)``. ``scale`` is the voxel spacing of ``image`` (None:
        the model's own). ``check_cancel`` raises ``Cancelled``; it is called between passes.
        """
        ...


def is_whole_image(method: Any) -> bool:
    """True when ``method`` does its own preprocessing and tiling (see `WholeImageMethod`)."""
    return bool(getattr(method, "whole_image", False))
