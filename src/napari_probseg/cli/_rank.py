"""``probseg rank``: rank a store's images by informativeness (active learning) on dask.distributed.

Examples::

    probseg rank project.zarr --model lesions2d-unet --method mc_dropout --score bald \\
        --aggregation mean --top 10 --unannotated --workers 2
    probseg rank project.zarr --model lesions2d-unet --score bald --scheduler tcp://10.0.0.5:8786
    probseg rank --show project.zarr

Workers load the model once and read the images from the store themselves, so the store must be
reachable at the same path from every worker (a shared file system for a real cluster). The
ranking is written into the store (``rankings/``) as it goes; an interrupted ranking with the same
configuration is continued by the next call. Progress goes to stderr on a terminal; ``--json``
prints the record on stdout. See :mod:`napari_probseg.active.rank`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from napari_probseg.cli._common import open_store, store_errors
from napari_probseg.cli._models import add_model_dir_argument, find_card, model_dirs


def register(subparsers: Any) -> None:
    """Add the ``rank`` sub-command."""
    from napari_probseg.active.scores import AGGREGATIONS, SCORES
    from napari_probseg.active.selection import STRATEGIES

    p = subparsers.add_parser(
        "rank",
        help="rank a store's images by informativeness for annotation (dask.distributed)",
        description=(
            "Score every image of a project store (or those without annotations) with a model's "
            "uncertainty and write a ranking record into the store. Runs on dask.distributed: a "
            "LocalCluster (--workers N, default one worker per CPU) or a running scheduler."
        ),
    )
    p.add_argument("store", type=Path, help="project store (a .zarr folder)")
    p.add_argument("--show", action="store_true", help="print the store's last ranking and exit")
    p.add_argument("--model", help="bundled/user model name or a card file")
    add_model_dir_argument(p)
    p.add_argument("--method", help="sampling method (default: the card's)")
    p.add_argument("--score", choices=SCORES, default="bald", help="informativeness (bald)")
    p.add_argument(
        "--aggregation",
        choices=(*AGGREGATIONS, "samples"),
        default=None,
        help="image-level aggregation of a map score (mean); structure scores take none",
    )
    p.add_argument("--top-k-voxels", type=int, default=64, help="voxels of 'top_k_mean' (64)")
    p.add_argument("--samples", type=int, default=16, help="hypotheses per image (16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the engine and selection (0)")
    p.add_argument("--top", type=int, help="choose a batch of K images to annotate next")
    p.add_argument(
        "--select",
        choices=STRATEGIES,
        default="top_k",
        help="batch strategy for --top: top_k, diverse (uncertain pre-filter + k-center over "
        "bottleneck features), random (top_k)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--unannotated", action="store_true", help="only images nobody annotated")
    which.add_argument("--without-rater", metavar="R", help="only images rater R did not annotate")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="start a LocalCluster of N worker processes")
    where.add_argument("--scheduler", metavar="ADDRESS", help="use a running dask scheduler")
    p.add_argument(
        "--threads",
        action="store_true",
        help="LocalCluster workers as threads of this process (no process start-up)",
    )
    p.add_argument("--device", default="cpu", help="device of the workers' model (cpu)")
    p.add_argument("--no-resume", action="store_true", help="start afresh (do not continue)")
    p.add_argument("--json", action="store_true", help="print the ranking record as JSON")
    p.set_defaults(func=store_errors(run))


def run(args: argparse.Namespace) -> int:
    """Run ``probseg rank``; return the exit code."""
    from napari_probseg.cli import CLIError

    if args.show:
        store = open_store(args.store, "r")
        record = store.latest_ranking() or store.latest_ranking(status=None)
        if record is None:
            raise CLIError(f"{args.store}: no ranking yet (run probseg rank first)", code=1)
        _print(record, store, args)
        return 0
    if not args.model:
        raise CLIError("--model is required (unless --show)")
    from napari_probseg.active.rank import RankConfig, rank_store, select_images

    card = find_card(args.model, model_dirs(args.model_dir))
    model = str(card.path) if getattr(card, "path", None) else args.model
    config = RankConfig(
        model=model,
        method=args.method,
        score=args.score,
        aggregation=args.aggregation,
        n_samples=args.samples,
        seed=args.seed,
        top_k=args.top_k_voxels,
        features=args.select == "diverse",
        device=args.device,
    )
    store = open_store(args.store, "r+")
    ids = select_images(store, unannotated=args.unannotated, without_rater=args.without_rater)
    if not ids:
        raise CLIError(f"{args.store}: no images to rank", code=1)
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers: expected >= 1, got {args.workers}")
    bar = _progress_bar(len(ids)) if sys.stderr.isatty() and not args.json else None
    failures: list[str] = []

    def progress(event: Any) -> None:
        if event.error:
            failures.append(f"{event.image_id}: {event.error}")
            if bar is None and not args.json:
                print(f"probseg rank: skipped {event.image_id}: {event.error}", file=sys.stderr)
        if bar is not None:
            bar.n = event.done
            bar.set_postfix_str(event.image_id or "", refresh=False)
            bar.refresh()
            if event.error:
                bar.write(f"skipped {event.image_id}: {event.error}")

    record = rank_store(
        args.store,
        config,
        image_ids=ids,
        n_workers=args.workers,
        scheduler=args.scheduler,
        processes=not args.threads,
        resume=not args.no_resume,
        progress=progress,
        select=(args.select, args.top, args.seed) if args.top else None,
        extra={
            "filter": {"unannotated": bool(args.unannotated), "without_rater": args.without_rater}
        },
    )
    if bar is not None:
        bar.close()
    _print(record, store, args)
    if not record["entries"]:
        return 1
    return 0


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="image", file=sys.stderr, desc="ranking", dynamic_ncols=True)


def _print(record: dict[str, Any], store: Any, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(record))
        return
    cfg = record["config"]
    entries = record["entries"]
    agg = cfg["aggregation"]
    print(
        f"ranking {record['ranking_id']} ({record['status']}): {record.get('model_name')} "
        f"{cfg['method'] or '(default method)'}, score {cfg['score']} / {agg}, "
        f"N = {cfg['n_samples']}, seed {cfg['seed']}, card sha256 {cfg['card_sha256'][:12]}"
    )
    print(
        f"{len(entries)} of {record['n_images']} images scored, {len(record['failed'])} failed, "
        f"{record['seconds']:.1f} s on {record['cluster']['workers']} worker(s) "
        f"({record['cluster']['scheduler']}), updated {record['updated']}"
    )
    selection = record.get("selection")
    picked = set(selection["image_ids"]) if selection else set()
    limit = len(entries) if args.show or not args.top else max(args.top, 10)
    print(f"\n{'rank':>4}  {'image':<24} {'score':>10}  annotated by")
    for e in entries[:limit]:
        try:
            raters = ", ".join(store.raters(e["image_id"])) or "-"
        except ValueError:  # image removed since
            raters = "(gone)"
        value = "n/a" if e["value"] is None else f"{e['value']:.5g}"
        mark = " *" if e["image_id"] in picked else ""
        print(f"{e['rank']:>4}  {e['image_id']:<24} {value:>10}  {raters}{mark}")
    if len(entries) > limit:
        print(f"  ... {len(entries) - limit} more (probseg rank --show {args.store})")
    if selection:
        print(
            f"\nnext batch ({selection['strategy']}, k = {selection['k']}, seed "
            f"{selection['seed']}; marked *): {', '.join(selection['image_ids'])}"
        )
    for f in record["failed"]:
        print(f"failed: {f['image_id']}: {f['error']}", file=sys.stderr)
