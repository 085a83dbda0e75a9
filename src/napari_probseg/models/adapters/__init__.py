"""Models users bring, as sampling methods: nnU-Net v2 trained-model folders and MONAI bundles.

`detect_model_folder` tells which kind a directory is, `inspect_model_folder` describes it from its
JSON/YAML files only (nothing imported or unpickled: safe for listing in a UI) and
`load_folder_method` loads it. Both adapters conform to
`napari_probseg.models.protocol.WholeImageMethod`: they run their own preprocessing, tiling and
export, so the engine hands them the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_probseg.models.adapters._common import MissingExtraError
from napari_probseg.models.errors import MissingModelFileError

__all__ = [
    "FolderInfo",
    "MissingExtraError",
    "detect_model_folder",
    "inspect_model_folder",
    "load_folder_method",
]


@dataclass(frozen=True)
class FolderInfo:
    """A model folder as a model list shows it.

    Attributes
    ----------
    kind : {"nnunet", "monai_bundle"}
    name : str
    path : Path
    methods : tuple of str
        Supported methods, the default first.
    spatial_dims, in_channels : int
    class_names : list of str
    """

    kind: str
    name: str
    path: Path
    methods: tuple[str, ...]
    spatial_dims: int
    in_channels: int
    class_names: list[str]


def detect_model_folder(path: str | Path) -> str | None:
    """``"nnunet"``, ``"monai_bundle"`` or None (not a model folder we know)."""
    from napari_probseg.models.adapters.monai_bundle import is_monai_bundle
    from napari_probseg.models.adapters.nnunet import is_nnunet_folder

    p = Path(path)
    if is_nnunet_folder(p):
        return "nnunet"
    if is_monai_bundle(p):
        return "monai_bundle"
    return None


def _kind(path: str | Path) -> str:
    kind = detect_model_folder(path)
    if kind is None:
        raise MissingModelFileError(
            f"model: {str(path)!r} is neither an nnU-Net trained-model folder (dataset.json, "
            "plans.json, fold_*/) nor a MONAI bundle (configs/metadata.json, "
            "configs/inference.json|yaml, models/)"
        )
    return kind


def inspect_model_folder(path: str | Path) -> FolderInfo:
    """Describe a model folder from its JSON/YAML files (no torch, nothing executed).

    Raises
    ------
    MissingModelFileError, ModelCardError
    """
    kind = _kind(path)
    if kind == "nnunet":
        from napari_probseg.models.adapters.nnunet import inspect_nnunet_folder

        n = inspect_nnunet_folder(path)
        return FolderInfo(
            "nnunet", n.name, n.path, n.methods, n.spatial_dims, n.in_channels, n.class_names
        )
    from napari_probseg.models.adapters.monai_bundle import inspect_monai_bundle

    b = inspect_monai_bundle(path)
    return FolderInfo(
        "monai_bundle", b.name, b.path, b.methods, b.spatial_dims, b.in_channels, b.class_names
    )


def load_folder_method(
    path: str | Path | Sequence[str | Path],
    method: str | None = None,
    *,
    device: Any = "cpu",
    trust: bool = False,
    **options: Any,
) -> Any:
    """Load a model folder as a sampling method (`WholeImageMethod`).

    Parameters
    ----------
    path : str, Path or sequence of them
        An nnU-Net trained-model folder or a MONAI bundle directory; several bundles (the same
        classes and input) form one ensemble.
    method : str, optional
        nnU-Net: ``"tta+ensemble"`` (default), ``"ensemble"``, ``"tta"``, ``"softmax"``; MONAI
        bundle: ``"softmax"`` (default), ``"tta"``, ``"mc_dropout"``, ``"ensemble"``.
    device, trust
        As for `napari_probseg.models.load_method`.
    **options
        nnU-Net: ``folds``, ``checkpoint``, ``tile_step_size``; MONAI: ``n_dropout``.

    Raises
    ------
    MissingExtraError
        The folder needs an optional extra that is not installed.
    MissingModelFileError, ModelCardError, UntrustedModelError, UnknownMethodError
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    kinds = {_kind(p) for p in paths}
    if len(kinds) != 1:
        raise MissingModelFileError("model: cannot mix nnU-Net folders and MONAI bundles")
    kind = kinds.pop()
    if kind == "nnunet":
        if len(paths) != 1:
            raise MissingModelFileError(
                "model: give one nnU-Net folder (its folds are the ensemble members)"
            )
        from napari_probseg.models.adapters.nnunet import load_nnunet

        return load_nnunet(paths[0], method, device=device, trust=trust, **options)
    from napari_probseg.models.adapters.monai_bundle import load_monai_bundle

    return load_monai_bundle(paths, method, device=device, trust=trust, **options)
