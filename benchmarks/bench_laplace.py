"""Last-layer Laplace of the bundled 2D U-Net: what the likelihood temperature does.

For each temperature (1 = pixels as independent observations ... the card's magnitude-adjusted
value ... smaller still), the prior precision maximising the evidence, the posterior std of the weights,
and on the card's held-out test set (12 images, 16 samples) the mean MI in domain and shifted, their
ratio, GED16 and the pixel NLL against every rater. ``python -m benchmarks laplace``; ~4 min on a
shared 2-core machine (90 s CPU).
"""

from __future__ import annotations

import torch

from napari_probseg.models.laplace import (
    centred_parameters,
    last_layer_parameters,
    load_curvature,
    posterior_covariance,
    posterior_from_curvature,
    select_prior_precision,
)
from napari_probseg.models.loading import build_method, load_network, resolve_card
from napari_probseg.models.methods import LaplaceMethod
from napari_probseg.training._common import evaluate_method, lesion_dataset


def main(argv: list[str] | None = None) -> None:
    card = resolve_card("lesions2d-unet")
    net = load_network(card)
    entry = card.methods["laplace"]
    curv = load_curvature(card.resolve(entry["curvature"]))
    theta = centred_parameters(last_layer_parameters(net))
    norm = card.normalization
    test = lesion_dataset(12, ndim=2, seed=3000, normalization=norm)
    shifted = lesion_dataset(12, ndim=2, seed=3000, normalization=norm, shift=True)
    soft = evaluate_method(build_method(card, net, "softmax"), test)
    print(
        f"softmax GED16 {soft['ged16']:.4f}; card temperature {entry['tempering']['temperature']}"
    )
    print("temperature  lambda   std/|W|  MI in     MI shift  ratio  GED16   NLL")
    card_tau = float(curv["temperature"])
    for tau in sorted({1.0, 0.1, 0.01, card_tau, 1e-3, 3e-4, 1e-4}, reverse=True):
        lam, _ = select_prior_precision(
            curv["ggn"], theta, temperature=tau, log_likelihood=float(curv["log_likelihood"])
        )
        post = posterior_from_curvature(net, dict(curv, temperature=torch.tensor(tau)), lam)
        method = LaplaceMethod(
            net,
            posterior=post,
            class_names=card.classes,
            spatial_dims=2,
            in_channels=1,
            card=card,
        )
        k, f1 = theta.shape
        cov = posterior_covariance(curv["ggn"], lam, temperature=tau, n_classes=k)
        std = float(cov.diagonal().sqrt().reshape(k, f1)[:, :-1].mean())
        ind, out = evaluate_method(method, test), evaluate_method(method, shifted)
        with torch.no_grad():
            nll = _pixel_nll(method, test)
        mi, mi_s = ind["mean_mutual_information"], out["mean_mutual_information"]
        mark = "  <- card" if tau == card_tau else ""
        print(
            f"{tau:<11.3g}  {lam:<7.3g}  {std / float(theta[:, :-1].abs().mean()):<7.3f}  "
            f"{mi:<8.5f}  {mi_s:<8.5f}  {mi_s / max(mi, 1e-12):<5.1f}  {ind['ged16']:.4f}  "
            f"{nll:.4f}{mark}"
        )


def _pixel_nll(method: LaplaceMethod, ds) -> float:
    vals = []
    for i in range(len(ds.x)):
        p = method.sample(ds.x[i : i + 1], 16, generator=torch.Generator().manual_seed(i))
        mean = p.mean(0)
        vals.append(float(-torch.log(mean.gather(0, ds.raters[i]).clamp_min(1e-12)).mean()))
    return sum(vals) / len(vals)


if __name__ == "__main__":
    main()
