"""Deterministic kill points: a writer process is SIGKILLed before each file-system operation
(every mkdir, link, rename, replace and delete) of a 2D save, a 3D save and a draft save; after
each kill the store must open, ``verify`` must find no error, every committed version must read
back exactly, and the latest version, the OME label image and the draft must each be the old or
the new state, never a mix.

The writer is a forked child of the test process (everything already imported, so hundreds of
kill points stay cheap); the kill is a real SIGKILL of that process.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from napari_probseg.store import ProjectStore

#: The operations a kill is injected before (module, attribute).
OPERATIONS = [
    (os, "mkdir"),
    (os, "link"),
    (os, "rename"),
    (os, "replace"),
    (os, "unlink"),
    (os, "remove"),
    (os, "rmdir"),
    (shutil, "rmtree"),
    (shutil, "copyfile"),
]

SCENARIOS = {
    "2d-save": ((16, 16), (8, 8)),
    "3d-save": ((2, 16, 16), (2, 8, 8)),
    "draft-save": ((16, 16), (8, 8)),
}


def masks(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """v1, v2 (one chunk changed, one cleared), draft d1, draft d2."""
    v1 = np.zeros(shape, np.uint8)
    v1[(slice(None),) * (len(shape) - 2) + (slice(2, 14), slice(2, 14))] = 1
    v2 = v1.copy()
    v2[(slice(None),) * (len(shape) - 2) + (slice(0, 4), slice(0, 4))] = 2
    v2[(slice(None),) * (len(shape) - 2) + (slice(8, 14), slice(8, 14))] = 0
    d1 = v1.copy()
    d1[(0,) * (len(shape) - 1)] = 2
    d2 = v2.copy()
    d2[(-1,) * len(shape)] = 1
    return v1, v2, d1, d2


def base_store(path: Path, shape, chunks) -> ProjectStore:
    store = ProjectStore.create(path, class_names=["bg", "a", "b"])
    store.add_image(np.zeros(shape, np.float32), image_id="img", label_chunks=chunks)
    v1, _, d1, _ = masks(shape)
    store.save_annotation("img", "alice", v1, role="expert", note="v1")
    store.save_draft("img", "alice", d1)
    return store


def operation(store: ProjectStore, scenario: str, shape) -> None:
    _, v2, _, d2 = masks(shape)
    if scenario == "draft-save":
        store.save_draft("img", "alice", d2)
    else:
        store.save_annotation("img", "alice", v2, role="expert", note="v2", parent_version=1)


def run_child(path: Path, scenario: str, shape, kill_at: int | None) -> int:
    """Fork a writer; SIGKILL it before operation number ``kill_at`` (1-based). Return the count
    of operations it reached (all of them when ``kill_at`` is None)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer
        os.close(read_fd)
        count = [0]
        originals = {}

        def wrap(module, name):
            original = getattr(module, name)
            originals[(module, name)] = original

            def patched(*args, **kwargs):
                count[0] += 1
                if kill_at is not None and count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(*args, **kwargs)

            setattr(module, name, patched)

        try:
            store = ProjectStore.open(path)
            for module, name in OPERATIONS:
                wrap(module, name)
            operation(store, scenario, shape)
            for (module, name), original in originals.items():
                setattr(module, name, original)
            os.write(write_fd, str(count[0]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    out = os.read(read_fd, 64)
    os.close(read_fd)
    if kill_at is not None:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        return kill_at
    assert os.WIFEXITED(status) and out, "the writer failed without a kill"
    return int(out)


def label_image(store: ProjectStore) -> np.ndarray:
    """The OME label image as an NGFF reader sees it (group metadata, then the array it names)."""
    import json

    import zarr

    group = store.path / "images/img/labels/alice"
    meta = json.loads((group / "zarr.json").read_text())
    dataset = meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"]
    return zarr.open_array(str(group / dataset), mode="r")[...]


def check_after_kill(path: Path, scenario: str, shape) -> str:
    v1, v2, d1, d2 = masks(shape)
    store = ProjectStore.open(path)  # read-write: repairs derived state, cleans staging
    errors = [p for p in store.verify() if p.severity == "error"]
    assert not errors, errors
    history = store.history("img", "alice")
    assert [h.note for h in history] in (["v1"], ["v1", "v2"])
    np.testing.assert_array_equal(store.read_version("img", "alice", 1)[0], v1)
    committed = len(history) == 2
    if committed:
        np.testing.assert_array_equal(store.read_version("img", "alice", 2)[0], v2)
    latest = store.latest("img", "alice")[0]
    np.testing.assert_array_equal(latest, v2 if committed else v1)
    np.testing.assert_array_equal(label_image(store), latest)
    draft = store.load_draft("img", "alice")
    if scenario == "draft-save":
        assert draft is not None
        assert np.array_equal(draft[0], d1) or np.array_equal(draft[0], d2)
        return "new" if np.array_equal(draft[0], d2) else "old"
    if draft is not None:  # the commit discards the draft only after it is committed
        np.testing.assert_array_equal(draft[0], d1)
    return "new" if committed else "old"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_kill_before_every_file_system_operation(tmp_path, scenario):
    shape, chunks = SCENARIOS[scenario]
    base = tmp_path / "base.zarr"
    base_store(base, shape, chunks)
    probe = tmp_path / "probe.zarr"
    shutil.copytree(base, probe)
    total = run_child(probe, scenario, shape, None)
    assert total >= 8  # the scenario really writes
    outcomes = []
    for k in range(1, total + 1):
        work = tmp_path / f"k{k}.zarr"
        shutil.copytree(base, work)
        run_child(work, scenario, shape, k)
        outcomes.append(check_after_kill(work, scenario, shape))
        shutil.rmtree(work)
    # early kills keep the old state, late ones (after the commit point) the new one
    assert outcomes[0] == "old" and "new" in outcomes
    assert outcomes == sorted(outcomes, key=lambda o: o == "new")
    print(f"{scenario}: {total} kill points, {outcomes.count('new')} after the commit point")
