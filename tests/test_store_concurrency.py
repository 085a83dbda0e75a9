"""Concurrency: 4 writer processes (two on the same rater, two on others) commit while a reader
process reads the OME label image the way NGFF readers do (group ``zarr.json``, then the array it
names) and another runs ``verify``: 0 lost updates, 0 torn reads, 0 false errors."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time

import numpy as np

from napari_probseg.store import ProjectStore
from test_store_crash import make_mask

SHAPE = (16, 64, 64)
WRITERS = [("alice", 1), ("alice", 2), ("bob", 3), ("carol", 4)]
N_SAVES = 4


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, np.uint8).tobytes()).hexdigest()


def _writer(path: str, rater: str, tag: int, queue) -> None:
    store = ProjectStore.open(path)
    done = []
    for k in range(N_SAVES):
        seed = tag * 100 + k
        hist = store.history("img", rater)
        v = store.save_annotation(
            "img", rater, make_mask(seed), role="expert", note=f"seed={seed}",
            parent_version=hist[-1].version if hist else None,
        )  # fmt: skip
        done.append((rater, v.version, seed))
    queue.put(("writer", done))


def _ome_reader(path: str, valid: set[str], stop, queue) -> None:
    import zarr

    group = f"{path}/images/img/labels/alice"
    reads = torn = 0
    while not stop.is_set():
        meta = json.loads(open(f"{group}/zarr.json", "rb").read())
        dataset = meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"]
        data = zarr.open_array(f"{group}/{dataset}", mode="r")[...]
        reads += 1
        torn += _digest(data) not in valid
    queue.put(("reader", (reads, torn)))


def _verifier(path: str, stop, queue) -> None:
    runs, problems = 0, []
    while not stop.is_set():
        found = ProjectStore.open(path, mode="r").verify()
        problems += [str(p) for p in found]
        runs += 1
    queue.put(("verify", (runs, problems)))


def test_writers_readers_and_verify_during_commits(tmp_path):
    path = str(tmp_path / "conc.zarr")
    store = ProjectStore.create(path)
    store.add_image(np.zeros(SHAPE, np.float32), image_id="img", label_chunks=(4, 32, 32))
    store.save_annotation("img", "alice", make_mask(0), role="expert", note="seed=0")
    seeds = [0] + [tag * 100 + k for _, tag in WRITERS for k in range(N_SAVES)]
    valid = {_digest(make_mask(s)) for s in seeds}
    ctx = multiprocessing.get_context("fork")
    queue, stop = ctx.Queue(), ctx.Event()
    watchers = [
        ctx.Process(target=_ome_reader, args=(path, valid, stop, queue)),
        ctx.Process(target=_verifier, args=(path, stop, queue)),
    ]
    writers = [ctx.Process(target=_writer, args=(path, r, t, queue)) for r, t in WRITERS]
    for p in watchers:
        p.start()
    time.sleep(0.2)
    for p in writers:
        p.start()
    results = [queue.get(timeout=300) for _ in writers]
    stop.set()
    results += [queue.get(timeout=300) for _ in watchers]
    for p in writers + watchers:
        p.join(timeout=60)
        assert p.exitcode == 0
    by_kind: dict[str, list] = {}
    for kind, value in results:
        by_kind.setdefault(kind, []).append(value)
    saved = {entry for done in by_kind["writer"] for entry in done}
    history = ProjectStore.open(path).history("img")
    present = {(v.rater, v.version, int(v.note.split("=")[1])) for v in history}
    lost = saved - present
    ((reads, torn),) = by_kind["reader"]
    ((verify_runs, false_errors),) = by_kind["verify"]
    print(
        f"{len(saved)} commits by {len(WRITERS)} writers, {len(lost)} lost; {reads} OME reads, "
        f"{torn} torn; {verify_runs} verify runs, {len(false_errors)} problems reported"
    )
    assert len(saved) == len(WRITERS) * N_SAVES and not lost
    assert reads >= 1 and torn == 0
    assert verify_runs >= 1 and false_errors == []
    alice = sorted((v for v in history if v.rater == "alice"), key=lambda v: v.version)
    assert [v.version for v in alice] == list(range(1, 2 * N_SAVES + 2))
    for v in alice:  # a save based on a version that was no longer the latest is flagged
        assert v.conflict == (v.previous is not None and v.based_on != v.previous)
    assert ProjectStore.open(path).verify() == []
