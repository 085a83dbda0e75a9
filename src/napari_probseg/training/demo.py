"""Train the bundled demo models on seeded synthetic multi-rater lesions (CPU).

Usage::

    python -m napari_probseg.training.demo [--out resources/models] [--only NAME ...]
                                           [--scale 1.0] [--threads 2]

Writes one card (JSON) + safetensors per model (and the Laplace curvature), with the training set-up
and held-out metrics (Dice of the consensus vs the raters' strict majority, GED16 vs the four
raters, mean mutual information) recorded in each card. Everything is seeded. Measured for the
bundled models: about 10 minutes of CPU time on one thread in all (each card records its wall
``seconds`` and ``cpu_seconds``), so well under 30 minutes on 2 cores. On a machine shared with other
jobs use ``--threads 1``: oversubscribed OpenMP threads made steps ~10x slower there.

What the checks of ``napari_probseg.training.validate`` needed (first models: 48 steps each):
full step counts; the SSN covariance head initialised small (`SSNNet`) and trained with M = 4
samples of the MC log-likelihood (M = 16 behaves like a best-of-16 loss and spread the samples far
too wide, GED16 0.36); 2500 steps for the probabilistic U-Net (standard ELBO, KL weight 1; KL
weights 0.1-0.005 did not help at 600 steps); channel dropout 0.25
for the plain U-Nets (with 0.1 the mean MI did not rise on the shifted domain).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_probseg._resources import resources_root
from napari_probseg.models.cards import ModelCard
from napari_probseg.models.loading import build_method
from napari_probseg.models.networks import build_network
from napari_probseg.training._common import (
    Dataset,
    evaluate_method,
    fit_temperature,
    intensity_quantiles,
    lesion_dataset,
    member_nets,
    save_model,
    train_network,
)
from napari_probseg.training.reference import build_reference

FEATURES_2D = [8, 16, 32, 64, 128, 8]
FEATURES_3D = [8, 8, 16, 32, 64, 8]
TTA = {"rot90": True, "intensity_scale": 0.1, "noise_std": 0.05}

# SSN loss: M = 4 MC samples and the region-of-interest penalty on the logit variance farther than
# 8 px from every rater's mask (`_common._loss`): without it sample 0 of the 2D sample case was
# 16384/16384 foreground and 83 % of the SSN's MI lay > 8 px from any rater mask. Measured with
# per-image z-score, 1000 steps, on 24 held-out images (seed 4000; largest sample / largest rater
# area, share of MI > 8 px from every rater, GED16): weight 0: 5.0, 0.52, 0.157; 0.1: 3.4, 0.17,
# 0.162; 0.3 (margin 12): 2.3, 0.07, 0.173; 1.0: 1.65, 0.03, 0.171 (MC dropout: GED16 0.194).
# A mask derived from the mean (covariance scaled by the dilated foreground probability, no
# gradient through the mask) did not work alone: the mean learned to open it (ratio 22).
SSN_LOSS = {"ssn_samples": 4, "ssn_roi_weight": 1.0, "ssn_roi_margin": 8}

# name, ndim, wrapper, extra architecture keys, methods, default, steps, lr
SPECS: list[dict[str, Any]] = [
    {
        "name": "lesions2d-unet",
        "ndim": 2,
        "wrapper": "plain",
        "extra": {},
        "methods": {"softmax": {}, "mc_dropout": {}, "tta": dict(TTA), "laplace": {}},
        "default": "mc_dropout",
        "steps": 400,
        "dropout": 0.25,
    },
    {
        "name": "lesions2d-ensemble",
        "ndim": 2,
        "wrapper": "ensemble",
        "extra": {"members": 4},
        "methods": {"ensemble": {"selection": "cycle"}, "tta": dict(TTA)},
        "default": "ensemble",
        "steps": 150,
    },
    {
        "name": "lesions2d-ssn",
        "ndim": 2,
        "wrapper": "ssn",
        "extra": {"rank": 10},
        "methods": {"ssn": {}, "tta": dict(TTA)},
        "default": "ssn",
        "steps": 1000,
        "loss": dict(SSN_LOSS),
    },
    {
        "name": "lesions2d-prob-unet",
        "ndim": 2,
        "wrapper": "prob_unet",
        "extra": {"latent_dim": 6, "encoder_channels": [8, 16, 32, 32]},
        "methods": {"prob_unet": {}, "tta": dict(TTA)},
        "default": "prob_unet",
        "steps": 2500,
        "loss": {"kl_weight": 1.0},
    },
    {
        "name": "lesions3d-unet",
        "ndim": 3,
        "wrapper": "plain",
        "extra": {},
        "methods": {"softmax": {}, "mc_dropout": {}, "tta": dict(TTA)},
        "default": "mc_dropout",
        "steps": 150,
        "dropout": 0.25,
    },
    {
        "name": "lesions3d-ssn",
        "ndim": 3,
        "wrapper": "ssn",
        "extra": {"rank": 8},
        "methods": {"ssn": {}, "tta": dict(TTA)},
        "default": "ssn",
        "steps": 150,
        "loss": dict(SSN_LOSS),
    },
]
# Channel dropout of the bodies (default). The plain U-Nets (MC dropout) set 0.25: with 0.1 the masks
# barely disagreed and the mean MI did not rise on the shifted domain (0.0065 -> 0.0057).
DROPOUT = 0.1
DATA = {  # n_train, n_val, n_test, seeds, batch, patch
    2: {"n": (64, 12, 12), "seeds": (1000, 2000, 3000), "batch": 6, "patch": (48, 48)},
    3: {"n": (16, 3, 2), "seeds": (1100, 2100, 3100), "batch": 2, "patch": (32, 32, 32)},
}
EVAL = {  # methods evaluated on the held-out set
    "plain": ("softmax", "mc_dropout", "laplace"),
    "ensemble": ("ensemble",),
    "ssn": ("ssn",),
    "prob_unet": ("prob_unet",),
}


def _log(msg: str) -> None:
    print(msg, flush=True)


def _normalization(ndim: int) -> dict[str, Any]:
    """Per-image z-score. The first models used the training set's fixed mean and std, which left
    real images (a photo, an MRI: other gain and offset) at intensities far above the lesions
    and called them 100 % lesion; per image, only the image's own contrast structure is left."""
    return {"kind": "zscore"}


