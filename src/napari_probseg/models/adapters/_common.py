"""Shared pieces of the model-folder adapters: errors, safe checkpoint loading, folder hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from napari_probseg.models.errors import ModelCardError, UntrustedModelError

__all__ = ["MissingExtraError", "folder_sha256", "require", "safe_torch_load"]


class MissingExtraError(ModelCardError, ImportError):
    """A model folder needs an optional dependency that is not installed (the message names the
    ``pip install`` extra)."""


def require(module: str, *, extra: str, what: str) -> Any:
    """Import ``module`` or raise `MissingExtraError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"model: {what} needs the optional package {module.split('.')[0]!r}; install it with "
            f"pip install 'napari-probseg[{extra}]' ({type(exc).__name__}: {exc})"
        ) from exc


def _numpy_safe_globals() -> list[Any]:
    """Numpy reconstructors that only build arrays/scalars from bytes (no calls into user code).

    nnU-Net checkpoints hold numpy scalars in their training log; torch's weights-only unpickler
    refuses them unless allow-listed (torch documents exactly these for numpy data).
    """
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out: list[Any] = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [
            getattr(dtypes, name)
            for name in dir(dtypes)
            if name.endswith("DType") and name != "ObjectDType"
        ]
    return out


def safe_torch_load(path: Path, *, trust: bool, what: str) -> Any:
    """``torch.load`` with ``weights_only=True`` (plus numpy data types); pickles that need more
    load only with ``trust=True``.

    Raises
    ------
    UntrustedModelError
        The file holds objects outside the safe allow-list and ``trust`` is False (nothing from
        the file was executed).
    ModelCardError
        The file cannot be read.
    """
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            first = str(exc).strip().splitlines()
            detail = next((line.strip() for line in first if "GLOBAL" in line), first[0][:200])
            raise UntrustedModelError(
                f"{what}: {str(path)!r} holds Python objects beyond tensors and plain data "
                f"({detail}); loading it could execute code stored in the file. Pass trust=True "
                "(CLI: --trust) only if you trust its source"
            ) from None
    except Exception as exc:
        raise ModelCardError(f"{what}: cannot read {str(path)!r}: {exc}") from exc
    return torch.load(str(path), map_location="cpu", weights_only=False)


def folder_sha256(files: Iterable[Path], root: Path) -> str:
    """sha256 over the relative names and bytes of ``files`` (sorted): the identity of a model
    folder, recorded in provenance like a card's sha256."""
    h = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        h.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_mapping(path: Path, *, what: str) -> dict[str, Any]:
    """Read a JSON (``.json``) or YAML file that must hold a mapping; ``ModelCardError`` naming
    ``what`` and the file otherwise. YAML with ``safe_load``: data, never objects."""
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelCardError(f"{what}: cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelCardError(f"{what}: {str(path)!r} does not hold a mapping")
    return data


def sample_via_hypotheses(method: Any, x: Any, n: int, first_index: int = 0) -> Any:
    """``method.sample`` of a whole-image adapter: hypotheses ``first_index ..`` of the raw image
    ``x`` ``(1, C, *S)`` through its own ``predict_hypotheses``, as a tensor ``(n, K, *S)``."""
    import numpy as np
    import torch

    image = x[0].detach().cpu().numpy()
    indices = [first_index + j for j in range(int(n))]
    out = np.empty((len(indices), method.n_classes, *image.shape[1:]), np.float32)
    for rows, probs in method.predict_hypotheses(
        image, scale=None, indices=indices, check_cancel=lambda: None
    ):
        out[rows] = probs
    return torch.from_numpy(out)
