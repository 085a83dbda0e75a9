"""``probseg export``: a store's annotations as an nnU-Net raw dataset or a MONAI datalist."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``export`` sub-command."""
    p = subparsers.add_parser(
        "export",
        help="export a store as an nnU-Net dataset or a MONAI datalist (NIfTI)",
        description="One case per image and rater (latest version) or per image (majority vote).",
    )
    p.add_argument("store", type=Path, help="project store")
    p.add_argument("--format", required=True, choices=("nnunet", "monai"))
    p.add_argument("out", type=Path, help="output directory")
    p.add_argument("--per", default="rater", choices=("rater", "consensus"))
    p.add_argument("--json", action="store_true", help="print the written index as JSON")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from napari_probseg.cli import CLIError
    from napari_probseg.store import ProjectStore, StoreError, export_store

    try:
        store = ProjectStore.open(args.store, mode="r")
        index = export_store(store, args.out, format=args.format, per=args.per)
    except StoreError as exc:
        raise CLIError(str(exc), code=1) from None
    n = index.get("numTraining", len(index.get("training", [])))
    print(json.dumps(index, indent=2) if args.json else f"exported {n} case(s) to {args.out}")
    return 0