def _training_distribution(ndim: int, train: Dataset) -> dict[str, Any]:
    cfg = DATA[ndim]
    return {
        "data": f"synthetic lesions: make_lesions(n_images={cfg['n'][0]}, ndim={ndim}, "
        f"n_raters=4, seed={cfg['seeds'][0]}), per-image z-score",
        "synthetic": True,
        "n_images": len(train.x),
        "spacing": [1.0] * ndim,
        "intensity_quantiles": intensity_quantiles(train.x),
    }


def _card(spec: dict[str, Any], norm: dict[str, Any]) -> ModelCard:
    ndim = spec["ndim"]
    arch = {
        "wrapper": spec["wrapper"],
        "network": "BasicUNet",
        "args": {
            "features": FEATURES_2D if ndim == 2 else FEATURES_3D,
            "dropout": spec.get("dropout", DROPOUT),
            "norm": "batch",
        },
        "dropout_mode": "channel",
        **spec["extra"],
    }
    return ModelCard(
        name=spec["name"],
        description=f"{ndim}D {spec['wrapper']} BasicUNet trained on synthetic multi-rater lesions "
        "(napari_probseg.data.synthetic.make_lesions) by napari_probseg.training.demo.",
        architecture=arch,
        weights={"path": f"{spec['name']}.safetensors", "format": "safetensors"},
        classes=["background", "lesion"],
        in_channels=1,
        spatial_dims=ndim,
        normalization=norm,
        spacing=[1.0] * ndim,
        patch_size=[128, 128] if ndim == 2 else [64, 64, 64],
        methods={k: dict(v) for k, v in spec["methods"].items()},
        default_method=spec["default"],
    )


