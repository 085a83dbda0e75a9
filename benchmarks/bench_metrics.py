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


class _Timer:
    """Accumulates wall-clock and process CPU time over ``with`` blocks."""

    def __init__(self, wall: float = 0.0, cpu: float = 0.0) -> None:
        self.wall, self.cpu = wall, cpu

    def __enter__(self) -> _Timer:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c

    def __add__(self, other: _Timer) -> _Timer:
        return _Timer(self.wall + other.wall, self.cpu + other.cpu)

    def __str__(self) -> str:
        return f"{self.wall:7.3f} s (cpu {self.cpu:7.3f} s)"

    def ratio(self, base: _Timer) -> str:
        return f"{self.wall / base.wall:.1f}x wall, {self.cpu / base.cpu:.1f}x cpu"


def _state_bytes(metric: object) -> int:
    """Bytes of the tensors a torchmetrics metric keeps in its states."""
    total = 0
    for name in getattr(metric, "_defaults", {}):
        value = getattr(metric, name)
        for t in value if isinstance(value, list) else [value]:
            total += t.numel() * t.element_size()
    return total


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

    # Interleaved per chunk, so that ours and torchmetrics see the same machine load (the
    # benchmark machine may be shared). torchmetrics needs two metric objects for ECE and MCE,
    # and each keeps every pixel until compute().
    rss0 = _peak_rss_mb()
    acc = CalibrationAccumulator(n_bins=15, confidence="foreground")
    top = CalibrationAccumulator(n_bins=15)
    tm_ece = BinaryCalibrationError(n_bins=15, norm="l1", validate_args=False)
    tm_mce = BinaryCalibrationError(n_bins=15, norm="max", validate_args=False)
    t_ours, t_top, t_tm_ece, t_tm_mce = _Timer(), _Timer(), _Timer(), _Timer()
    for i in range(n_chunks):
        p, y = _binary_chunk(i, chunk)
        pt, yt = torch.from_numpy(p), torch.from_numpy(y)
        with t_ours:
            acc.update(p, y)
        with t_top:
            top.update(p, y)
        with t_tm_ece:
            tm_ece.update(pt, yt)
        with t_tm_mce:
            tm_mce.update(pt, yt)
    with t_ours:
        ours = acc.result()
    with t_tm_ece:
        ece_tm = float(tm_ece.compute())
    with t_tm_mce:
        mce_tm = float(tm_mce.compute())
    state_bytes = acc.counts.nbytes + acc.sum_confidence.nbytes + acc.sum_correct.nbytes
    tm_bytes = _state_bytes(tm_ece)
    rss = _peak_rss_mb() - rss0
    del tm_ece, tm_mce

    print(f"  ours (ECE+MCE+ACE, foreground): {t_ours}  state {state_bytes} B")
    print(f"  ours (ECE+MCE+ACE, top-label):  {t_top}")
    print(f"  torchmetrics ECE only:          {t_tm_ece}  ({t_tm_ece.ratio(t_ours)} vs ours)")
    both = t_tm_ece + t_tm_mce
    print(
        f"  torchmetrics ECE + MCE:         {both}  ({both.ratio(t_ours)} vs ours), "
        f"state {tm_bytes / 2**20:.0f} MB per metric; peak RSS growth {rss:.0f} MB"
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
    t_mc, t_tm_mc = _Timer(), _Timer()
    for i in range(n_mc):
        p, y = _multiclass_chunk(i, chunk, k)
        pt, yt = torch.from_numpy(p.T), torch.from_numpy(y)  # torchmetrics wants (N, K)
        with t_mc:
            mc.update(p, y)
        with t_tm_mc:
            tm_mc.update(pt, yt)
    with t_mc:
        mc_ece = mc.result().ece
    with t_tm_mc:
        mc_ece_tm = float(tm_mc.compute())
    print(
        f"  multiclass K={k}, {n_mc * chunk:.3g} px: ours {t_mc}, torchmetrics ECE "
        f"{t_tm_mc} ({t_tm_mc.ratio(t_mc)} vs ours); ECE {mc_ece:.6f} vs {mc_ece_tm:.6f}"
    )
    _netcal_row(chunk)
    return {
        "calibration_speedup": t_tm_ece.wall / t_ours.wall,
        "calibration_speedup_cpu": t_tm_ece.cpu / t_ours.cpu,
    }


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

    def best_of(fn):
        timers = []
        for _ in range(repeats):
            with _Timer() as timer:
                out = fn()
            timers.append(timer)
        return out, min(timers, key=lambda t: t.wall)

    (g, h), t_ours = best_of(lambda: (ged(samples, raters), hm_iou(samples, raters)))
    both, t_shared = best_of(lambda: observer_metrics(samples, raters))
    with _Timer() as t_ref:
        ref_ged, ref_hm = _reference_ged_hm(samples, raters)
    assert abs(g.ged - ref_ged) < 1e-9 and abs(h.hm_iou - ref_hm) < 1e-9
    assert abs(both.ged.ged - ref_ged) < 1e-9
    print(f"  reference (per-pair loops):   {t_ref}")
    print(f"  ours ged + hm_iou (best of {repeats}): {t_ours}  ({t_ref.ratio(t_ours)} vs ours)")
    print(f"  ours observer_metrics (+NCC): {t_shared}  ({t_ref.ratio(t_shared)} vs ours)")
    print(f"  GED^2 {g.ged:.5f}, HM-IoU {h.hm_iou:.5f}, NCC {both.ncc:.4f} (match the reference)")
    return {
        "observer_speedup": t_ref.wall / t_ours.wall,
        "observer_speedup_cpu": t_ref.cpu / t_ours.cpu,
    }


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
        f"speedups (wall / cpu): calibration {out['calibration_speedup']:.1f}x / "
        f"{out['calibration_speedup_cpu']:.1f}x (goal >= 5x, vs torchmetrics ECE alone), "
        f"GED+HM-IoU {out['observer_speedup']:.0f}x / {out['observer_speedup_cpu']:.0f}x "
        "(goal >= 50x); cpu time is the fairer measure on a shared machine"
    )
    return out


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
