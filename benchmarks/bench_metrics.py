"""Research metrics: streaming calibration vs torchmetrics, GED/HM-IoU vs a per-pair reference.

(a) ECE/MCE/ACE of 10**8 pixels streamed in chunks: ``CalibrationAccumulator`` (three bincounts per
    chunk, bounded memory) vs torchmetrics' ``BinaryCalibrationError`` (which keeps every pixel until
    ``compute``) on the same data; a multi-class row on a tenth of the pixels. netcal is used when it
    is installed (it is not a dependency: it pulls tensorboard, pyro and gpytorch).
    Goal: >= 5x faster than torchmetrics.
(b) GED16 and HM-IoU16 with 4 raters on 128**3 volumes: ``ged`` + ``hm_iou`` (and the shared
    ``observer_metrics``) vs a reference that computes each pair's IoU from the two full masks in
    Python loops over masks. Goal: >= 50x faster.

Run: ``python -m benchmarks.bench_metrics [--quick]`` or ``python -m benchmarks metrics``.
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np

from napari_probseg.metrics import CalibrationAccumulator, ged, hm_iou, observer_metrics

SEED = 0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _binary_chunk(i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + i)
    p = rng.random(size, dtype=np.float32)
    y = (rng.random(size, dtype=np.float32) < p**1.3).astype(np.uint8)  # mildly miscalibrated
    return p, y


def _multiclass_chunk(i: int, size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + 1000 + i)
    logits = rng.standard_normal((k, size), dtype=np.float32) * 2
    e = np.exp(logits - logits.max(0))
    probs = e / e.sum(0)
    y = rng.integers(0, k, size).astype(np.int64)
    return probs, y


def bench_calibration(n_pixels: int, chunk: int) -> dict[str, float]:
    import torch
    from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

    n_chunks = math.ceil(n_pixels / chunk)
    print(f"(a) calibration: {n_chunks * chunk:.3g} pixels in chunks of {chunk:.3g} (binary)")

    # Ours: the three metrics in one streaming pass, foreground confidence (torchmetrics' binary
    # convention) and top-label.
    rss0 = _peak_rss_mb()
    acc = CalibrationAccumulator(n_bins=15, confidence="foreground")
    top = CalibrationAccumulator(n_bins=15)
    t_ours = t_top = 0.0
    for i in range(n_chunks):
        p, y = _binary_chunk(i, chunk)
        t = time.perf_counter()
        acc.update(p, y)
        t_ours += time.perf_counter() - t
        t = time.perf_counter()
        top.update(p, y)
        t_top += time.perf_counter() - t
    t = time.perf_counter()
    ours = acc.result()
    t_ours += time.perf_counter() - t
    rss_ours = _peak_rss_mb() - rss0
    state_bytes = acc.counts.nbytes + acc.sum_confidence.nbytes + acc.sum_correct.nbytes

    # torchmetrics: ECE and MCE need two metric objects; each keeps all pixels until compute().
    tm_ece = BinaryCalibrationError(n_bins=15, norm="l1", validate_args=False)
    tm_mce = BinaryCalibrationError(n_bins=15, norm="max", validate_args=False)
    t_tm_ece = t_tm_mce = 0.0
    for i in range(n_chunks):
        p, y = (torch.from_numpy(a) for a in _binary_chunk(i, chunk))
        t = time.perf_counter()
        tm_ece.update(p, y)
        t_tm_ece += time.perf_counter() - t
        t = time.perf_counter()
        tm_mce.update(p, y)
        t_tm_mce += time.perf_counter() - t
    t = time.perf_counter()
    ece_tm = float(tm_ece.compute())
    t_tm_ece += time.perf_counter() - t
    t = time.perf_counter()
    mce_tm = float(tm_mce.compute())
    t_tm_mce += time.perf_counter() - t
    rss_tm = _peak_rss_mb() - rss0
    del tm_ece, tm_mce

    print(
        f"  ours (ECE+MCE+ACE, foreground): {t_ours:7.2f} s  state {state_bytes} B, "
        f"peak RSS growth {rss_ours:.0f} MB"
    )
    print(f"  ours (ECE+MCE+ACE, top-label):  {t_top:7.2f} s")
    print(f"  torchmetrics ECE only:          {t_tm_ece:7.2f} s  ({t_tm_ece / t_ours:.1f}x ours)")
    print(
        f"  torchmetrics ECE + MCE:         {t_tm_ece + t_tm_mce:7.2f} s  "
        f"({(t_tm_ece + t_tm_mce) / t_ours:.1f}x ours), peak RSS growth {rss_tm:.0f} MB"
    )
    print(
        f"  agreement: ECE {ours.ece:.6f} vs {ece_tm:.6f}, MCE {ours.mce:.6f} vs {mce_tm:.6f} "
        f"(ACE {ours.ace:.6f}; torchmetrics has no ACE)"
    )
    print(
        "  (torchmetrics sums the bins in the input dtype: with float32 its ECE drifts from the"
        " float64 value beyond ~10**7 pixels; ours sums in float64)"
    )

    # Multi-class (K = 4, top-label) on a tenth of the pixels.
    k, n_mc = 4, max(1, n_chunks // 10)
    mc = CalibrationAccumulator(n_bins=15)
    tm_mc = MulticlassCalibrationError(num_classes=k, n_bins=15, validate_args=False)
    t_mc = t_tm_mc = 0.0
    for i in range(n_mc):
        p, y = _multiclass_chunk(i, chunk, k)
        t = time.perf_counter()
        mc.update(p, y)
        t_mc += time.perf_counter() - t
        pt, yt = torch.from_numpy(p.T), torch.from_numpy(y)  # torchmetrics wants (N, K)
        t = time.perf_counter()
        tm_mc.update(pt, yt)
        t_tm_mc += time.perf_counter() - t
    t = time.perf_counter()
    mc_ece = mc.result().ece
    t_mc += time.perf_counter() - t
    t = time.perf_counter()
    mc_ece_tm = float(tm_mc.compute())
    t_tm_mc += time.perf_counter() - t
    print(
        f"  multiclass K={k}, {n_mc * chunk:.3g} px: ours {t_mc:.2f} s, torchmetrics ECE "
        f"{t_tm_mc:.2f} s ({t_tm_mc / t_mc:.1f}x); ECE {mc_ece:.6f} vs {mc_ece_tm:.6f}"
    )
    _netcal_row(chunk)
    return {"calibration_speedup": t_tm_ece / t_ours}


def _netcal_row(chunk: int) -> None:
    try:
        from netcal.metrics import ECE
    except ImportError:
        print(
            "  netcal: not installed, skipped (pip install netcal pulls tensorboard/pyro/gpytorch)"
        )
        return
    p, y = _binary_chunk(0, chunk)
    t = time.perf_counter()
    value = ECE(bins=15).measure(p.astype(np.float64), y)
    t_nc = time.perf_counter() - t
    t = time.perf_counter()
    ours = CalibrationAccumulator(n_bins=15, confidence="foreground").update(p, y).result()
    t_ours = time.perf_counter() - t
    print(
        f"  netcal ECE on {chunk:.3g} px: {t_nc:.2f} s vs ours {t_ours:.3f} s "
        f"({t_nc / t_ours:.1f}x); ECE {value:.6f} vs {ours.ece:.6f}"
    )


def _volumes(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """Lesion-like masks: a blob whose radius and boundary jitter vary per mask."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    center = [s / 2 for s in shape]
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, center, strict=True))).astype(np.float32)
    out = np.empty((n, *shape), dtype=np.uint8)
    for i in range(n):
        radius = shape[0] * rng.uniform(0.2, 0.3)
        jitter = rng.standard_normal(shape, dtype=np.float32)
        np.less(dist + jitter, radius, out=out[i], casting="unsafe")
    return out


