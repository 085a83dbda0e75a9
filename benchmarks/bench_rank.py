"""Distributed ranking (``probseg rank``): throughput with 1 vs 2 dask workers, client memory.

- Throughput: rank 200 stored 2D images (64x64, bundled ``lesions2d-unet``, MC dropout, N = 8)
  on a LocalCluster of 1 and of 2 worker processes (one thread each, torch 1 thread); the cluster
  is started and its workers are up before the clock starts, so the time covers model loading
  per worker (once), reading the images on the workers, scoring and writing the record. Goal:
  >= 1.7x with 2 workers on a 2-core machine (only meaningful when the cores are otherwise idle).
- Client memory: peak RSS of the client process (a fresh subprocess per store size, the workers
  are separate processes) for stores of 50 and 200 images: the client sends ids and gathers small
  records with a bounded number of tasks in flight, so it should not grow with the store.

``python -m benchmarks rank`` (``--quick``: 60 and 20 images).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _make_store(path: Path, n: int) -> None:
    from napari_probseg.data.synthetic import make_lesions
    from napari_probseg.store import ProjectStore

    store = ProjectStore.create(path, class_names=["background", "lesion"])
    for start in range(0, n, 50):  # generate in blocks: the benchmark itself stays small
        data = make_lesions(min(50, n - start), shape=(64, 64), seed=start)
        for i, image in enumerate(data.images):
            store.add_image(image, image_id=f"img{start + i:04d}")


def _config():
    from napari_probseg.active.rank import RankConfig

    return RankConfig(model="lesions2d-unet", method="mc_dropout", score="bald", n_samples=8)


def _rank_with(store: Path, n_workers: int) -> float:
    from distributed import Client, LocalCluster

    from napari_probseg.active.rank import rank_store

    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(n_workers)
        t0 = time.perf_counter()
        record = rank_store(store, _config(), client=client, resume=False)
        seconds = time.perf_counter() - t0
    assert len(record["entries"]) == record["n_images"], record["failed"][:3]
    return seconds


def _client_memory(store: Path) -> None:
    """Subprocess entry: rank ``store`` with 2 worker processes; print the client's peak RSS."""
    from napari_probseg.active.rank import rank_store

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = rank_store(store, _config(), n_workers=2, resume=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": len(record["entries"]), "before_kib": before, "peak_kib": peak}))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--client-memory"]:
        _client_memory(Path(argv[1]))
        return
    quick = "--quick" in argv
    n_big, n_small = (60, 20) if quick else (200, 50)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.zarr", Path(tmp) / "small.zarr"
        t0 = time.perf_counter()
        _make_store(big, n_big)
        _make_store(small, n_small)
        print(f"stores of {n_big} and {n_small} images in {time.perf_counter() - t0:.1f} s")
        load = os.getloadavg()[0]
        one = _rank_with(big, 1)
        two = _rank_with(big, 2)
        print(
            f"rank {n_big} images: 1 worker {one:.1f} s ({n_big / one:.2f} images/s), "
            f"2 workers {two:.1f} s ({n_big / two:.2f} images/s); throughput ratio "
            f"{one / two:.2f}x (goal >= 1.7x on 2 idle cores; load average at start {load:.1f} "
            f"on {os.cpu_count()} CPUs)"
        )
        peaks = {}
        for n, store in ((n_small, small), (n_big, big)):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_rank", "--client-memory", str(store)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                cwd=str(Path(__file__).resolve().parents[1]),
            )
            peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
        for n, p in peaks.items():
            print(
                f"client peak RSS ranking {n} images: {p['peak_kib'] / 1024:.0f} MiB "
                f"(after imports {p['before_kib'] / 1024:.0f} MiB)"
            )
        ratio = peaks[n_big]["peak_kib"] / peaks[n_small]["peak_kib"]
        print(f"client peak ratio {n_big} vs {n_small} images: {ratio:.2f} (1.0 = independent)")


if __name__ == "__main__":
    main(sys.argv[1:])
