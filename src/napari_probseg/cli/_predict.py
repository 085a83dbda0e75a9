"""``probseg predict``: sample hypotheses of an image, write them to zarr and print a summary.

Example::

    probseg predict ct.nii.gz --model lesions3d --method mc_dropout -n 16 --out ct_pred.zarr
    probseg predict --sample 2d --model lesions2d-dropout-unet --method mc_dropout -n 4 \\
        --out pred.zarr --json

The output group layout is documented in :mod:`napari_probseg.engine._io`. Progress goes to
stderr (not with ``--json`` or ``--quiet``); the summary goes to stdout (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg.cli._models import add_model_dir_argument, find_card, model_dirs


def register(subparsers: Any) -> None:
    """Add the ``predict`` sub-command."""
    p = subparsers.add_parser(
        "predict",
        help="sample segmentation hypotheses and uncertainty maps of an image",
        description=(
            "Run a probabilistic segmentation model on an image (.tif, .npy, .nii[.gz]) or a "
            "built-in sample, write samples and uncertainty maps to a zarr group and print an "
            "image-level summary (scores with their aggregation named, top uncertain regions)."
        ),
    )
    p.add_argument("image", nargs="?", type=Path, help="image file (or use --sample)")
    p.add_argument("--sample", choices=("2d", "3d"), help="use the built-in synthetic sample case")
    p.add_argument(
        "--model",
        required=True,
        help="bundled/user model name, a card file, an nnU-Net v2 trained-model folder or a "
        "MONAI bundle directory",
    )
    p.add_argument(
        "--with-model",
        action="append",
        type=Path,
        default=[],
        metavar="BUNDLE",
        help="another MONAI bundle for --method ensemble (repeat it)",
    )
    p.add_argument("--folds", help="nnU-Net folds to use, e.g. 0,1,2 (default: all found)")
    p.add_argument(
        "--checkpoint",
        default="checkpoint_final.pth",
        help="nnU-Net checkpoint file name (checkpoint_final.pth)",
    )
    p.add_argument("--method", help="sampling method (default: the card's default)")
    p.add_argument("-n", "--n-samples", type=int, default=16, help="number of samples (16)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda[:i], mps")
    p.add_argument("--batch-size", type=int, help="samples per forward pass (default: automatic)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (0.25)")
    p.add_argument("--channel", type=int, help="channel to use from a multi-channel image")
    p.add_argument(
        "--slice-by-slice", action="store_true", help="run a 2D model on each plane of a volume"
    )
    p.add_argument(
        "--trust", action="store_true", help="allow TorchScript/pickled models (can run code)"
    )
    p.add_argument("--out", required=True, type=Path, help="output zarr group (e.g. pred.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--map-dtype", choices=("float32", "float16"), default="float32", help="map storage dtype"
    )
    add_model_dir_argument(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON, no progress")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def _load_input(args: argparse.Namespace, in_channels: int) -> tuple[Any, tuple[float, ...], str]:
    """Return ``(image, scale, source description)`` with channels resolved."""
    from napari_probseg.cli import CLIError

    if (args.image is None) == (args.sample is None):
        raise CLIError("image: give an image file or --sample 2d|3d (exactly one)")
    if args.sample is not None:
        from napari_probseg.data.synthetic import sample_case

        image, _, scale = sample_case(2 if args.sample == "2d" else 3)
        return image, tuple(scale), f"sample:{args.sample}"
    from napari_probseg.data.io import read_image

    data = read_image(args.image)
    image, axes = data.data, data.axes
    c_axis = data.channel_axis
    if c_axis is None and image.ndim == 4:
        c_axis = 0  # (C, Z, Y, X) when the reader did not say
    if args.channel is not None:
        if c_axis is None:
            raise CLIError(f"channel: the image {tuple(image.shape)} has no channel axis")
        n = image.shape[c_axis]
        if not 0 <= args.channel < n:
            raise CLIError(f"channel: expected 0..{n - 1}, got {args.channel}")
        image = image.take(args.channel, axis=c_axis)
    elif c_axis is not None:
        n = image.shape[c_axis]
        if n != in_channels or c_axis != 0:
            raise CLIError(
                f"channel: the image has {n} channels (axes {axes!r}, shape "
                f"{tuple(image.shape)}) but the model takes {in_channels}; choose one with "
                "--channel C"
            )
    if image.ndim > 4:
        raise CLIError(f"image: expected 2D or 3D data (plus channels), got shape {image.shape}")
    spatial = image.ndim - (1 if (c_axis is not None and args.channel is None) else 0)
    scale = tuple(data.scale)[-spatial:]
    return image, scale, str(args.image)


#: Most hypotheses one run may ask for: the engine's cap (memory and time grow linearly with N),
#: checked here too so that a bad ``-n`` fails before anything is loaded.
MAX_SAMPLES = 1024  # == napari_probseg.engine._predict.MAX_SAMPLES (test_cli_predict checks)
#: Largest input magnitude accepted: float32 sums and products of larger values overflow to Inf.
MAX_ABS_INPUT = 1e30


def _check_options(args: argparse.Namespace) -> None:
    """Refuse impossible numeric options before anything is loaded."""
    from napari_probseg.cli import CLIError

    if not 1 <= args.n_samples <= MAX_SAMPLES:
        raise CLIError(f"n_samples: expected 1..{MAX_SAMPLES} (-n), got {args.n_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"batch_size: expected >= 1, got {args.batch_size}")
    if not (np.isfinite(args.overlap) and 0.0 <= args.overlap < 1.0):
        raise CLIError(f"overlap: expected a fraction in [0, 1), got {args.overlap}")
    if args.seed < 0:
        raise CLIError(f"seed: expected >= 0, got {args.seed}")


def _check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot be written, or one ``--overwrite`` must not delete --
    before the (long) prediction runs."""
    import tempfile

    from napari_probseg.cli import CLIError
    from napari_probseg.engine._io import is_prediction_output

    if out.exists() or out.is_symlink():
        if not overwrite:
            raise CLIError(f"out: {out} exists (add --overwrite to replace it)")
        if not is_prediction_output(out):
            raise CLIError(
                f"out: {out} is not a probseg prediction output (its zarr.json does not say "
                "napari_probseg.kind = 'prediction'); --overwrite only replaces those -- "
                "choose another --out",
                code=1,
            )
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    try:  # a probe the size of nothing: the result folder will be created beside it
        probe = tempfile.mkdtemp(prefix=".probseg-probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise CLIError(f"out: cannot create {out} ({exc.strerror or exc})", code=1) from None


def _stream_path(out: Path) -> Path:
    """Where the engine streams the result: ``out`` itself, or (``--overwrite`` of an existing
    prediction output) a fresh hidden sibling that replaces ``out`` once the run succeeded."""
    if not (out.exists() or out.is_symlink()):
        return out
    import uuid

    return out.with_name(f".{out.name}.new-{uuid.uuid4().hex[:12]}")


def _replace_output(new: Path, out: Path) -> None:
    """Swap the finished result ``new`` into ``out`` (an existing prediction output of ours,
    checked again now: only those are ever deleted)."""
    import shutil

    from napari_probseg.cli import CLIError
    from napari_probseg.engine._io import is_prediction_output

    if out.exists() or out.is_symlink():
        if not is_prediction_output(out):
            raise CLIError(
                f"out: {out} changed while predicting and is no longer a probseg prediction "
                "output; refusing to replace it",
                code=1,
            )
        old = out.with_name(f".{out.name}.old-{new.name.rsplit('-', 1)[-1]}")
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)


