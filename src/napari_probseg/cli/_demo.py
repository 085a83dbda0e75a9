"""``probseg demo``: open napari on a synthetic sample, run the bundled model and dock the panels.

Example::

    probseg demo --sample 3d --method mc_dropout
    probseg demo --sample 2d --screenshot docs/screenshot_2d.png --quit

napari is imported only when the command runs, so ``probseg --help`` stays fast and headless.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser(
        "demo",
        help="open napari on a synthetic sample with the bundled model and the review panels",
        description=(
            "Open the napari viewer on a synthetic lesion image, run the bundled probabilistic "
            "model, show hypotheses, plausible contours, uncertainty maps and ranked regions, and "
            "dock the run and review panels."
        ),
    )
    p.add_argument("--sample", choices=("2d", "3d"), default="2d", help="which sample (2d)")
    p.add_argument("--method", help="sampling method (default: the model's default)")
    p.add_argument("--model", help="model name or card file (default: the bundled model)")
    p.add_argument("-n", "--n-samples", type=int, default=16, help="number of samples (16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (auto)")
    p.add_argument("--screenshot", metavar="PATH", help="save a full-window PNG once drawn")
    p.add_argument("--quit", action="store_true", help="close the viewer after the run")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.n_samples < 1:
        raise ValueError(f"--n-samples: expected an integer >= 1, got {args.n_samples}")
    # Imported by name at run time: the CLI layer stays free of napari/Qt imports (import-linter's
    # contracts), and napari starts only when the demo is asked for.
    demo = importlib.import_module("napari_probseg._napari._demo")
    return int(demo.main_demo(args))
