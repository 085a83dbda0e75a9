"""``probseg store``: create, fill, inspect and verify a multi-rater project store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``store`` sub-command and its actions."""
    parser = subparsers.add_parser(
        "store",
        help="multi-rater annotation project store (zarr / OME-Zarr)",
        description="Create, fill, inspect and verify a probseg project store.",
    )
    actions = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    p = actions.add_parser("init", help="create an empty store")
    p.add_argument("store", type=Path, help="store directory to create (e.g. project.zarr)")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="label names, background first")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_guard(_init))

    p = actions.add_parser("add", help="add an image file (.tif, .npy, .nii.gz) to a store")
    p.add_argument("store", type=Path)
    p.add_argument("image", type=Path, help="image file")
    p.add_argument("--id", dest="image_id", help="image id (default: the file name without suffix)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_guard(_add))

    p = actions.add_parser("info", help="summarise a store")
    p.add_argument("store", type=Path)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_guard(_info))

    p = actions.add_parser(
        "verify",
        help="check every array, chunk and version; exit 1 if committed data is damaged, "
        "3 if only derived state or leftovers need --repair",
    )
    p.add_argument("store", type=Path)
    p.add_argument(
        "--repair", action="store_true", help="rebuild derived label images, remove leftovers"
    )
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    p.set_defaults(func=_guard(_verify))

    p = actions.add_parser("history", help="list annotation versions")
    p.add_argument("store", type=Path)
    p.add_argument("--image", dest="image_id", help="only this image")
    p.add_argument("--rater", help="only this rater")
    p.add_argument("--json", action="store_true", help="print the versions as JSON")
    p.set_defaults(func=_guard(_history))


def _guard(func: Any) -> Any:
    """Report store errors (corruption, newer schema, lock timeout) as one line, exit code 1."""

    def run(args: argparse.Namespace) -> int:
        from napari_probseg.cli import CLIError
        from napari_probseg.store import StoreError

        try:
            return func(args)
        except StoreError as exc:
            raise CLIError(str(exc), code=1) from None

    return run


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


def _open(path: Path, mode: str = "r"):
    from napari_probseg.store import ProjectStore

    return ProjectStore.open(path, mode=mode)


def _init(args: argparse.Namespace) -> int:
    from napari_probseg.store import ProjectStore

    store = ProjectStore.create(args.store, class_names=args.classes)
    _emit(
        args,
        {"path": str(store.path), "schema_version": store.schema_version},
        f"created {store.path}",
    )
    return 0


def _read(path: Path) -> tuple[Any, tuple[float, ...] | None, str, dict[str, Any]]:
    """Image data, scale, default id and metadata of a file (``data.io.read_image``)."""
    from napari_probseg.data.io import read_image

    image = read_image(path)
    if image.channel_axis is not None:
        if image.data.shape[image.channel_axis] != 1:
            raise ValueError(
                f"image: {path} has {image.data.shape[image.channel_axis]} channels; "
                "the store holds single-channel images"
            )
        image.data = image.data.take(0, axis=image.channel_axis)
    meta = {
        "source_file": path.name,
        "format": image.metadata.get("format"),
        "unit": image.metadata.get("unit"),
    }
    return image.data, tuple(image.scale), image.name, meta


def _add(args: argparse.Namespace) -> int:
    from napari_probseg.store import validate_identifier

    data, scale, stem, meta = _read(args.image)
    image_id = validate_identifier(stem if args.image_id is None else args.image_id, "--id")
    store = _open(args.store, "r+")
    store.add_image(data, image_id=image_id, scale=scale, metadata=meta, unit=meta["unit"])
    payload = {"image_id": image_id, "shape": list(data.shape), "scale": list(scale or ())}
    _emit(args, payload, f"added {image_id} {tuple(data.shape)} scale {scale}")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = _open(args.store).info()
    lines = [f"{info['path']}: schema {info['schema_version']}, {info['n_images']} image(s)"]
    for im in info["images"]:
        if "error" in im:
            lines.append(f"  {im['image_id']}: ERROR {im['error']}")
            continue
        raters = ", ".join(f"{r} (v{d['versions']}, {d['role']})" for r, d in im["raters"].items())
        lines.append(
            f"  {im['image_id']}: {tuple(im['shape'])} {im['dtype']} scale {tuple(im['scale'])}; "
            f"raters: {raters or '-'}; runs: {len(im['predictions'])}; drafts: {len(im['drafts'])}"
        )
    _emit(args, info, "\n".join(lines))
    damaged = [im["image_id"] for im in info["images"] if "error" in im]
    if damaged:
        print(f"{info['path']}: damaged metadata in {', '.join(damaged)}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    from napari_probseg.store import ProjectStore

    if args.repair:
        store = _open(args.store, "r+")
    else:  # a read-only check may look at a store holding links: it reports them
        store = ProjectStore.open(args.store, mode="r", allow_links=True)
    problems = store.verify(repair=args.repair)
    failing = [p for p in problems if p.severity == "error" and not p.repaired]
    damaged = [p for p in failing if not p.repairable]
    payload = {
        "ok": not failing,
        "damaged": len(damaged),
        "repairable": len(failing) - len(damaged),
        "problems": [p.to_dict() for p in problems],
    }
    text = "\n".join(str(p) for p in problems) or f"{store.path}: OK"
    if failing:
        if damaged:
            summary = f"{store.path}: {len(damaged)} error(s) in committed data or links"
        else:  # an ordinary crash: derived copies or leftovers, nothing committed is lost
            summary = (
                f"{store.path}: {len(failing)} repairable problem(s), nothing committed is "
                "damaged; run `probseg store verify --repair`"
            )
        if args.json:
            print(json.dumps(payload, indent=2))
        else:
            print(text, file=sys.stderr)
            print(summary, file=sys.stderr)
        return 1 if damaged else 3
    _emit(args, payload, text)
    return 0


def _history(args: argparse.Namespace) -> int:
    store = _open(args.store)
    ids = [args.image_id] if args.image_id else store.image_ids()
    versions = [v for i in ids for v in store.history(i, args.rater)]
    lines = [
        f"{v.created}  {v.image_id}  {v.rater} v{v.version} ({v.role})"
        f"{'  CONFLICT based on v' + str(v.based_on) if v.conflict else ''}"
        f"  tools={','.join(v.tools) or '-'}  {v.time_spent_s:g}s"
        f"{'  from ' + v.source_run if v.source_run else ''}{'  ' + repr(v.note) if v.note else ''}"
        for v in versions
    ]
    _emit(args, [v.to_dict() for v in versions], "\n".join(lines) or "no annotations")
    return 0
