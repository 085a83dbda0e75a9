"""Last-layer Laplace approximation: curvature fitting, prior-precision selection, file I/O.

Approximation, stated plainly:

* **Last layer only.** Only the final 1x1 convolution (weights ``W`` (K, F), bias ``b`` (K)) gets a
  posterior; every other layer keeps its MAP (trained) weights.
* **Diagonal.** The posterior is ``N(theta_MAP, diag(1 / (g + lambda)))`` where ``g`` is the exact
  diagonal of the generalized Gauss-Newton matrix of the softmax cross-entropy (equal to the Fisher
  for this likelihood), ``g[W_kf] = sum_pixels p_k (1 - p_k) phi_f^2`` and
  ``g[b_k] = sum_pixels p_k (1 - p_k)``, summed over every pixel of the training images as if the
  pixels were independent observations (they are not, so the posterior is too narrow: last-layer
  Laplace on segmentation typically shows little epistemic spread). No KFAC and no off-diagonal terms.
* **Prior precision** ``lambda``: an isotropic Gaussian prior, ``lambda`` chosen from a log grid by
  the held-out negative log-likelihood of the MC predictive (not by the marginal likelihood).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_probseg.models.errors import MissingModelFileError, ModelCardError

__all__ = [
    "fit_diag_ggn",
    "load_curvature",
    "posterior_from_curvature",
    "save_curvature",
    "select_prior_precision",
]


def _last_layer(network: nn.Module, last_layer: str) -> nn.Module:
    layer = dict(network.named_modules()).get(last_layer)
    if not isinstance(layer, (nn.Conv2d, nn.Conv3d)) or set(layer.kernel_size) != {1}:
        raise ModelCardError(f"last_layer: {last_layer!r} is not a 1x1 convolution of the network")
    return layer


@torch.no_grad()
def fit_diag_ggn(
    network: nn.Module, batches: Iterable[torch.Tensor], *, last_layer: str = "final_conv"
) -> dict[str, torch.Tensor]:
    """Diagonal GGN of the last 1x1 conv, summed over all pixels of ``batches``.

    Parameters
    ----------
    network : nn.Module
        Trained network (put in eval mode).
    batches : iterable of Tensor, each (B, C, *S)
        Normalized training images.
    last_layer : str
        Name of the final 1x1 convolution.

    Returns
    -------
    dict
        ``weight_ggn`` (K, F), ``bias_ggn`` (K,), ``n_pixels`` (scalar tensor).
    """
    network.eval()
    layer = _last_layer(network, last_layer)
    feats: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, inp: feats.append(inp[0]))
    gw = torch.zeros(layer.out_channels, layer.in_channels, dtype=torch.float64)
    gb = torch.zeros(layer.out_channels, dtype=torch.float64)
    n_pix = 0
    try:
        for x in batches:
            feats.clear()
            logits = network(x)
            phi = feats[-1].double().movedim(1, -1).reshape(-1, layer.in_channels)  # (P, F)
            p = torch.softmax(logits.double(), 1).movedim(1, -1).reshape(-1, layer.out_channels)
            lam = p * (1 - p)  # (P, K): diagonal of diag(p) - p p^T
            gw += lam.T @ phi.square()
            gb += lam.sum(0)
            n_pix += phi.shape[0]
    finally:
        handle.remove()
    return {"weight_ggn": gw.float(), "bias_ggn": gb.float(), "n_pixels": torch.tensor(n_pix)}


def posterior_from_curvature(
    network: nn.Module,
    curvature: dict[str, torch.Tensor],
    prior_precision: float,
    *,
    last_layer: str = "final_conv",
) -> dict[str, torch.Tensor]:
    """Diagonal Gaussian posterior ``{weight_mean, weight_var, bias_mean, bias_var}`` on CPU."""
    if not prior_precision > 0:
        raise ValueError(f"prior_precision: expected > 0, got {prior_precision!r}")
    layer = _last_layer(network, last_layer)
    w = layer.weight.detach().float().cpu().reshape(layer.out_channels, layer.in_channels)
    if layer.bias is None:
        raise ModelCardError(f"last_layer: {last_layer!r} has no bias")
    if tuple(curvature["weight_ggn"].shape) != tuple(w.shape):
        raise ModelCardError(
            f"curvature: weight_ggn has shape {tuple(curvature['weight_ggn'].shape)}, the last "
            f"layer has {tuple(w.shape)}"
        )
    return {
        "weight_mean": w,
        "weight_var": 1.0 / (curvature["weight_ggn"].float() + prior_precision),
        "bias_mean": layer.bias.detach().float().cpu(),
        "bias_var": 1.0 / (curvature["bias_ggn"].float() + prior_precision),
    }


def save_curvature(path: str | Path, curvature: dict[str, torch.Tensor], **meta: Any) -> Path:
    """Write the curvature as safetensors (string metadata: kind, last layer, ...)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file(
        {k: v.contiguous() for k, v in curvature.items()},
        str(path),
        metadata={"kind": "diag_ggn", **{k: str(v) for k, v in meta.items()}},
    )
    return path


def load_curvature(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a curvature file written by `save_curvature`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingModelFileError(f"curvature: Laplace curvature file {str(path)!r} not found")
    data = load_file(str(path))
    missing = {"weight_ggn", "bias_ggn"} - set(data)
    if missing:
        raise ModelCardError(f"curvature: file {str(path)!r} lacks {sorted(missing)}")
    return data


@torch.no_grad()
def select_prior_precision(
    network: nn.Module,
    curvature: dict[str, torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    grid: Sequence[float] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4),
    n_samples: int = 8,
    last_layer: str = "final_conv",
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """Pick the prior precision minimising the held-out NLL of the MC predictive.

    Parameters
    ----------
    images : Tensor (B, C, *S)
    targets : Tensor (B, *S) of int64 labels

    Returns
    -------
    best : float
    nll : dict float -> float
        Mean per-pixel NLL for each grid value.
    """
    network.eval()
    layer = _last_layer(network, last_layer)
    feats: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, inp: feats.append(inp[0]))
    try:
        network(images)
    finally:
        handle.remove()
    phi = feats[-1]
    scores: dict[float, float] = {}
    for lam in grid:
        post = posterior_from_curvature(network, curvature, lam, last_layer=last_layer)
        g = torch.Generator().manual_seed(seed)
        mean_p = torch.zeros(phi.shape[0], layer.out_channels, *phi.shape[2:])
        for _ in range(n_samples):
            w = post["weight_mean"] + post["weight_var"].sqrt() * torch.randn(
                post["weight_mean"].shape, generator=g
            )
            b = post["bias_mean"] + post["bias_var"].sqrt() * torch.randn(
                post["bias_mean"].shape, generator=g
            )
            logits = torch.einsum("kf,bf...->bk...", w, phi) + b.reshape(
                -1, *([1] * (phi.ndim - 2))
            )
            mean_p += torch.softmax(logits, 1) / n_samples
        nll = -torch.log(mean_p.gather(1, targets[:, None]).clamp_min(1e-12)).mean()
        scores[float(lam)] = float(nll)
    best = min(scores, key=scores.get)  # type: ignore[arg-type]
    return best, scores
