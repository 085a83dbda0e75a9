"""Scientific checks of the bundled 2D models (``make validate``): quality, failure/OOD detection.

Every number comes from real engine runs (``run_prediction`` + the engine's ``summarize``, N = 16,
seed 0 per image) on held-out synthetic 2D lesions (default 48 images, seed 4000: never used for
training, validation, the card metrics or the card's ``reference``), at the shift severities 0
(in-domain), 1, 2, 3 of ``make_lesions`` (paired: the same lesions and raters at every severity).

1. **Quality** in-domain: Dice of the consensus vs the raters' strict majority, GED16 vs the four
   raters, mean MI; the SSN's largest sample area over the largest rater's area.
2. **OOD detection**: the AUROC of every image-level score of the summary (``<map>/<aggregation>``
   and ``structure/<measure>``) separating in-domain images from each severity, per method.
3. **Flagged as unfamiliar**: the share of images the summary's own verdict
   (:func:`napari_probseg.core.summary.verdict`, with the card's reference and verdict
   aggregation) calls unfamiliar, per severity, beside the share per aggregation of the epistemic
   map and the share the engine's input check (``provenance["domain"]``) calls out of domain.
4. **Claims**, each with a paired bootstrap 95 % interval over the images (2000 replicates):
   *holds* when the whole interval is on the claimed side, *unresolved* when only the point
   estimate is, *fails* otherwise.

Prints Markdown for the README and exits with status 1 unless every claim holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_probseg.core.discrimination import BootstrapInterval, auroc, paired_bootstrap
from napari_probseg.core.summary import verdict_scores, verdict_terms
from napari_probseg.data.synthetic import SHIFT_SEVERITIES, make_lesions
from napari_probseg.engine._io import to_jsonable
from napari_probseg.models.loading import load_method
from napari_probseg.models.registry import bundled_models
from napari_probseg.training._common import ged16, image_scores, row_verdict

ROWS = [  # (card, method)
    ("lesions2d-unet", "softmax"),
    ("lesions2d-unet", "mc_dropout"),
    ("lesions2d-unet", "laplace"),
    ("lesions2d-unet", "tta"),
    ("lesions2d-ensemble", "ensemble"),
    ("lesions2d-ssn", "ssn"),
    ("lesions2d-prob-unet", "prob_unet"),
]
#: The test-time-augmentation compositions, added by ``--all-methods``.
TTA_ROWS = [
    ("lesions2d-unet", "tta+mc_dropout"),
    ("lesions2d-unet", "tta+laplace"),
    ("lesions2d-ensemble", "tta+ensemble"),
    ("lesions2d-ssn", "tta+ssn"),
    ("lesions2d-prob-unet", "tta+prob_unet"),
]

FLAG_QUANTILE = "0.95"
N_BOOT = 2000


def _ratio_of_means(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a) / np.mean(b)) if np.mean(b) > 0 else float("inf")


def _flagged(v: dict[str, Any]) -> bool:
    return v["kind"] in ("unfamiliar", "unfamiliar_and_ambiguous", "uncertain")


def _evaluate_row(
    method: Any, sets: dict[int, Any], *, n_samples: int
) -> dict[int, list[dict[str, Any]]]:
    """Per severity and image: score table, domain check, Dice, GED16, sample/rater area ratio."""
    out: dict[int, list[dict[str, Any]]] = {}
    for sev, data in sets.items():

        def keep(result: Any, _data: Any = data) -> dict[str, Any]:
            return {
                "samples": result.samples,
                "consensus": np.asarray(result.maps.mean_probs).argmax(0) > 0,
            }

        rows = image_scores(method, data.images, n_samples=n_samples, seed=0, keep=keep)
        for i, row in enumerate(rows):
            raters = data.raters[i]
            majority = raters.mean(0) > 0.5
            cons = row["extra"]["consensus"]
            denom = cons.sum() + majority.sum()
            row["dice"] = 1.0 if denom == 0 else float(2 * (cons & majority).sum() / denom)
            samples = row["extra"]["samples"].astype(np.uint8)
            if len(samples) < n_samples:
                samples = np.repeat(samples, n_samples // len(samples), axis=0)
            row["ged16"] = ged16(samples, raters.astype(np.uint8))
            areas = samples.reshape(len(samples), -1).sum(1)
            row["area_ratio"] = float(areas.max() / max(int(raters.reshape(4, -1).sum(1).max()), 1))
            row["extra"] = None
        out[sev] = rows
    return out


def _claim(name: str, ci: BootstrapInterval, *, above: float | None = None, below=None) -> dict:
    """Holds if the interval is on the claimed side of the bound, unresolved if only the value."""
    if above is not None:
        status = "holds" if ci.low > above else ("unresolved" if ci.value > above else "fails")
    else:
        status = "holds" if ci.high < below else ("unresolved" if ci.value < below else "fails")
    return {"claim": name, "interval": ci, "status": status}


def run(
    n_images: int = 48,
    seed: int = 4000,
    n_samples: int = 16,
    rows: list[tuple[str, str]] | None = None,
    log: Any = None,
    cache: str | Path | None = None,
) -> tuple[dict[str, Any], bool]:
    """Evaluate every row at every severity; print the report; return it and whether all hold."""
    cards = bundled_models()
    rows = rows or ROWS
    sets = {
        sev: make_lesions(n_images, ndim=2, n_raters=4, seed=seed, shift=sev)
        for sev in SHIFT_SEVERITIES
    }
    strongest = max(SHIFT_SEVERITIES)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for card_name, method_name in rows:
        if card_name not in cards:
            raise SystemExit(f"bundled model {card_name!r} missing: run `make train` first")
        card = cards[card_name]
        method = load_method(card, method_name)
        cached = None
        if cache is not None:
            # keyed by everything the numbers depend on: card file, method, data, N
            import hashlib

            weights = str(card.weights.get("sha256", card.sha256))[:16]
            extra = hashlib.sha256(
                json.dumps([card.normalization, card.methods], sort_keys=True).encode()
            ).hexdigest()[:8]
            tag = f"{weights}-{extra}-{method_name}-{n_images}-{seed}-{n_samples}.json"
            cached = Path(cache) / tag
        if cached is not None and cached.is_file():
            loaded = json.loads(cached.read_text())
            per = {int(k): v for k, v in loaded.items()}
        else:
            per = _evaluate_row(method, sets, n_samples=n_samples)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps(to_jsonable(per)))
        ref = ((card.reference or {}).get("methods") or {}).get(method_name, {})
        results[method_name] = {
            "model": card_name,
            "source": "+".join(method.source),
            "per": per,
            "reference": ref,
            "card_reference": card.reference,
        }
        if log:
            log(f"{card_name} {method_name}: {time.perf_counter() - t0:.0f} s")

    report = _report(results, n_images=n_images, seed=seed, n_samples=n_samples, sev=strongest)
    return report, all(c["status"] == "holds" for c in report["claims"])


def _values(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array(
        [np.nan if r["scores"].get(key) is None else r["scores"][key] for r in rows], float
    )


def _report(results: dict, *, n_images: int, seed: int, n_samples: int, sev: int) -> dict:
    print(
        f"Held-out synthetic 2D lesions: {n_images} images (seed {seed}) per shift severity "
        f"{list(SHIFT_SEVERITIES)} (paired: same lesions and raters), N = {n_samples}, engine "
        "run_prediction + summarize; GED^2 with d = 1 - IoU vs 4 raters (self-pairs included); "
        f"MI in nats; intervals: paired bootstrap 95 % over images ({N_BOOT} replicates).\n"
    )
    # 1. quality
    print(
        "| model | method | source | Dice (consensus vs majority) | GED16 | mean MI in-domain | "
        f"mean MI severity {sev} | largest sample / largest rater area |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ind, out = r["per"][0], r["per"][sev]
        has_mi = "mutual_information/mean" in ind[0]["scores"]

        def mi(rows: list[dict[str, Any]], _has: bool = has_mi) -> str:
            return f"{np.nanmean(_values(rows, 'mutual_information/mean')):.4f}" if _has else "n/a"

        print(
            f"| {r['model']} | {name} | {r['source']} | {np.mean([x['dice'] for x in ind]):.3f} | "
            f"{np.mean([x['ged16'] for x in ind]):.3f} | {mi(ind)} | {mi(out)} | "
            f"{max(x['area_ratio'] for x in ind):.2f} |"
        )
    # 2. AUROC of every score
    print(
        f"\nAUROC of each image-level score separating in-domain from shifted images (higher "
        f"score = shifted), per severity; severity {sev} with its 95 % interval.\n"
    )
    sevs = [s for s in SHIFT_SEVERITIES if s > 0]
    print("| method | score | " + " | ".join(f"severity {s}" for s in sevs) + " |")
    print("|---|---|" + "---|" * len(sevs))
    aurocs: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        keys = list(r["per"][0][0]["scores"])
        aurocs[name] = {}
        for key in keys:
            a = _values(r["per"][0], key)
            cells = []
            for s in sevs:
                b = _values(r["per"][s], key)
                ok = np.isfinite(a) & np.isfinite(b)
                if ok.sum() < 2:
                    cells.append("n/a")
                    continue
                if s == sev:
                    ci = paired_bootstrap(auroc, a[ok], b[ok], n_boot=N_BOOT, seed=1)
                    aurocs[name][key] = ci
                    cells.append(f"**{ci.text(fmt='.2f')}**" if ci.value >= 0.9 else ci.text(".2f"))
                else:
                    cells.append(f"{auroc(a[ok], b[ok]):.2f}")
            print(f"| {name} | {key} | " + " | ".join(cells) + " |")
    # 3. flagged as unfamiliar
    print(
        f"\nShare of images flagged (95 % intervals; in brackets the share the engine's input "
        f"check calls out of domain). Rows *verdict*: the summary's own verdict (its rule: the "
        f"epistemic score above the card reference's {FLAG_QUANTILE} quantile, or the input "
        "check failed) says unfamiliar (single-pass methods: uncertain); the other rows: the "
        "epistemic map per aggregation above that quantile. Epistemic map: mutual information "
        "(parameter/input randomness), expected entropy (latent, review eq. 42), predictive "
        "entropy (single pass). *cannot judge*: the verdict's score has no value for the image "
        "(no consensus foreground, every sample empty) and its mean does not flag it.\n"
    )
    print(
        "| method | score | reference q0.95 | "
        + " | ".join(f"severity {s}" for s in SHIFT_SEVERITIES)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(SHIFT_SEVERITIES))
    flags: dict[str, dict[int, BootstrapInterval]] = {}

    def share(hits: list[bool]) -> BootstrapInterval:
        return paired_bootstrap(np.mean, np.asarray(hits, float), n_boot=N_BOOT, seed=2)

    for name, r in results.items():
        epistemic = verdict_terms(r["source"].split("+"))["epistemic"] or "predictive_entropy"
        chosen = verdict_scores(r["card_reference"], name, r["source"].split("+"))["epistemic"]
        cells = []
        shares = {}
        for s in SHIFT_SEVERITIES:
            rows = r["per"][s]
            verdicts = [row_verdict(x, name, r["source"], r["card_reference"]) for x in rows]
            ci = share([_flagged(v) for v in verdicts])
            shares[s] = ci
            ood = np.mean([not (x["domain"] or {}).get("in_domain", True) for x in rows])
            unsure = np.mean([v["kind"] == "no_reference" for v in verdicts])
            cells.append(f"{ci.text('.2f')} ({ood:.2f}; cannot judge {unsure:.2f})")
        flags[name] = shares
        print(f"| {name} | **verdict** ({chosen}) | | " + " | ".join(cells) + " |")
        for aggregation in ("mean", "foreground_normalized", "patch_max"):
            key = f"{epistemic}/{aggregation}"
            entry = r["reference"].get(key)
            if entry is None:
                print(f"| {name} | {key} | no reference in the card |" + " |" * 4)
                continue
            thr = entry["quantiles"][FLAG_QUANTILE]
            cells = []
            for s in SHIFT_SEVERITIES:
                values = np.nan_to_num(_values(r["per"][s], key), nan=-np.inf)
                cells.append(share(list(values > thr)).text(".2f"))
            print(f"| {name} | {key} | {thr:.4g} | " + " | ".join(cells) + " |")
    # 4. claims
    claims = []

    def ged(name: str) -> np.ndarray:
        return np.array([x["ged16"] for x in results[name]["per"][0]])

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(a - b))

    for latent in ("ssn", "prob_unet"):
        for param in ("mc_dropout", "ensemble"):
            if latent in results and param in results:
                ci = paired_bootstrap(diff, ged(latent), ged(param), n_boot=N_BOOT, seed=3)
                claims.append(_claim(f"{latent} GED16 < {param} GED16 (difference)", ci, below=0))
    for name in ("mc_dropout", "ensemble"):
        if name in results:
            r = results[name]
            ci = paired_bootstrap(
                diff,
                _values(r["per"][sev], "mutual_information/mean"),
                _values(r["per"][0], "mutual_information/mean"),
                n_boot=N_BOOT,
                seed=4,
            )
            claims.append(
                _claim(f"{name} mean MI severity {sev} > in-domain (difference)", ci, above=0)
            )
            if aurocs.get(name):
                best = max(aurocs[name], key=lambda k: aurocs[name][k].value)
                claims.append(
                    _claim(
                        f"{name} AUROC >= 0.9 at severity {sev} ({best})",
                        aurocs[name][best],
                        above=0.9,
                    )
                )
            if name in flags:
                claims.append(
                    _claim(f"{name} flags >= 90 % at severity {sev}", flags[name][sev], above=0.9)
                )
                claims.append(_claim(f"{name} flags <= 10 % in-domain", flags[name][0], below=0.1))
    for name in ("mc_dropout", "ensemble", "laplace"):
        if name not in results:
            continue
        r = results[name]
        key = verdict_scores(r["card_reference"], name, r["source"].split("+"))["epistemic"]
        shifted, inside = _values(r["per"][sev], key), _values(r["per"][0], key)
        ok = np.isfinite(shifted) & np.isfinite(inside)
        ci = paired_bootstrap(_ratio_of_means, shifted[ok], inside[ok], n_boot=N_BOOT, seed=5)
        claims.append(_claim(f"{name} {key} severity {sev} >= 2x in-domain (ratio)", ci, above=2))
    if "ssn" in results:
        worst = max(x["area_ratio"] for x in results["ssn"]["per"][0])
        n_bad = sum(x["area_ratio"] > 2 for x in results["ssn"]["per"][0])
        print(
            f"\nSSN: largest in-domain sample / largest rater area = {worst:.2f} "
            f"({n_bad} of {len(results['ssn']['per'][0])} images have a sample above 2x)."
        )
    print()
    for c in claims:
        mark = {"holds": "x", "unresolved": "~", "fails": " "}[c["status"]]
        print(f"- [{mark}] {c['claim']}: {c['interval'].text()} -> **{c['status']}**")
    if "ssn" in results:
        worst = max(x["area_ratio"] for x in results["ssn"]["per"][0])
        status = "holds" if worst <= 2 else "fails"
        print(
            f"- [{'x' if status == 'holds' else ' '}] ssn: no in-domain sample > 2x the largest "
            f"rater's area: max ratio {worst:.2f} -> **{status}**"
        )
        claims.append({"claim": "ssn sample area <= 2x", "interval": None, "status": status})
    return {"results": results, "aurocs": aurocs, "flags": flags, "claims": claims}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=48)
    parser.add_argument("--seed", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=None, help="method names (default: all)")
    parser.add_argument(
        "--all-methods", action="store_true", help="also the TTA compositions (tta+ssn, ...)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder for per-method results (keyed by card sha256, method, data and N); reused",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    candidates = ROWS + (TTA_ROWS if args.all_methods else [])
    rows = [r for r in candidates if args.methods is None or r[1] in args.methods]
    t0 = time.perf_counter()
    _, ok = run(
        args.n_images,
        args.seed,
        rows=rows,
        log=lambda m: print(m, file=sys.stderr),
        cache=args.cache,
    )
    print(f"\n({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
