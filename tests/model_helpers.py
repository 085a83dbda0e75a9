"""Tiny, seeded model cards for tests (real networks, random weights, real safetensors files)."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_card(
    folder,
    *,
    wrapper: str = "plain",
    spatial_dims: int = 2,
    name: str | None = None,
    dropout: float = 0.3,
    temperature: float | None = None,
    spacing: list[float] | None = None,
    final_scale: float = 1.0,
) -> str:
    """Write a tiny, randomly initialised (seeded) model card + safetensors file; return its path.

    ``wrapper="plain"`` serves softmax and MC dropout, ``"ssn"`` a stochastic segmentation network.
    ``final_scale`` multiplies the last 1x1 convolution (larger logits, e.g. for temperature fits).
    """
    import torch
    from safetensors.torch import save_file

    from napari_probseg.models.cards import ModelCard
    from napari_probseg.models.networks import build_network

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or f"tiny-{wrapper}-{spatial_dims}d"
    softmax = {} if temperature is None else {"temperature": temperature}
    methods = (
        {"softmax": softmax, "mc_dropout": {"p": dropout}} if wrapper == "plain" else {"ssn": {}}
    )
    arch = {
        "wrapper": wrapper,
        "network": "BasicUNet",
        "args": {"features": [4, 4, 4, 4, 4, 4], "dropout": dropout},
        "dropout_mode": "channel",
    }
    if wrapper == "ssn":
        arch["rank"] = 2
    card = {
        "schema_version": 1,
        "name": name,
        "architecture": arch,
        "weights": {"path": f"{name}.safetensors", "format": "safetensors"},
        "classes": ["background", "lesion"],
        "in_channels": 1,
        "spatial_dims": spatial_dims,
        "normalization": {"kind": "zscore"},
        "patch_size": [32] * spatial_dims if spatial_dims == 2 else [16, 32, 32],
        "methods": methods,
        "default_method": next(iter(methods)) if wrapper != "plain" else "mc_dropout",
    }
    if spacing is not None:
        card["spacing"] = list(spacing)
    torch.manual_seed(0)
    net = build_network(ModelCard.from_dict(card))
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    if final_scale != 1.0:
        for key in state:
            if key.startswith("final_conv"):
                state[key] = state[key] * final_scale
    save_file(state, str(folder / f"{name}.safetensors"))
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card))
    return str(path)