def _ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a == 1, b == 1).sum()
    return float(np.logical_and(a == 1, b == 1).sum() / union) if union else 1.0


def _reference_ged_hm(samples: np.ndarray, raters: np.ndarray) -> tuple[float, float]:
    """The formulas with one IoU per pair of full masks (the straightforward implementation)."""
    from scipy.optimize import linear_sum_assignment

    def mean_d(xs, ys):
        return float(np.mean([[1 - _ref_iou(x, y) for y in ys] for x in xs]))

    value = 2 * mean_d(samples, raters) - mean_d(samples, samples) - mean_d(raters, raters)
    cross = np.array([[_ref_iou(s, r) for r in raters] for s in samples])
    size = math.lcm(len(samples), len(raters))
    rows = np.arange(size) % len(samples)
    cols = np.arange(size) % len(raters)
    r_idx, c_idx = linear_sum_assignment(1 - cross[np.ix_(rows, cols)])
    return value, float(cross[rows[r_idx], cols[c_idx]].mean())


def bench_observer(shape: tuple[int, ...], repeats: int = 5) -> dict[str, float]:
    samples = _volumes(shape, 16, seed=1)
    raters = _volumes(shape, 4, seed=2)
    print(f"(b) GED16 + HM-IoU16, 16 samples x 4 raters of {shape}")
    ged(samples[:2], raters[:1])  # warm-up: scipy imports
    hm_iou(samples[:2], raters[:1])
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        g = ged(samples, raters)
        h = hm_iou(samples, raters)
        best = min(best, time.perf_counter() - t)
    shared = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        both = observer_metrics(samples, raters)
        shared = min(shared, time.perf_counter() - t)
    t = time.perf_counter()
    ref_ged, ref_hm = _reference_ged_hm(samples, raters)
    t_ref = time.perf_counter() - t
    assert abs(g.ged - ref_ged) < 1e-9 and abs(h.hm_iou - ref_hm) < 1e-9
    assert abs(both.ged.ged - ref_ged) < 1e-9
    print(f"  reference (per-pair loops):      {t_ref:7.3f} s")
    print(f"  ours ged + hm_iou:               {best:7.3f} s  ({t_ref / best:.0f}x)")
    print(f"  ours observer_metrics (+NCC):    {shared:7.3f} s  ({t_ref / shared:.0f}x)")
    print(f"  GED^2 {g.ged:.5f}, HM-IoU {h.hm_iou:.5f}, NCC {both.ncc:.4f} (match the reference)")
    return {"observer_speedup": t_ref / best}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="bench_metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10**6 pixels and 48**3 volumes")
    args = parser.parse_args(argv or [])
    out = {}
    if args.quick:
        out.update(bench_calibration(10**6, 1 << 18))
        out.update(bench_observer((48, 48, 48), repeats=2))
    else:
        out.update(bench_calibration(10**8, 1 << 22))
        out.update(bench_observer((128, 128, 128)))
    print(
        f"speedups: calibration {out['calibration_speedup']:.1f}x (goal >= 5x), "
        f"GED+HM-IoU {out['observer_speedup']:.0f}x (goal >= 50x)"
    )
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
