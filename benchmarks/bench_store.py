"""Project store: bytes and time to save a one-slice correction of a large 3D annotation.

Compares the store's chunk-sharing save (unchanged chunks hard-linked from the parent version)
with rewriting the whole annotation as a new array. Bytes written are measured on disk: the sizes
of files that are new or changed (by inode, size and mtime) after the save, i.e. what ``du`` sees
plus rewritten files. Goal: >= 20x fewer bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _snapshot(root: Path) -> dict[tuple[int, int], tuple[int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns)
    return out


def _bytes_written(before: dict, after: dict) -> int:
    return sum(size for key, (size, mtime) in after.items() if before.get(key) != (size, mtime))


def _annotation(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A lesion-like mask: a few ellipsoids with rough boundaries."""
    mask = np.zeros(shape, np.uint8)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for _ in range(4):
        c = [rng.uniform(0.2, 0.8) * s for s in shape]
        r = [rng.uniform(0.08, 0.2) * s for s in shape]
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2
        mask[inside <= 1 + 0.1 * rng.standard_normal(inside.shape).astype(np.float32)] = 1
    return mask


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="bench_store")
    parser.add_argument("--quick", action="store_true", help="small volume (64x256x256)")
    args, _ = parser.parse_known_args(argv or [])
    from napari_probseg.store import ProjectStore
    from napari_probseg.store._arrays import write_array

    shape = (64, 256, 256) if args.quick else (256, 512, 512)  # (Z, Y, X): 512x512x256 voxels
    rng = np.random.default_rng(0)
    mask = _annotation(shape, rng)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        store = ProjectStore.create(tmp / "p.zarr")
        store.add_image(np.zeros(shape, np.uint8), image_id="vol")
        store.save_annotation("vol", "alice", mask, role="expert")
        results = {}
        z = shape[0] // 2
        local = mask.copy()
        y0, x0 = shape[1] // 3, shape[2] // 3
        local[z, y0 : y0 + 60, x0 : x0 + 60] ^= 1  # a brush correction in one slice
        full = local.copy()
        full[z] = 1 - mask[z]  # the whole slice changed
        for name, corrected in (("local edit", local), ("whole slice", full)):
            base = store.latest("vol", "alice")[1].version
            versions = store.path / "images" / "vol" / "annotations"
            before, before_v = _snapshot(tmp), _snapshot(versions)
            t = time.perf_counter()
            v = store.save_annotation("vol", "alice", corrected, role="expert", parent_version=base)
            t_store = time.perf_counter() - t
            b_total = _bytes_written(before, _snapshot(tmp))
            b_store = _bytes_written(before_v, _snapshot(versions))
            dest = tmp / f"rewrite_{name.replace(' ', '_')}"
            before = _snapshot(tmp)
            t = time.perf_counter()
            write_array(dest, corrected, chunks=store.image_info("vol")["label_chunks"])
            t_full = time.perf_counter() - t
            b_full = _bytes_written(before, _snapshot(tmp))
            ratio = b_full / max(b_store, 1)
            print(
                f"{name:12s} {shape}: new version {b_store / 1e3:8.1f} kB "
                f"({v.chunks_written} chunks written, {v.chunks_linked} linked) vs full rewrite "
                f"{b_full / 1e3:8.1f} kB: {ratio:5.1f}x fewer bytes "
                f"{'(goal >= 20x: OK)' if ratio >= 20 else '(goal >= 20x: MISSED)'}; whole save incl. "
                f"derived OME label copy + metadata {b_total / 1e3:8.1f} kB "
                f"({b_full / max(b_total, 1):4.1f}x); time {t_store:5.2f} s vs {t_full:5.2f} s",
                flush=True,
            )
            results[f"{name} ratio"] = ratio
            results[f"{name} ratio incl. derived"] = b_full / max(b_total, 1)
            results[f"{name} store s"] = t_store
            results[f"{name} full s"] = t_full
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
