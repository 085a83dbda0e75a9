"""``probseg train``: fine-tune a bundled or user model on the annotations of a project store.

Example::

    probseg train project.zarr --model lesions2d-unet --epochs 5 --out models/lesions2d-ft.json \\
        --rater-mode random --val-fraction 0.2 --seed 0

Writes ``OUT`` (a model card recording its lineage: parent model and hashes, store, images and
annotation versions, hyper-parameters, final losses) and ``<name>.safetensors`` beside it. Progress
goes to stderr (not with ``--quiet`` or ``--json``); the summary to stdout (JSON with ``--json``).
See :mod:`napari_probseg.training.finetune`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from napari_probseg.cli._models import add_model_dir_argument, find_card, model_dirs


def register(subparsers: Any) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model on the annotations of a project store",
        description=(
            "Fine-tune a bundled or user model on the raters' annotations of a project store and "
            "write a new model card (with its lineage) plus safetensors weights."
        ),
    )
    p.add_argument("store", type=Path, help="project store (a .zarr folder)")
    p.add_argument("--model", required=True, help="bundled/user model name or a card file")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training images (1)")
    p.add_argument("--out", required=True, type=Path, help="new model card (.json)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (1e-4)")
    p.add_argument("--batch-size", type=int, default=2, help="patches per step (2)")
    p.add_argument(
        "--rater-mode",
        choices=("random", "majority", "soft"),
        default="random",
        help="target: one random rater per patch, the majority vote, or the raters' mean (random)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="images held out for validation (0.2)"
    )
    p.add_argument("--n-val", type=int, help="number of validation images (instead of a fraction)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda[:i], mps")
    p.add_argument(
        "--patch-size", type=int, nargs="+", help="training patch size (default: card's)"
    )
    p.add_argument(
        "--samples-per-image", type=int, default=4, help="patches per image and epoch (4)"
    )
    p.add_argument(
        "--update-norm",
        action="store_true",
        help="update batch-norm statistics (default: frozen; updating helps on shifted domains)",
    )
    p.add_argument("--raters", help="comma-separated raters to use (default: all)")
    p.add_argument("--images", help="comma-separated image ids to use (default: all)")
    p.add_argument("--trust", action="store_true", help="allow models that run code when loaded")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out card")
    add_model_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON, no progress")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


class _ProgressPrinter:
    """Every prepare/validate/save event, and training steps at most every half second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0

    def __call__(self, event: Any) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if event.stage == "train" and now - self.last < 0.5 and event.step != event.steps_total:
            return
        self.last = now
        print(f"probseg train: {event.fraction:4.0%} {event.message}", file=sys.stderr, flush=True)


def _split_list(text: str | None, name: str) -> list[str] | None:
    from napari_probseg.cli import CLIError

    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CLIError(f"{name}: expected a comma-separated list, got {text!r}")
    return items


def run(args: argparse.Namespace) -> int:
    """Run ``probseg train``; return the exit code."""
    from napari_probseg.cli import CLIError

    if not args.store.exists():
        raise CLIError(f"store: {str(args.store)!r} does not exist")
    card = find_card(args.model, model_dirs(args.model_dir))
    from napari_probseg.engine import Cancelled
    from napari_probseg.store import ProjectStore, StoreError
    from napari_probseg.training.finetune import run_finetune

    try:
        store = ProjectStore.open(args.store, mode="r")
    except (StoreError, FileNotFoundError) as exc:
        raise CLIError(f"store: {str(exc).removeprefix('path: ')}", code=1) from None
    n_val = args.n_val
    printer = _ProgressPrinter(not (args.quiet or args.json))
    try:
        result = run_finetune(
            store,
            card,
            out=args.out,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            rater_mode=args.rater_mode,
            val_fraction=None if n_val is not None else args.val_fraction,
            n_val=n_val,
            raters=_split_list(args.raters, "raters"),
            image_ids=_split_list(args.images, "images"),
            patch_size=args.patch_size,
            samples_per_image=args.samples_per_image,
            freeze_norm=not args.update_norm,
            seed=args.seed,
            device=args.device,
            trust=args.trust,
            overwrite=args.overwrite,
            progress=printer,
        )
    except StoreError as exc:
        raise CLIError(f"store: {exc}", code=1) from None
    except FloatingPointError as exc:
        raise CLIError(str(exc), code=1) from None
    except Cancelled:
        raise KeyboardInterrupt from None
    lineage = result.lineage
    summary = {
        "card": str(result.card_path),
        "weights": str(result.weights_path),
        "name": result.card.name,
        "parent": lineage["parent"],
        "store": lineage["store"],
        "rater_mode": lineage["rater_mode"],
        "images": lineage["n_images"],
        "skipped": lineage["skipped"],
        "epochs": lineage["epochs"],
        "steps": lineage["steps"],
        "final_train_loss": lineage["final_train_loss"],
        "final_val_loss": lineage["final_val_loss"],
        "seconds": lineage["seconds"],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        val = summary["final_val_loss"]
        print(
            f"wrote {summary['card']} (+ {Path(summary['weights']).name}): "
            f"{summary['name']} fine-tuned from {lineage['parent']['name']} on "
            f"{summary['images']['train']} images ({summary['images']['val']} validation), "
            f"{summary['epochs']} epoch(s), train loss {summary['final_train_loss']:.4f}, "
            f"val loss {'n/a' if val is None else f'{val:.4f}'}"
        )
    return 0
