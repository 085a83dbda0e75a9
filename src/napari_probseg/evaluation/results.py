"""The README results: bundled models on held-out synthetic data (``make results``).

``python -m napari_probseg.evaluation.results`` builds a project store of held-out synthetic
lesion images (``make_lesions`` with a seed no model was trained, validated or tested on), in-domain
and shifted (``shift=True``), four simulated raters each; runs every bundled model with each of
its methods through the engine, saves the runs in the store and evaluates them with
:func:`~napari_probseg.evaluation.evaluate_store` (reference: the raters' majority). It prints a
Markdown table and writes it to ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["ROWS_2D", "ROWS_3D", "build_store", "main", "markdown", "run"]

#: (bundled model, method) rows evaluated in 2D and 3D.
ROWS_2D = (
    ("lesions2d-unet", "softmax"),
    ("lesions2d-unet", "mc_dropout"),
    ("lesions2d-unet", "tta"),
    ("lesions2d-unet", "laplace"),
    ("lesions2d-ensemble", "ensemble"),
    ("lesions2d-ssn", "ssn"),
    ("lesions2d-prob-unet", "prob_unet"),
)
ROWS_3D = (
    ("lesions3d-unet", "softmax"),
    ("lesions3d-unet", "mc_dropout"),
    ("lesions3d-ssn", "ssn"),
)

#: Table columns: (header, metric key in StoreEvaluation.means or a special name).
COLUMNS = (
    ("ECE", "ece"),
    ("MCE", "mce"),
    ("ACE", "ace"),
    ("GED16", "ged"),
    ("HM-IoU16", "hm_iou"),
    ("NCC", "ncc"),
    ("PAvPU", "pavpu"),
    ("mean MI", "mean_mutual_information"),
    ("Dice", "dice"),
    ("AURC", "aurc"),
)


def build_store(
    path: Path, *, n_images: int, n_volumes: int, seed: int, seed_3d: int
) -> dict[str, list[str]]:
    """Create the held-out store; return the image ids per group (``2d``, ``2d-shift``, ...)."""
    from napari_probseg.data.synthetic import make_lesions
    from napari_probseg.store import ProjectStore

    store = ProjectStore.create(path, class_names=["background", "lesion"])
    groups: dict[str, list[str]] = {}
    specs = [(2, n_images, seed)] + ([(3, n_volumes, seed_3d)] if n_volumes else [])
    for ndim, n, s in specs:
        for shift in (False, True):
            data = make_lesions(n, ndim=ndim, n_raters=4, shift=shift, seed=s)
            key = f"{ndim}d" + ("-shift" if shift else "")
            groups[key] = []
            for i in range(n):
                image_id = f"{key}-{i:03d}"
                store.add_image(data.images[i], image_id=image_id)
                for rater, mask in zip(data.meta["rater_names"], data.raters[i]):
                    store.save_annotation(
                        image_id, rater, mask, role="expert", tools=("synthetic",)
                    )
                groups[key].append(image_id)
    return groups


def run(
    *,
    store_path: Path,
    n_images: int = 16,
    n_volumes: int = 2,
    n_samples: int = 16,
    n_samples_3d: int = 8,
    seed: int = 5000,
    seed_3d: int = 5100,
    log: Any = None,
) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Evaluate every available bundled (model, method); return ``(rows, missing, settings)``."""
    from napari_probseg.evaluation import evaluate_store, predict_store
    from napari_probseg.models import bundled_models
    from napari_probseg.store import ProjectStore

    say = log or (lambda line: None)
    t0, cpu0 = time.perf_counter(), time.process_time()
    groups = build_store(
        store_path, n_images=n_images, n_volumes=n_volumes, seed=seed, seed_3d=seed_3d
    )
    store = ProjectStore.open(store_path)
    say(f"store: {sum(map(len, groups.values()))} images in {time.perf_counter() - t0:.1f} s")
    cards = bundled_models()
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    plan = [(2, r) for r in ROWS_2D] + ([(3, r) for r in ROWS_3D] if n_volumes else [])
    for ndim, (model, method) in plan:
        if model not in cards or method not in cards[model].available_methods:
            missing.append(f"{model}:{method}")
            continue
        t = time.perf_counter()
        ids = groups[f"{ndim}d"] + groups[f"{ndim}d-shift"]
        n = n_samples if ndim == 2 else n_samples_3d
        run_id = f"{model}.{method}"
        predict_store(store, model, method, image_ids=ids, n_samples=n, seed=0, run_id=run_id)
        for shift in (False, True):
            ev = evaluate_store(
                store, image_ids=groups[f"{ndim}d" + ("-shift" if shift else "")], run=run_id
            )
            first = ev.images[0]
            row = {
                "data": f"{ndim}D " + ("shifted" if shift else "in-domain"),
                "model": model,
                "method": method,
                "source": "+".join(first.source),
                "mi_means": first.meanings.get("mutual_information") or "n/a",
                "n_samples": first.n_samples,
                "n_images": len(ev.images),
                "ece": ev.calibration.ece,
                "mce": ev.calibration.mce,
                "ace": ev.calibration.ace,
                "aurc": ev.aurc.aurc if ev.aurc is not None else float("nan"),
            }
            for _, key in COLUMNS:
                if key in ev.means and key not in row:
                    row[key] = ev.means[key].mean
                    row[f"{key}_nan"] = ev.means[key].n_nan
            rows.append(row)
        say(f"{model}:{method}: {time.perf_counter() - t:.1f} s")
    settings = {
        "n_images": n_images,
        "n_volumes": n_volumes,
        "n_samples": n_samples,
        "n_samples_3d": n_samples_3d,
        "seed": seed,
        "seed_3d": seed_3d,
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
    }
    return rows, missing, settings


