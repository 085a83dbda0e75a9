"""Streaming ``UncertaintyAccumulator`` vs the stacked way, side by side.

The stacked way keeps all ``N`` sampled probability maps in one ``(N, K, *S)`` array and computes
the maps with plain numpy, as the ValUES framework does (mean over samples, entropy of the mean,
mean of the per-sample entropies; plus the variance and per-sample volumes the accumulator also
returns). The streaming way feeds batches of ``B`` samples to the accumulator as they are made.

Both ways draw the *same* samples (softmax of scaled Gaussian logits, one sample at a time, from
one seeded generator) and both are measured in a fresh subprocess each:

- peak memory: ``tracemalloc`` peak over the whole run, generation included (numpy reports its
  buffers to tracemalloc), and the peak-RSS delta (``ru_maxrss`` minus RSS before the run) as a
  cross-check;
- time: the best of ``--repeat`` further, untraced runs, in process CPU seconds (numpy runs
  these ops on one thread; CPU time is robust to other load on a shared machine), total and
  without the sample generation; the best wall time is shown too.

Usage: ``python -m benchmarks accumulator [--quick]`` or
``python benchmarks/bench_accumulator.py [--quick] [--n 32] [--size 128] [--batch 4]``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

EPS = 1e-12  # ValUES-style log(p + eps)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_accumulator", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (N=16, 64^3)")
    parser.add_argument("--n", type=int, default=None, help="samples N (default 32)")
    parser.add_argument("--classes", type=int, default=3, help="classes K (default 3)")
    parser.add_argument("--size", type=int, default=None, help="edge of the cube (default 128)")
    parser.add_argument("--batch", type=int, default=4, help="accumulator batch size (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed runs, best kept (2; 3 quick)"
    )
    parser.add_argument("--worker", choices=("stacked", "stream"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 16 if args.quick else 32
    if args.size is None:
        args.size = 64 if args.quick else 128
    if args.repeat is None:
        args.repeat = 3 if args.quick else 2
    return args


def _fill_sample(rng: np.random.Generator, out: np.ndarray) -> None:
    """Write one random softmax sample into ``out`` (K, *S) float32, in place."""
    rng.standard_normal(dtype=np.float32, out=out)
    out *= 2.0  # sharper than unit logits: Dirichlet-like, neither flat nor one-hot
    out -= out.max(axis=0)
    np.exp(out, out=out)
    out /= out.sum(axis=0)


def _stacked(args: argparse.Namespace, shape: tuple[int, ...]) -> tuple[dict, float]:
    rng = np.random.default_rng(args.seed)
    gen = 0.0
    samples = np.empty((args.n, args.classes, *shape), np.float32)
    for i in range(args.n):
        t0 = time.process_time()
        _fill_sample(rng, samples[i])
        gen += time.process_time() - t0
    mean = samples.mean(axis=0)
    pe = -np.sum(mean * np.log(mean + EPS), axis=0)
    ee = np.mean(-np.sum(samples * np.log(samples + EPS), axis=1), axis=0)
    mi = pe - ee
    var = samples.var(axis=0)
    volumes = samples[:, 1:].sum(axis=tuple(range(1, samples.ndim)), dtype=np.float64)
    return _summary(mean, pe, ee, mi, var, volumes), gen


def _stream(args: argparse.Namespace, shape: tuple[int, ...]) -> tuple[dict, float]:
    from napari_probseg.core.uncertainty import UncertaintyAccumulator

    rng = np.random.default_rng(args.seed)
    gen = 0.0
    acc = UncertaintyAccumulator(args.classes, spatial_dims=len(shape))
    buffer = np.empty((args.batch, args.classes, *shape), np.float32)
    done = 0
    while done < args.n:
        b = min(args.batch, args.n - done)
        t0 = time.process_time()
        for i in range(b):
            _fill_sample(rng, buffer[i])
        gen += time.process_time() - t0
        acc.update(buffer[:b])
        done += b
    del buffer  # the last batch is no longer needed (as in the engine's loop)
    m = acc.result()
    out = _summary(
        m.mean_probs,
        m.predictive_entropy,
        m.expected_entropy,
        m.mutual_information,
        m.variance,
        m.volumes,
    )
    out["state_bytes"] = acc.nbytes
    return out, gen


def _summary(mean, pe, ee, mi, var, volumes) -> dict:
    return {
        "mean": float(np.sum(mean, dtype=np.float64)),
        "pe": float(np.sum(pe, dtype=np.float64)),
        "ee": float(np.sum(ee, dtype=np.float64)),
        "mi": float(np.sum(np.maximum(mi, 0), dtype=np.float64)),
        "var": float(np.sum(var, dtype=np.float64)),
        "volumes": float(np.sum(volumes)),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _worker(args: argparse.Namespace) -> dict:
    shape = (args.size,) * 3
    run = _stacked if args.worker == "stacked" else _stream
    run(argparse.Namespace(**{**vars(args), "n": 1, "size": 8}), (8, 8, 8))  # warm imports
    rss_before = _rss_bytes()
    tracemalloc.start()
    summary, _ = run(args, shape)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    # CPU time of this (single-threaded numpy) process, best of a few runs: wall time on a
    # shared machine swings 2x with the other processes' load; wall time is reported too.
    total, gen, wall = math.inf, 0.0, math.inf
    for _ in range(max(1, args.repeat)):
        t0, w0 = time.process_time(), time.perf_counter()
        _, g = run(args, shape)
        elapsed = time.process_time() - t0
        wall = min(wall, time.perf_counter() - w0)
        if elapsed < total:
            total, gen = elapsed, g
    return {
        "way": args.worker,
        "peak_traced": peak,
        "peak_rss_delta": rss_peak,
        "time_total": total,
        "time_wall": wall,
        "time_compute": total - gen,
        **summary,
    }


def _run_worker(way: str, argv: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", way]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    """Run both ways in subprocesses, print a table and the ratios; return the numbers."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    if args.worker:
        result = _worker(args)
        print(json.dumps(result))
        return result
    mib = 1024**2
    print(
        f"N={args.n} samples, K={args.classes}, {args.size}^3 voxels, float32, "
        f"accumulator batches of {args.batch}"
    )
    rows = {way: _run_worker(way, argv) for way in ("stacked", "stream")}
    print(
        f"{'way':8} {'peak traced':>12} {'peak RSS':>10} {'CPU s':>8} {'compute s':>9} {'wall s':>7}"
    )
    for way, r in rows.items():
        print(
            f"{way:8} {r['peak_traced'] / mib:10.1f}Mi {r['peak_rss_delta'] / mib:8.1f}Mi "
            f"{r['time_total']:8.2f} {r['time_compute']:9.2f} {r['time_wall']:7.2f}"
        )
    st, sm = rows["stacked"], rows["stream"]
    print(f"accumulator state: {sm['state_bytes'] / mib:.1f} MiB (independent of N)")
    worst = max(
        abs(st[k] - sm[k]) / max(abs(st[k]), 1e-12) for k in ("mean", "pe", "ee", "var", "volumes")
    )
    print(f"results agree: max relative difference of map sums {worst:.2e}")
    ratios = {
        "memory_ratio_traced": st["peak_traced"] / sm["peak_traced"],
        "memory_ratio_rss": st["peak_rss_delta"] / max(sm["peak_rss_delta"], 1),
        "speed_ratio_total": st["time_total"] / sm["time_total"],
        "speed_ratio_compute": st["time_compute"] / sm["time_compute"],
        "speed_ratio_wall": st["time_wall"] / sm["time_wall"],
        "max_relative_difference": worst,
    }
    print(
        f"peak memory: stacked / stream = {ratios['memory_ratio_traced']:.1f}x (tracemalloc), "
        f"{ratios['memory_ratio_rss']:.1f}x (RSS)   [goal >= 8x]"
    )
    print(
        f"speed: stacked time / stream time = {ratios['speed_ratio_total']:.2f}x CPU, "
        f"{ratios['speed_ratio_compute']:.2f}x CPU without generation, "
        f"{ratios['speed_ratio_wall']:.2f}x wall   [goal >= 1]"
    )
    return {"rows": rows, **ratios}


if __name__ == "__main__":
    main()
