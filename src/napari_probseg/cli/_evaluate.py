"""``probseg evaluate`` and ``probseg calibrate``: metrics of stored runs, temperature scaling.

Examples::

    probseg evaluate project.zarr --predict lesions2d-unet:mc_dropout --plots plots/
    probseg evaluate project.zarr --run RUN --reference soft --json
    probseg calibrate project.zarr --model lesions2d-unet --out calibrated.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from napari_probseg.cli._common import open_store, store_errors


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` and ``calibrate`` sub-commands."""
    p = subparsers.add_parser(
        "evaluate",
        help="metrics of stored prediction runs against the raters of a store",
        description=(
            "For each image with annotations and a prediction run (--run, or the latest run per "
            "image): ECE/MCE/ACE and adaptive ECE against --reference, GED16 (with and without "
            "self-pairs), HM-IoU16 and NCC against all raters, PAvPU, pairwise Dice and volume "
            "CoV of the samples, Dice of the consensus; over the dataset: merged calibration, "
            "means with NaN counts and the AURC of ranking images by aggregated uncertainty."
        ),
    )
    p.add_argument("store", type=Path, help="project store (.zarr folder)")
    p.add_argument("--images", nargs="+", metavar="ID", help="image ids (default: all usable)")
    p.add_argument("--run", help="run id to evaluate (default: the latest run of each image)")
    p.add_argument(
        "--reference",
        default="majority",
        help="calibration/Dice reference: majority (default), soft, rater:ID or all",
    )
    p.add_argument("--n-bins", type=int, default=15, help="calibration bins (15)")
    p.add_argument(
        "-n", "--n-samples", type=int, default=16, help="samples used by GED/HM-IoU/NCC (16)"
    )
    p.add_argument(
        "--aggregation",
        default="mean",
        help="aggregation of the predictive entropy ranked by the AURC (mean)",
    )
    p.add_argument(
        "--pavpu-threshold",
        type=float,
        default=0.25,
        help="PAvPU u_T as a fraction of ln K (0.25)",
    )
    p.add_argument(
        "--ged-kernel",
        choices=("iou", "dice"),
        default="iou",
        help="GED distance 1 - IoU (default) or 1 - Dice",
    )
    p.add_argument(
        "--ged-absent",
        choices=("present", "one"),
        default="present",
        help="GED class-absent convention: classes present in either mask (default) or "
        "PHiSeg's (absent from both = 1)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write PNG and SVG plots to DIR")
    p.add_argument(
        "--predict",
        metavar="MODEL:METHOD",
        help="first run MODEL (bundled name or card) with METHOD on the images and save the runs",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --predict (0)")
    p.add_argument("--device", default="cpu", help="device of --predict (cpu)")
    p.set_defaults(func=store_errors(run_evaluate))

    c = subparsers.add_parser(
        "calibrate",
        help="fit the softmax temperature of a model on a store; write a new card",
        description=(
            "Fit T minimizing the pixel NLL of softmax(z / T) on the annotated images of STORE "
            "(logits recovered as log-probabilities of the softmax at T = 1), write a copy of the "
            "card with methods.softmax.temperature = T and report ECE before/after."
        ),
    )
    c.add_argument("store", type=Path, help="project store (.zarr folder)")
    c.add_argument("--model", required=True, help="bundled model name or card file")
    c.add_argument("--out", required=True, type=Path, help="new card file (.json/.yaml)")
    c.add_argument("--images", nargs="+", metavar="ID", help="image ids (default: all annotated)")
    c.add_argument(
        "--reference", choices=("majority", "all"), default="majority", help="NLL labels"
    )
    c.add_argument("--name", help="name of the new card (default <name>-calibrated)")
    c.add_argument("--n-bins", type=int, default=15, help="bins of the reported ECE (15)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=store_errors(run_calibrate))


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``probseg evaluate``; return the exit code."""
    from napari_probseg.cli import CLIError
    from napari_probseg.evaluation import (
        evaluate_store,
        format_table,
        parse_reference,
        predict_store,
        write_plots,
    )

    parse_reference(args.reference)  # fail fast, before any prediction
    if args.plots is not None and args.plots.exists() and not args.plots.is_dir():
        raise CLIError(f"plots: {args.plots} exists and is not a folder")
    run_id = args.run
    if args.predict:
        model, sep, method = args.predict.rpartition(":")
        if not sep or not model or not method:
            raise CLIError(f"predict: expected MODEL:METHOD, got {args.predict!r}")
        store = open_store(args.store, "r+")
        ids = args.images or [i for i in store.image_ids() if store.raters(i)]
        if not ids:
            raise CLIError("store: no annotated images to predict")
        say = None if args.json else (lambda line: print(f"predict {line}", file=sys.stderr))
        runs = predict_store(
            store,
            model,
            method,
            image_ids=ids,
            n_samples=args.n_samples,
            seed=args.seed,
            device=args.device,
            run_id=run_id,
            progress=say,
        )
        run_id = next(iter(runs.values()))
    else:
        store = open_store(args.store, "r")
    result = evaluate_store(
        store,
        image_ids=args.images,
        run=run_id,
        reference=args.reference,
        n_bins=args.n_bins,
        n_samples=args.n_samples,
        aggregation=args.aggregation,
        pavpu_threshold=args.pavpu_threshold,
        curves=args.plots is not None,
        ged_kernel=args.ged_kernel,
        ged_absent=args.ged_absent,
    )
    files = write_plots(result, args.plots) if args.plots is not None else []
    if args.json:
        data = result.to_dict()
        data["plots"] = [str(f) for f in files]
        print(json.dumps(data, indent=2, allow_nan=False))
    else:
        print(format_table(result))
        if files:
            print(f"plots: {len(files)} files in {args.plots}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    """Run ``probseg calibrate``; return the exit code."""
    from napari_probseg.evaluation import calibrate_card

    store = open_store(args.store, "r")
    report = calibrate_card(
        store,
        args.model,
        args.out,
        image_ids=args.images,
        reference=args.reference,
        n_bins=args.n_bins,
        name=args.name,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        r = report
        print(
            f"temperature: {r.previous_temperature:.4g} -> {r.temperature:.4g} "
            f"({r.n_images} images, {r.n_pixels} pixels, NLL vs {r.reference})"
        )
        print(
            f"ECE: {r.ece_before:.4f} (card's T) -> {r.ece_after:.4f} (fitted T); "
            f"{r.ece_t1:.4f} at T = 1"
        )
        print(f"NLL: {r.nll_before:.4f} -> {r.nll_after:.4f}")
        print(f"card: {r.card_path}")
    return 0