def _check_magnitude(image: Any, source: str) -> None:
    from napari_probseg.cli import CLIError

    if image.size:
        peak = max(abs(float(np.max(image))), abs(float(np.min(image))))
        if peak > MAX_ABS_INPUT:
            raise CLIError(
                f"image: {source} holds values up to {peak:.3g}; beyond {MAX_ABS_INPUT:g} the "
                "network's float32 arithmetic overflows -- rescale the image",
                code=1,
            )


class _ProgressPrinter:
    """One stderr line per stage change and at most every half second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0
        self.stage = ""

    def __call__(self, event: Any) -> None:
        now = time.monotonic()
        if not self.enabled or (event.stage == self.stage and now - self.last < 0.5):
            return
        self.last, self.stage = now, event.stage
        print(f"probseg predict: {event.fraction:4.0%} {event.message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run ``probseg predict``; return the exit code."""
    from napari_probseg import engine
    from napari_probseg.cli import CLIError

    _check_options(args)
    _check_out(args.out, overwrite=args.overwrite)
    folder = Path(args.model) if Path(args.model).is_dir() else None
    if folder is not None:  # nnU-Net folder / MONAI bundle (models/adapters)
        from napari_probseg.models.adapters import inspect_model_folder

        info = inspect_model_folder(folder)
        known, in_channels, model_name = list(info.methods), info.in_channels, info.name
    else:
        card = find_card(args.model, model_dirs(args.model_dir))
        known, in_channels, model_name = card.available_methods, card.in_channels, card.name
    if args.method is not None and args.method not in known and args.method != "tta+softmax":
        # the same check load_method makes, before torch is imported (fast failure)
        from napari_probseg.models import UnknownMethodError

        raise UnknownMethodError(args.method, known, model_name)
    image, scale, source = _load_input(args, in_channels)
    if not np.isfinite(image).all():
        raise CLIError(f"image: {source} contains NaN or Inf values", code=1)
    _check_magnitude(image, source)

    from napari_probseg.models import load_method

    if folder is not None:
        from napari_probseg.models.adapters import load_folder_method

        options: dict[str, Any] = {}
        if info.kind == "nnunet":
            options["checkpoint"] = args.checkpoint
            if args.folds:
                options["folds"] = [f.strip() for f in args.folds.split(",") if f.strip()]
        paths = [folder, *args.with_model]
        method = load_folder_method(
            paths if len(paths) > 1 else folder, args.method, trust=args.trust, **options
        )
    else:
        method = load_method(card, args.method, device="cpu", trust=args.trust)
    quiet = args.json or args.quiet
    progress = _ProgressPrinter(not quiet)
    # Tiled methods stream maps and uint8 samples into the output store slab by slab (memory of
    # a slab, not of the image); an --overwrite target is replaced only once the new one is done.
    stream_to = None if getattr(method, "whole_image", False) else _stream_path(args.out)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = engine.run_prediction(
                    image,
                    method,
                    n_samples=args.n_samples,
                    seed=args.seed,
                    device=args.device,
                    batch_size=args.batch_size,
                    overlap=args.overlap,
                    scale=scale,
                    slice_by_slice=args.slice_by_slice,
                    callback=progress,
                    output=stream_to,
                    map_dtype=args.map_dtype,
                )
            except MemoryError as exc:
                raise CLIError(f"memory: {exc}", code=1) from None
        del image  # the summary reads the maps and samples (from the store): free the input first
        if not quiet:
            for w in caught:
                if issubclass(w.category, (RuntimeWarning, UserWarning)):
                    print(f"probseg predict: warning: {w.message}", file=sys.stderr)
        summary = engine.summarize(
            result, reference=engine.card_reference(getattr(method, "card", None))
        )
        summary = {"image": source, "out": str(args.out), **summary}
        if stream_to is None:
            engine.save_result(
                result,
                args.out,
                regions=summary["regions"],
                map_dtype=args.map_dtype,
                overwrite=args.overwrite,
            )
        else:
            from napari_probseg.engine._io import write_result_attrs

            result.provenance["output"] = str(args.out)
            write_result_attrs(result, stream_to, regions=summary["regions"])
            if stream_to != args.out:
                _replace_output(stream_to, args.out)
    finally:
        if stream_to is not None and stream_to != args.out and stream_to.exists():
            import shutil

            shutil.rmtree(stream_to, ignore_errors=True)  # our own, never-published folder
    if args.json:
        print(json.dumps(summary, indent=2, allow_nan=False))
    else:
        _print_human(summary)
    return 0


