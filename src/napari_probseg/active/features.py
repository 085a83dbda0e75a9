"""Image features for diversity-aware selection: the network's pooled bottleneck activation."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["bottleneck_features"]


def bottleneck_features(network: Any, x: Any, *, spatial_dims: int) -> np.ndarray:
    """Globally average-pooled activation of the network's bottleneck, one vector per image.

    The bottleneck is found without knowing the architecture: forward hooks record every
    sub-module output with ``spatial_dims`` spatial axes, and the one with the fewest spatial
    voxels (ties: most channels, then the first) is pooled. One deterministic pass in eval mode
    (dropout off unless a method has set its generators), no gradients.

    Parameters
    ----------
    network : torch.nn.Module
        The method's network (``method.network``).
    x : Tensor, shape (B, C, *spatial)
        Normalised input.
    spatial_dims : int
        2 or 3.

    Returns
    -------
    ndarray of float32, shape (B, channels)

    Raises
    ------
    ValueError
        No sub-module produced a feature map with ``spatial_dims`` spatial axes.
    """
    import torch

    found: list[tuple[int, int, int, Any]] = []
    ndim = spatial_dims + 2

    def hook(_module: Any, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == ndim and out.shape[0] == x.shape[0]:
            voxels = int(np.prod(out.shape[2:]))
            found.append((voxels, -int(out.shape[1]), len(found), out.detach()))

    handles = [m.register_forward_hook(hook) for m in network.modules() if m is not network]
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(x)
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    if not found:
        raise ValueError(f"network: no {spatial_dims}D feature map found for the bottleneck")
    best = min(found, key=lambda t: t[:3])[3]
    return best.float().mean(dim=tuple(range(2, ndim))).cpu().numpy()
