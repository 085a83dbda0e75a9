"""Load networks and sampling methods from model cards.

Safety: safetensors files and state dicts read with ``torch.load(weights_only=True)`` cannot run
code. TorchScript archives, pickled full models and ``module:factory`` architectures outside MONAI
and napari-probseg can, so they load only with ``trust=True`` (else `UntrustedModelError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_probseg.models.cards import ModelCard, file_sha256, load_card
from napari_probseg.models.errors import (
    MissingModelFileError,
    ModelCardError,
    UnknownMethodError,
    UntrustedModelError,
    WeightsHashError,
    WeightsMismatchError,
)
from napari_probseg.models.laplace import load_curvature, posterior_from_curvature
from napari_probseg.models.methods import (
    EnsembleMethod,
    LaplaceMethod,
    MCDropoutMethod,
    Method,
    ProbUNetMethod,
    SoftmaxMethod,
    SSNMethod,
    TTAMethod,
)
from napari_probseg.models.networks import build_network
from napari_probseg.models.registry import bundled_models

__all__ = [
    "build_method",
    "load_method",
    "load_network",
    "load_state_dict",
    "method_source",
    "resolve_card",
]

_MAX_LISTED = 8


def method_source(name: str) -> tuple[str, ...]:
    """Randomness source(s) of a card method name without building it (``"tta+ssn"`` ->
    ``("input", "latent")``), read from the method classes.

    Raises
    ------
    ValueError
        Unknown method name.
    """
    classes: dict[str, type[Method]] = {
        "softmax": SoftmaxMethod,
        "mc_dropout": MCDropoutMethod,
        "ensemble": EnsembleMethod,
        "ssn": SSNMethod,
        "prob_unet": ProbUNetMethod,
        "laplace": LaplaceMethod,
    }
    inner = name[4:] if name.startswith("tta+") else name
    if name in ("tta", "tta+softmax"):
        return ("input",)
    if inner not in classes:
        raise ValueError(f"name: unknown method {name!r}")
    own = tuple(classes[inner].source)
    return ("input", *own) if name.startswith("tta+") else own


def resolve_card(card_or_name_or_path: ModelCard | str | Path) -> ModelCard:
    """Return a `ModelCard` from a card, a bundled model name or a card file path.

    Raises
    ------
    MissingModelFileError
        If the argument is neither an existing file nor a bundled model name.
    """
    if isinstance(card_or_name_or_path, ModelCard):
        return card_or_name_or_path
    path = Path(card_or_name_or_path)
    if path.is_file():
        return load_card(path)
    bundled = bundled_models()
    name = str(card_or_name_or_path)
    if name in bundled:
        return bundled[name]
    raise MissingModelFileError(
        f"card_or_name_or_path: {name!r} is neither a model card file nor a bundled model "
        f"(bundled: {', '.join(bundled) or 'none'})"
    )


def _check_hash(card: ModelCard, path: Path) -> None:
    expected = card.weights.get("sha256")
    if expected:
        actual = file_sha256(path)
        if actual != expected:
            raise WeightsHashError(
                f"weights: sha256 of {str(path)!r} is {actual}, the card records {expected}; "
                "the file was modified or belongs to another card"
            )


def _summarize(items: list[str]) -> str:
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def load_state_dict(network: nn.Module, state: dict[str, Any], *, name: str = "weights") -> None:
    """Load ``state`` into ``network`` strictly; on mismatch raise `WeightsMismatchError` naming the
    missing and unexpected keys and the shape mismatches."""
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarize(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarize(unexpected)}")
        if shapes:
            parts.append(
                "shape mismatches: "
                + _summarize([f"{k} file {a} vs network {b}" for k, a, b in shapes])
            )
        raise WeightsMismatchError(
            f"{name}: the weights do not match the architecture; " + "; ".join(parts),
            missing=missing,
            unexpected=unexpected,
            shape_mismatch=shapes,
        )
    network.load_state_dict(state, strict=True)


def load_network(
    card: ModelCard | str | Path, *, device: str | torch.device = "cpu", trust: bool = False
) -> nn.Module:
    """Build the card's network and load its weights (eval mode, on ``device``).

    Raises
    ------
    MissingModelFileError, WeightsHashError, WeightsMismatchError, UntrustedModelError,
    ModelCardError
    """
    card = resolve_card(card)
    fmt = card.weights.get("format", "safetensors")
    path = card.weights_path
    if fmt in ("torchscript", "pickle") and not trust:
        raise UntrustedModelError(
            f"weights: {str(path)!r} is a {fmt} file; loading it executes code stored in the file, "
            "which can do anything on this computer. Pass trust=True only if you trust its "
            "source, or convert it to safetensors"
        )
    if not path.is_file():
        raise MissingModelFileError(f"weights: file {str(path)!r} of card {card.name!r} not found")
    _check_hash(card, path)
    if fmt == "torchscript":
        net = torch.jit.load(str(path), map_location="cpu")
        return net.eval().to(device)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except Exception as exc:
            raise ModelCardError(f"weights: cannot read safetensors {str(path)!r}: {exc}") from exc
    elif fmt == "state_dict":
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for objects outside the safe allow-list
            raise ModelCardError(
                f"weights: {str(path)!r} is not a plain state dict loadable with "
                f"weights_only=True ({type(exc).__name__}); a pickled model needs format "
                "'pickle' and trust=True"
            ) from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    else:  # pickle, trusted
        state = torch.load(str(path), map_location="cpu", weights_only=False)
        if isinstance(state, nn.Module):
            return state.eval().to(device)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelCardError(f"weights: {str(path)!r} does not hold a mapping of tensors")
    net = build_network(card, trust=trust)
    load_state_dict(net, state, name="weights")
    return net.eval().to(device)


def build_method(card: ModelCard, network: nn.Module, method: str | None = None) -> Method:
    """Wrap a loaded network into the sampling method ``method`` (default: the card's default).

    Raises
    ------
    UnknownMethodError
        Listing the methods the card supports.
    """
    name = method or card.default_method
    if name == "tta+softmax":
        name = "tta"
    if name not in card.available_methods:
        raise UnknownMethodError(name, card.available_methods, card.name)
    common: dict[str, Any] = {
        "class_names": card.classes,
        "spatial_dims": card.spatial_dims,
        "in_channels": card.in_channels,
        "card": card,
    }
    if name.startswith("tta"):
        inner_name = name.partition("+")[2] or "softmax"
        if inner_name == "softmax":
            t = float(card.methods["tta"].get("temperature", 1.0))
            inner: Method = SoftmaxMethod(network, temperature=t, **common)
        else:
            inner = build_method(card, network, inner_name)
        p = card.methods["tta"]
        return TTAMethod(
            inner,
            flip_axes=p.get("flip_axes"),
            rot90=bool(p.get("rot90", True)),
            intensity_scale=float(p.get("intensity_scale", 0.1)),
            noise_std=float(p.get("noise_std", 0.05)),
        )
    params = card.methods[name]
    if name == "softmax":
        return SoftmaxMethod(network, temperature=float(params.get("temperature", 1.0)), **common)
    if name == "mc_dropout":
        return MCDropoutMethod(network, p=params.get("p"), **common)
    if name == "ensemble":
        return EnsembleMethod(network, selection=params.get("selection", "cycle"), **common)  # type: ignore[arg-type]
    if name == "ssn":
        return SSNMethod(network, **common)  # type: ignore[arg-type]
    if name == "prob_unet":
        return ProbUNetMethod(network, **common)  # type: ignore[arg-type]
    if name == "laplace":
        if "curvature" not in params or "prior_precision" not in params:
            raise ModelCardError("methods.laplace: needs 'curvature' (file) and 'prior_precision'")
        layer = str(params.get("last_layer", card.architecture.get("last_layer", "final_conv")))
        curvature = load_curvature(card.resolve(params["curvature"]))
        lam = float(params["prior_precision"])
        posterior = posterior_from_curvature(network, curvature, lam, last_layer=layer)
        info = {
            "curvature": params.get("kind", "diag_ggn"),
            "prior_precision": lam,
            "prior_precision_selection": params.get("prior_precision_selection", "given"),
        }
        return LaplaceMethod(network, posterior=posterior, last_layer=layer, info=info, **common)
    raise UnknownMethodError(name, card.available_methods, card.name)  # pragma: no cover


def load_method(
    card_or_name_or_path: ModelCard | str | Path | list[str | Path],
    method: str | None = None,
    *,
    device: str | torch.device = "cpu",
    trust: bool = False,
) -> Method:
    """Load a model and wrap it into a sampling method.

    Parameters
    ----------
    card_or_name_or_path : ModelCard, str, Path or list of paths
        A card, the name of a bundled model (`bundled_models`) or the path of a card file; or a
        model folder: an nnU-Net v2 trained-model folder or MONAI bundle directory (a list: several
        bundles as one ensemble), see `napari_probseg.models.adapters.load_folder_method`.
    method : str, optional
        ``"softmax"``, ``"mc_dropout"``, ``"ensemble"``, ``"tta"``, ``"ssn"``, ``"prob_unet"``,
        ``"laplace"`` or ``"tta+<inner>"``; default: the card's ``default_method``.
    device : str or torch.device
    trust : bool
        Allow TorchScript / pickled models and third-party factories (they can run code).

    Returns
    -------
    Method
        With ``method.card`` set.
    """
    if isinstance(card_or_name_or_path, list | tuple) or (
        isinstance(card_or_name_or_path, str | Path) and Path(card_or_name_or_path).is_dir()
    ):  # models users bring (nnU-Net, MONAI bundles): models/adapters
        from napari_probseg.models.adapters import load_folder_method

        return load_folder_method(card_or_name_or_path, method, device=device, trust=trust)
    card = resolve_card(card_or_name_or_path)
    name = method or card.default_method
    if name not in card.available_methods and name != "tta+softmax":
        raise UnknownMethodError(name, card.available_methods, card.name)
    network = load_network(card, device="cpu", trust=trust)
    return build_method(card, network, name).to(device)
