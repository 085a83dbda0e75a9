"""Project store torture: random SIGKILLs of a writer during saves, then a full check.

Each trial forks a writer that commits annotations (two raters, 3D, chunk-sharing saves), drafts
and predictions in a loop; after a random delay the writer is SIGKILLed from outside. The store
is then opened read-write (which repairs derived state and cleans staging) and checked: ``verify``
must report no error, every committed version (each reported by the writer before the kill)
must be present and read back exactly, and the OME label image must equal the latest version as
an NGFF reader sees it. Prints the figures; goal: 0 lost, 0 damaged, 0 torn.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (8, 64, 64)


def _mask(seed: int) -> np.ndarray:
    grid = np.indices(SHAPE)
    base = ((grid[0] - 4) ** 2 + (grid[1] - 32) ** 2 + (grid[2] - 32) ** 2 <= 120).astype(np.uint8)
    rng = np.random.default_rng(seed)
    z, y, x = (int(rng.integers(0, s - 4)) for s in SHAPE)
    base[z : z + 4, y : y + 16, x : x + 16] = 1 + seed % 2
    return base


def _writer(path: Path, seed: int, fd: int) -> None:
    from napari_probseg.store import ProjectStore

    store = ProjectStore.open(path)
    k = 0
    while True:
        k += 1
        s = seed * 1000 + k
        rater = ("alice", "bob")[k % 2]
        if k % 5 == 0:
            store.save_draft("img", rater, _mask(s), note=f"seed={s}")
        elif k % 7 == 0:
            store.save_prediction("img", {"samples": _mask(s)[None]}, {"seed": s})
        else:
            hist = store.history("img", rater)
            v = store.save_annotation(
                "img", rater, _mask(s), role="expert", note=f"seed={s}",
                parent_version=hist[-1].version if hist else None,
            )  # fmt: skip
            os.write(fd, f"{rater} {v.version} {s}\n".encode())


def _label_image(path: Path, rater: str) -> np.ndarray:
    import zarr

    group = path / "images" / "img" / "labels" / rater
    meta = json.loads((group / "zarr.json").read_text())
    dataset = meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"]
    return zarr.open_array(str(group / dataset), mode="r")[...]


def _check(path: Path, reported: set[tuple[str, int, int]]) -> dict[str, int]:
    from napari_probseg.store import ProjectStore

    leftovers = len(list((path / ".probseg" / "tmp").iterdir()))
    store = ProjectStore.open(path)
    problems = store.verify()
    errors = [p for p in problems if p.severity == "error"]
    present = {(v.rater, v.version, int(v.note.split("=")[1])) for v in store.history("img")}
    damaged = torn = 0
    for rater, version, seed in present:
        mask, _ = store.read_version("img", rater, version)
        damaged += not np.array_equal(mask, _mask(seed))
    for rater in store.raters("img"):
        torn += not np.array_equal(_label_image(path, rater), store.latest("img", rater)[0])
    return {
        "errors": len(errors),
        "lost": len(reported - present),
        "damaged": damaged,
        "torn": torn,
        "versions": len(present),
        "leftovers": leftovers,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="bench_torture")
    parser.add_argument("--quick", action="store_true", help="30 trials instead of 120")
    parser.add_argument("--trials", type=int, default=None)
    args, _ = parser.parse_known_args(argv or [])
    from napari_probseg.store import ProjectStore

    trials = args.trials or (30 if args.quick else 120)
    rng = np.random.default_rng(13)
    tmp = Path(tempfile.mkdtemp(prefix="bench_torture_"))
    path = tmp / "p.zarr"
    store = ProjectStore.create(path, class_names=["bg", "a", "b"])
    store.add_image(np.zeros(SHAPE, np.float32), image_id="img", label_chunks=(4, 32, 32))
    reported: set[tuple[str, int, int]] = set()
    totals = {"errors": 0, "lost": 0, "damaged": 0, "torn": 0, "leftovers": 0}
    check_s = 0.0
    start = time.perf_counter()
    try:
        for trial in range(trials):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                try:
                    _writer(path, trial + 1, write_fd)
                except BaseException as exc:  # a writer that fails is a benchmark failure
                    os.write(write_fd, f"ERROR {exc!r}\n".encode())
                finally:
                    os._exit(1)
            os.close(write_fd)
            time.sleep(float(rng.uniform(0.05, 0.6)))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            with os.fdopen(read_fd) as f:
                for line in f.read().splitlines():
                    if line.startswith("ERROR"):
                        raise RuntimeError(f"the writer failed before the kill: {line}")
                    rater, version, seed = line.split()
                    reported.add((rater, int(version), int(seed)))
            t0 = time.perf_counter()
            result = _check(path, reported)
            check_s += time.perf_counter() - t0
            for key in totals:
                totals[key] += result[key]
        elapsed = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {
        "trials": trials,
        "commits_reported": len(reported),
        "versions_checked": result["versions"],
        **totals,
        "seconds": elapsed,
    }
    print(
        f"random SIGKILL trials: {trials}; commits reported before the kills: {len(reported)}; "
        f"committed versions checked after the last trial: {result['versions']}"
    )
    print(
        f"lost committed versions: {totals['lost']}; damaged versions: {totals['damaged']}; "
        f"verify errors after reopening: {totals['errors']}; OME label image != latest: "
        f"{totals['torn']}"
    )
    print(
        f"staging leftovers found (then cleaned on open): {totals['leftovers']}; "
        f"check time {check_s / trials * 1000:.0f} ms per trial; total {elapsed:.1f} s"
    )
    return figures


if __name__ == "__main__":
    main()