def _cell(value: float, n_nan: int = 0) -> str:
    text = "nan" if value != value else f"{value:.3f}"
    return f"{text} ({n_nan} NaN)" if n_nan else text


def markdown(rows: list[dict[str, Any]], missing: list[str], settings: dict[str, Any]) -> str:
    """The results as Markdown (heading-less: a paragraph of settings and one table)."""
    s = settings
    today = datetime.date.today().isoformat()
    lines = [
        f"Produced on {today} by `make results` (`python -m napari_probseg.evaluation.results`) "
        f"in {s['seconds']:.0f} s wall-clock ({s['cpu_seconds']:.0f} s CPU time, all threads) "
        "on the CPU. Held-out synthetic lesions "
        f"(`make_lesions(..., n_raters=4, seed={s['seed']})`: {s['n_images']} 2D images of "
        f"128², in-domain and `shift=True`"
        + (
            f"; {s['n_volumes']} 3D volumes of 64³, seed {s['seed_3d']}, N = {s['n_samples_3d']}"
            if s["n_volumes"]
            else ""
        )
        + f"), N = {s['n_samples']} samples per 2D image (1 for softmax). Calibration: top-label, "
        "15 equal-width bins, against the raters' majority, pixels of all images pooled "
        "(merged accumulators). GED16 = GED² with d = 1 − IoU, self-pairs included, and "
        "HM-IoU16 against the 4 raters; NCC of the sample and rater variance maps (NaN images "
        "counted); PAvPU on 4×4 patches, u_T = 0.25·ln 2 nats of predictive entropy; mean MI in "
        "nats (its meaning depends on the source: epistemic for parameter/input, aleatoric for "
        "latent); Dice of the consensus (argmax of the mean) vs the majority; AURC over images, "
        "risk 1 − Dice, confidence − mean predictive entropy. Means over images.",
        "",
        "| data | model | method | source (MI means) | " + " | ".join(h for h, _ in COLUMNS) + " |",
        "|" + "---|" * (4 + len(COLUMNS)),
    ]
    for r in rows:
        cells = [_cell(r[key], r.get(f"{key}_nan", 0)) for _, key in COLUMNS]
        lines.append(
            f"| {r['data']} | {r['model']} | {r['method']} | {r['source']} ({r['mi_means']}) | "
            + " | ".join(cells)
            + " |"
        )
    if missing:
        lines += ["", f"Not evaluated (bundled model or method missing): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m napari_probseg.evaluation.results``."""
    parser = argparse.ArgumentParser(
        prog="python -m napari_probseg.evaluation.results", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--n-images", type=int, default=16, help="2D images per domain (16)")
    parser.add_argument(
        "--n-volumes", type=int, default=2, help="3D volumes per domain (2; 0: none)"
    )
    parser.add_argument("-n", "--n-samples", type=int, default=16, help="samples per 2D image (16)")
    parser.add_argument("--n-samples-3d", type=int, default=8, help="samples per 3D volume (8)")
    parser.add_argument("--seed", type=int, default=5000, help="held-out 2D seed (5000)")
    parser.add_argument("--seed-3d", type=int, default=5100, help="held-out 3D seed (5100)")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"), help="Markdown file")
    parser.add_argument("--store", type=Path, help="keep the store here (default: temporary)")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(f"results: {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        store_path = args.store or Path(tmp) / "heldout.zarr"
        rows, missing, settings = run(
            store_path=store_path,
            n_images=args.n_images,
            n_volumes=args.n_volumes,
            n_samples=args.n_samples,
            n_samples_3d=args.n_samples_3d,
            seed=args.seed,
            seed_3d=args.seed_3d,
            log=log,
        )
    text = markdown(rows, missing, settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Results\n\n" + text, encoding="utf-8")
    print(text)
    log(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
