"""Scientific checks of the bundled 2D models (``make validate``).

1. On held-out synthetic 2D data, the latent-variable models (SSN, probabilistic U-Net) reach a lower
   GED16 against the four raters than MC dropout and the deep ensemble (they model the raters'
   disagreement; parameter sampling does not).
2. On the shifted domain (other contrast/noise/blur), the mean mutual information (epistemic) of MC
   dropout and of the ensemble is higher than in-domain.

Prints a Markdown table for the README and exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from napari_probseg.models.loading import load_method
from napari_probseg.models.registry import bundled_models
from napari_probseg.training._common import evaluate_method, lesion_dataset

ROWS = [  # (card, method)
    ("lesions2d-unet", "softmax"),
    ("lesions2d-unet", "mc_dropout"),
    ("lesions2d-unet", "laplace"),
    ("lesions2d-unet", "tta"),
    ("lesions2d-ensemble", "ensemble"),
    ("lesions2d-ssn", "ssn"),
    ("lesions2d-prob-unet", "prob_unet"),
]


def run(
    n_images: int = 12, seed: int = 4000, n_samples: int = 16
) -> tuple[list[dict[str, Any]], bool]:
    """Evaluate every row in- and out-of-domain; return the rows and whether all checks hold."""
    cards = bundled_models()
    rows: list[dict[str, Any]] = []
    datasets: dict[bool, Any] = {}
    for card_name, method_name in ROWS:
        if card_name not in cards:
            raise SystemExit(f"bundled model {card_name!r} missing: run `make train` first")
        card = cards[card_name]
        for shift in (False, True):
            if shift not in datasets:
                datasets[shift] = lesion_dataset(
                    n_images, ndim=2, seed=seed, normalization=card.normalization, shift=shift
                )
        method = load_method(card, method_name)
        ind = evaluate_method(method, datasets[False], n_samples=n_samples)
        out = evaluate_method(method, datasets[True], n_samples=n_samples)
        rows.append(
            {
                "model": card_name,
                "method": method_name,
                "source": "+".join(method.source),
                "dice": ind["dice_consensus_vs_majority"],
                "ged16": ind["ged16"],
                "mi_in": ind["mean_mutual_information"],
                "mi_shift": out["mean_mutual_information"],
            }
        )
    by = {r["method"]: r for r in rows}
    checks = {
        "SSN GED16 < MC dropout and ensemble": by["ssn"]["ged16"]
        < min(by["mc_dropout"]["ged16"], by["ensemble"]["ged16"]),
        "prob U-Net GED16 < MC dropout and ensemble": by["prob_unet"]["ged16"]
        < min(by["mc_dropout"]["ged16"], by["ensemble"]["ged16"]),
        "MC dropout MI shifted > in-domain": by["mc_dropout"]["mi_shift"]
        > by["mc_dropout"]["mi_in"],
        "ensemble MI shifted > in-domain": by["ensemble"]["mi_shift"] > by["ensemble"]["mi_in"],
    }
    print(
        f"Held-out synthetic 2D lesions: {n_images} images (seed {seed}), {n_samples} samples, "
        "GED^2 with d = 1 - IoU vs 4 raters (self-pairs included), MI in nats.\n"
    )
    print(
        "| model | method | source | Dice (consensus vs majority) | GED16 | mean MI | "
        "mean MI (shifted) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['method']} | {r['source']} | {r['dice']:.3f} | "
            f"{r['ged16']:.3f} | {r['mi_in']:.4f} | {r['mi_shift']:.4f} |"
        )
    print()
    for name, ok in checks.items():
        print(f"- [{'x' if ok else ' '}] {name}: {'PASS' if ok else 'FAIL'}")
    return rows, all(checks.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=12)
    parser.add_argument("--seed", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, ok = run(args.n_images, args.seed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