def _fit_extras(
    card: ModelCard, net: torch.nn.Module, train: Dataset, val: Dataset, out: Path
) -> None:
    """Temperature for softmax and the Laplace curvature + prior precision (plain networks)."""
    if "softmax" in card.methods:
        t = fit_temperature(net, val)
        card.methods["softmax"]["temperature"] = round(t, 4)
        card.methods["softmax"]["fitted_on"] = "validation set, NLL against every rater"
        _log(f"  temperature {t:.3f}")
    if "mc_dropout" in card.methods:
        card.methods["mc_dropout"]["p"] = card.architecture["args"]["dropout"]
    if "laplace" in card.methods:
        # the same refit as `python -m napari_probseg.training.laplace_fit --card <card>`
        from napari_probseg.training.laplace_fit import fit_laplace

        fit_laplace(card, net, train, folder=out, log=_log)


def train_one(spec: dict[str, Any], out: Path, *, scale: float, data: dict[int, Any]) -> ModelCard:
    ndim = spec["ndim"]
    cfg = DATA[ndim]
    norm, train, val, test = data[ndim]
    card = _card(spec, norm)
    card.path = out / f"{card.name}.json"  # resolves the curvature file before the card is saved
    torch.manual_seed(cfg["seeds"][0])
    net = build_network(card)
    steps = max(2, round(spec["steps"] * scale))
    t0, cpu0 = time.perf_counter(), time.process_time()
    logs = []
    for m, member in enumerate(member_nets(net)):
        logs.append(
            train_network(
                member,
                train,
                steps=steps,
                batch=cfg["batch"],
                patch=cfg["patch"],
                seed=cfg["seeds"][0] + 17 * m,
                loss_options=spec.get("loss"),
                log=_log,
                label=f"{spec['name']}[{m}]",
            )
        )
    net.eval()
    _fit_extras(card, net, train, val, out)
    card.training = {
        "script": "python -m napari_probseg.training.demo",
        "data": f"make_lesions(n_images={cfg['n'][0]}, ndim={ndim}, n_raters=4, "
        f"seed={cfg['seeds'][0]}), one random rater per crop and step",
        "validation": f"make_lesions(n_images={cfg['n'][1]}, ndim={ndim}, seed={cfg['seeds'][1]})",
        "optimizer": "Adam, cosine decay, grad-norm clip 5",
        "runs": logs,
        "seconds": round(time.perf_counter() - t0, 1),
        # CPU time of all threads: on a shared machine seconds / threads estimates dedicated cores
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    metrics: dict[str, Any] = {
        "test_set": f"make_lesions(n_images={cfg['n'][2]}, ndim={ndim}, n_raters=4, "
        f"seed={cfg['seeds'][2]})",
        "dice": "consensus (argmax of the mean) vs the raters' strict majority",
        "ged": "GED^2, d = 1 - IoU, 16 samples, self-pairs included, vs the 4 raters",
    }
    methods = [m for m in EVAL[spec["wrapper"]] if m in card.methods]
    for name in methods:
        method = build_method(card, net, name)
        metrics[name] = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in evaluate_method(method, test).items()
        }
        _log(f"  {spec['name']} {name}: {metrics[name]}")
    card.metrics = metrics
    card.training_distribution = _training_distribution(ndim, train)
    card.reference = build_reference(card, net)
    card.validate()
    save_model(card, net, out)
    _log(f"{spec['name']}: done in {time.perf_counter() - t0:.0f} s")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the bundled resources/models)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="model names to train")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the step counts")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or resources_root() / "models"
    out.mkdir(parents=True, exist_ok=True)
    specs = [s for s in SPECS if args.only is None or s["name"] in args.only]
    t0, cpu0 = time.perf_counter(), time.process_time()
    data: dict[int, Any] = {}
    for ndim in sorted({s["ndim"] for s in specs}):
        cfg = DATA[ndim]
        norm = _normalization(ndim)
        sets = [
            lesion_dataset(n, ndim=ndim, seed=sd, normalization=norm)
            for n, sd in zip(cfg["n"], cfg["seeds"])
        ]
        data[ndim] = (norm, *sets)
    for spec in specs:
        _log(f"== {spec['name']}")
        train_one(spec, out, scale=args.scale, data=data)
    _log(
        f"all done in {time.perf_counter() - t0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU "
        f"({args.threads} threads); wrote {out}"
    )
    np.set_printoptions()
    return 0


if __name__ == "__main__":
    sys.exit(main())
