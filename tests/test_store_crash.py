"""Crash safety and concurrent writers of the project store, with real processes.

A writer subprocess is SIGKILLed at random points while it saves annotations, drafts and
predictions; afterwards the store must open, every committed version must be intact and readable,
and ``verify`` must find no error. Concurrent writers (multiprocessing) must lose nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_probseg.store import ProjectStore

SHAPE = (16, 64, 64)


def make_mask(seed: int) -> np.ndarray:
    """Deterministic mask of ``seed``: a shared base plus a seed-specific block, so versions share
    most chunks with their parent."""
    grid = np.indices(SHAPE)
    base = ((grid[0] - 8) ** 2 + (grid[1] - 32) ** 2 + (grid[2] - 32) ** 2 <= 100).astype(np.uint8)
    rng = np.random.default_rng(seed)
    z, y, x = int(rng.integers(0, 16)), int(rng.integers(0, 48)), int(rng.integers(0, 48))
    base[z, y : y + 16, x : x + 16] = 1 + seed % 3
    return base


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store_crash import make_mask
    from napari_probseg.store import ProjectStore
    store = ProjectStore.open({path!r})
    seed = int({seed})
    print("ready", flush=True)
    k = 0
    while True:
        k += 1
        rater = ("alice", "bob")[k % 2]
        s = seed * 1000 + k
        if k % 5 == 0:
            store.save_draft("img", rater, make_mask(s), note=f"seed={{s}}")
            continue
        if k % 7 == 0:
            store.save_prediction("img", {{"samples": np.stack([make_mask(s)] * 2)}}, {{"seed": s}})
            continue
        hist = store.history("img", rater)
        v = store.save_annotation("img", rater, make_mask(s), role="expert", note=f"seed={{s}}",
                                  parent_version=hist[-1].version if hist else None)
        print(f"committed {{rater}} {{v.version}} {{s}}", flush=True)
    """
)


def check_store(path, reported: set[tuple[str, int, int]]) -> int:
    store = ProjectStore.open(path)  # read-write open repairs derived state
    errors = [p for p in store.verify() if p.severity == "error"]
    assert not errors, errors
    n = 0
    for rater in store.raters("img"):
        for rec in store.history("img", rater):
            seed = int(rec.note.split("=")[1])
            mask, _ = store.read_version("img", rater, rec.version)
            np.testing.assert_array_equal(mask, make_mask(seed))
            n += 1
        store.latest("img", rater)
        label = store.path / "images" / "img" / "labels" / rater
        assert (label / "zarr.json").is_file()
    present = {(v.rater, v.version, int(v.note.split("=")[1])) for v in store.history("img")}
    assert reported <= present, reported - present
    for rater in store.draft_raters("img"):
        mask, info = store.load_draft("img", rater)
        np.testing.assert_array_equal(mask, make_mask(int(info.note.split("=")[1])))
    for run in store.list_predictions("img"):
        arrays, meta = store.read_prediction("img", run["run_id"])
        np.testing.assert_array_equal(arrays["samples"][1], make_mask(meta["seed"]))
    return n


def test_killed_writer_never_corrupts_committed_versions(tmp_path):
    path = str(tmp_path / "crash.zarr")
    store = ProjectStore.create(path)
    store.add_image(np.zeros(SHAPE, np.float32), image_id="img", label_chunks=(4, 32, 32))
    tests_dir = os.path.dirname(__file__)
    rng = np.random.default_rng(1234)
    reported: set[tuple[str, int, int]] = set()
    start = time.monotonic()
    iterations = 0
    while iterations < 18 and time.monotonic() - start < 40:
        iterations += 1
        code = WRITER.format(tests=tests_dir, path=path, seed=iterations)
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(float(rng.uniform(0.0, 0.8)))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        for line in out.splitlines():
            if line.startswith("committed "):
                _, rater, version, seed = line.split()
                reported.add((rater, int(version), int(seed)))
    assert iterations >= 10
    assert len(reported) >= iterations // 2  # the writers did commit work between the kills
    n = check_store(path, reported)
    assert n >= len(reported)


def _worker(path: str, rater: str, tag: int, n: int, queue) -> None:
    store = ProjectStore.open(path)
    done = []
    parent = None
    for k in range(n):
        seed = tag * 100 + k
        v = store.save_annotation(
            "img",
            rater,
            make_mask(seed),
            role="resident",
            note=f"seed={seed}",
            parent_version=parent,
        )
        parent = v.version
        done.append((rater, v.version, seed))
    queue.put(done)


@pytest.mark.parametrize("raters", [("alice", "bob"), ("alice", "alice")])
def test_concurrent_writers_lose_nothing(tmp_path, raters):
    path = str(tmp_path / "conc.zarr")
    store = ProjectStore.create(path)
    store.add_image(np.zeros(SHAPE, np.float32), image_id="img", label_chunks=(4, 32, 32))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    n = 6
    procs = [
        ctx.Process(target=_worker, args=(path, r, i + 1, n, queue)) for i, r in enumerate(raters)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    saved = {entry for result in results for entry in result}
    assert len(saved) == n * len(raters)
    history = ProjectStore.open(path).history("img")
    assert {(v.rater, v.version, int(v.note.split("=")[1])) for v in history} == saved
    check_store(path, saved)
    if raters[0] == raters[1]:
        versions = sorted(history, key=lambda v: v.version)
        assert [v.version for v in versions] == list(range(1, 2 * n + 1))
        # every save that was not based on the then-latest version is flagged, none overwritten
        for v in versions:
            assert v.conflict == (v.previous is not None and v.based_on != v.previous)