def _print_human(s: dict) -> None:
    """Render the summary of ``engine.summarize`` as text (computes nothing)."""
    print(f"image: {s['image']}  ->  {s['out']}")
    print(
        f"model: {s['model']}  method: {s['method']}  N = {s['n_samples']}  seed: {s['seed']}  "
        f"device: {s['device']}"
    )
    for w in s["warnings"]:
        print(f"WARNING: {w}")
    v = s["verdict"]
    print(f"verdict: {v['sentence']}")
    meanings = s["meanings"]
    if meanings.get("mutual_information"):
        print(
            f"mutual information = {meanings['mutual_information']}, expected entropy = "
            f"{meanings['expected_entropy']}"
        )
    if s.get("caveat"):
        print(f"note: {s['caveat']}")
    print(f"foreground: {s['foreground']['definition']} ({s['foreground']['voxels']} voxels)")
    width = max([len(x["label"]) for x in s["scores"]] + [20])
    for score in s["scores"]:
        value = "nan" if score["value"] is None else f"{score['value']:.4g}"
        print(f"  {score['label']:<{width}} {score['aggregation']:<22} {value}")
    for m in s["structure"]:
        value = "nan" if m["value"] is None else f"{m['value']:.4g}"
        print(f"  {m['measure']:<{width}} {value:<10} ({m['aggregation']})")
    regions = s["regions"]
    top = regions["top"]
    print(
        f"{len(top)} ranked regions of {regions['label']} (highlight share "
        f"{100 * regions['highlight_share']:g}% of the voxels, >= {regions['min_size']} voxels):"
    )
    for r in top[:5]:
        print(f"  #{r['rank']}: score {r['score']:.4g}, {r['size']} voxels, bbox {r['bbox']}")
    if len(top) > 5:
        print(f"  ... {len(top) - 5} more (see --json)")
    t = s["timings"]
    print("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
