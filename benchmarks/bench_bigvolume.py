"""Big-volume benchmark: peak memory per input size, network body passes per tile, time.

Each case runs in a fresh subprocess (peak RSS = ``ru_maxrss``) on a 3D volume with a bundled 3D
model, streaming maps and uint8 samples into a zarr output store (``predict(..., output=...)``):

- ``softmax`` (lesions3d-unet), ``mc_dropout`` N = 4 (lesions3d-unet), ``ssn`` N = 16
  (lesions3d-ssn): the goals are peak RSS <= 6x the input volume and, for SSN, one body pass per
  tile whatever N;
- ``ssn`` N = 16 from a zarr input on disk (read slab by slab, never loaded whole);
- ``ssn-n64``: SSN N = 64, more samples than one batch holds: each tile's body kept between the
  sample batches (``engine/_windows.BodyCache``) against a body per tile and batch (before),
  side by side in one run, with a digest of the samples (the same);
- ``cli-softmax``, ``cli-mc_dropout``, ``cli-ssn``: ``probseg predict VOL.npy --out`` as a user runs it (prediction,
  then the summary read block by block from the output store), peak RSS of that process;
- ``summary``: the summary alone from a synthetic N = 16 output store, block by block against
  loaded whole (the ``--out`` path before), side by side in one run.

Printed per case: ``rss_over_input`` = peak RSS / input bytes, ``extra_over_input`` = (peak RSS -
RSS after importing torch, loading the model and making the input) / input bytes,
``body_passes_per_tile``, time.

Measured here (2 cores shared with other jobs, load average 4-9; times indicative only), on
300 x 512 x 512 float32 (315 MB, 726 tiles of 64^3), ``--full``:

- ``ssn`` N = 16, 2026-12-01 (strips, slab carry on disk, fixed mmap threshold): peak RSS
  1.78 GB = 5.64x the input (3.2x above the process with the input), 1.0 body pass per tile
  (batch 16), 1433 s (24 min); before the
  strips: 2 passes per tile (batch 8 + 8) and ~11x (estimated; the run took > 25 min).
- ``softmax``, 2026-12-02 (load ~2): peak RSS 1.14 GB = 3.64x the input (1.2x above the process
  with the input), 1.0 body pass per tile, 272 s; the session before (slabs without strips):
  1.79 GB = 5.7x, 155 s; before slab streaming: 7.47 GB (24x).

- ``summary`` (2026-12-02, load ~2): the summary ``probseg predict --out`` computes after
  streaming, from a synthetic N = 16 store: read block by block 517 MB peak RSS (1.37x the input
  above the process), 72 s; loaded whole as before 3.36 GB (10.4x), 79 s; the same numbers.
  (An earlier version of this case wrote the store in the parent, whose RSS the children
  inherited as ru_maxrss: it printed ~1.04 GB for the block-by-block side.)
- ``cli-ssn`` (2026-12-02, load 1-3): ``probseg predict vol.npy --out`` with SSN N = 16 peaks at
  1.73 GB = 5.51x the input, 525 s; ``cli-mc_dropout`` N = 4 1.46 GB = 4.64x, 1042 s;
  ``cli-softmax`` 1.12 GB = 3.57x, 540 s (load 2-3). Before,
  the CLI summarized from the whole maps and samples after streaming (~9x).

- ``ssn-n64`` (2026-12-02, quiet): SSN N = 64 on 300 x 512 x 512, two batches of 32 per strip.
  Bodies kept: 1.0 body pass per tile, peak RSS 3.11 GB = 9.89x the input, 641 s; a body per
  tile and batch (before): 2.0 passes, 2.88 GB = 9.16x, 759 s: 0.84x the time, 1.08x the peak.
  Same samples (digest). (A first pair, 1022 vs 891 s, shared the machine with my test runs.)
  On 64 x 192 x 192 (fastest of 2 alternating): 14.5 vs 18.0 s = 0.81x; in one process,
  alternating, 13.0-13.3 vs 14.4-16.1 s. One body pass of a 64^3 tile costs 0.21 s here, 32 SSN heads 0.20 s, so keeping
  the bodies saves at most ~20 % at N = 64 with this small U-Net (more with a bigger body). The
  memory above 6x at N = 64: the column carry (N x K x 64 x 48 x 512 floats = 0.8 GB, the
  48 columns where MONAI's grid puts the last tile flush with the edge), the batch of 32 (strip
  buffer 0.54 GB, SSN head temporaries) and the kept bodies (0.23 GB).

Where the memory of SSN N = 16 goes (512^2 planes): the process with torch and the model
~0.43 GB, the input 0.31 GB, one strip's blend buffer of all 16 samples (16 x 2 x 64 x 64 x 512
float32) 0.27 GB, the slab's normalised input 0.07 GB, the column carry 0.07 GB, the network's
activations and SSN's 16 hypotheses of one 64^3 tile ~0.3 GB; the slab-to-slab carry (0.67 GB)
is a scratch file in the output store, maps and samples are written strip by strip.

The default volume is 64 x 192 x 192 (2 shared cores: the full volume takes ~30 min per method
here); ``--full`` runs 300 x 512 x 512. On small volumes the fixed ~0.45 GB of torch and the
~0.3 GB of 3D U-Net activations per 64^3 tile dwarf the input, so ``rss_over_input`` only
approaches its asymptote on big volumes (64 x 192 x 192 SSN, first version of the strips:
1.09 GB, 1.0 body pass per tile, 45 s).

    python -m benchmarks bigvolume [--quick] [--full] [--only=softmax,ssn,ssn-n64,cli-ssn,summary]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

_CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, {root!r})
import torch
from napari_probseg import engine
from napari_probseg.models import load_method

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
shape = tuple({shape!r})
method = load_method({model!r}, {method!r})
if not {keep_bodies!r}:  # the engine before BodyCache: a body per tile and sample batch
    method.body_bytes = lambda patch: 0
body = getattr(method.network, "body", None) or method.network
calls = [0]
body.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
tmp = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
img = np.empty(shape, np.float32)
for z in range(shape[0]):  # synthetic CT-like intensities, written plane by plane
    img[z] = rng.normal(0.2, 0.1, size=shape[1:])
input_bytes = img.nbytes
if {zarr_input!r}:
    import zarr
    src = zarr.create_array(str(tmp / "in.zarr"), shape=shape, dtype="float32",
                            chunks=(16, shape[1], shape[2]))
    for z in range(0, shape[0], 16):
        src[z:z + 16] = img[z:z + 16]
    del img
    img = src
base = rss()
t0 = time.perf_counter()
res = engine.run_prediction(img, method, n_samples={n}, seed=0, device="cpu",
                            output=tmp / "out.zarr")
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import hashlib, shutil
digest = hashlib.blake2b(digest_size=8)  # of the samples, read slab by slab after the peak
for z in range(0, shape[0], 16):
    digest.update(np.asarray(res.samples[:, z:z + 16]).tobytes())
shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps({{"seconds": dt, "peak": peak, "base": base, "input": input_bytes,
                  "samples_digest": digest.hexdigest(),
                  "body_passes": res.provenance["memory"].get("body_passes"),
                  "tiles": res.provenance["tiling"]["n_tiles"], "body_calls": calls[0],
                  "batch": res.provenance["batch_size"],
                  "mode": res.provenance["memory"]["mode"],
                  "estimate": res.provenance["memory"]["estimate_bytes"]}}))
"""

CASES = {
    "softmax": ("lesions3d-unet", "softmax", 1, False),
    "mc_dropout": ("lesions3d-unet", "mc_dropout", 4, False),
    "ssn": ("lesions3d-ssn", "ssn", 16, False),
    "ssn-zarr": ("lesions3d-ssn", "ssn", 16, True),
    "ssn-n64": ("lesions3d-ssn", "ssn", 64, False),  # run by run_bodies, side by side
}
#: ``probseg predict --out`` as a user runs it (a .npy input; prediction, summary, output store)
CLI_CASES = {
    "cli-softmax": ("lesions3d-unet", "softmax", 1),
    "cli-mc_dropout": ("lesions3d-unet", "mc_dropout", 4),
    "cli-ssn": ("lesions3d-ssn", "ssn", 16),
}

_CLI_CHILD = """
import json, resource, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
tmp = Path(tempfile.mkdtemp())
shape = tuple({shape!r})
rng = np.random.default_rng(0)
img = np.lib.format.open_memmap(tmp / "vol.npy", mode="w+", dtype=np.float32, shape=shape)
for z in range(shape[0]):
    img[z] = rng.normal(0.2, 0.1, size=shape[1:])
img.flush()
del img
t0 = time.perf_counter()
cmd = [sys.executable, "-m", "napari_probseg.cli", "predict", str(tmp / "vol.npy"), "--model",
       {model!r}, "--method", {method!r}, "-n", str({n}), "--seed", "0", "--out",
       str(tmp / "out.zarr"), "--json"]
proc = subprocess.run(cmd, capture_output=True, text=True)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
import shutil
shutil.rmtree(tmp, ignore_errors=True)
if proc.returncode:
    raise SystemExit(proc.stderr[-2000:])
summary = json.loads(proc.stdout)
print(json.dumps({{"seconds": dt, "peak": peak, "input": int(np.prod(shape)) * 4,
                  "regions": len(summary["regions"]["top"]),
                  "timings": summary["timings"]}}))
"""

#: The summary alone, from a synthetic output store: block by block (ours) vs loaded whole
#: (what ``probseg predict --out`` did before: ``engine.summarize`` took numpy arrays).
_SUMMARY_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import zarr
from napari_probseg.core import regions, structure  # noqa: F401 (imports before the base)
from napari_probseg.core.summary import image_summary
import scipy.sparse.csgraph  # noqa: F401
import ctypes
# as in a probseg predict process, where the engine fixes glibc's mmap threshold at 4 MB
ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
group = zarr.open_group({path!r}, mode="r")
names = ("predictive_entropy", "expected_entropy", "mutual_information")
maps = {{n: group[n] for n in names}}
mean, samples = group["mean_probs"], group["samples"]
base = rss()
t0 = time.perf_counter()
if {whole!r}:
    maps = {{n: a[...] for n, a in maps.items()}}
    mean, samples = mean[...], samples[...]
s = image_summary(mean_probs=mean, maps=maps, samples=samples, method="ssn",
                  source=("latent",), n_samples=samples.shape[0])
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
values = {{x["key"]: x["value"] for x in s["scores"]}}
values.update({{"structure/" + m["measure"]: m["value"] for m in s["structure"]}})
values["threshold"] = s["regions"]["threshold"]
values["regions"] = [[r["size"], r["score"]] for r in s["regions"]["top"]]
print(json.dumps({{"seconds": dt, "peak": peak, "base": base, "values": values}}))
"""


def run_case(name: str, shape: tuple[int, ...], *, keep_bodies: bool = True) -> dict:
    model, method, n, zarr_input = CASES[name]
    root = str(Path(__file__).resolve().parents[1])
    code = _CHILD.format(
        root=root,
        shape=shape,
        model=model,
        method=method,
        n=n,
        zarr_input=zarr_input,
        keep_bodies=keep_bodies,
    )
    out = _child_json(code)
    return {
        "case": f"{name} N={n} {'x'.join(map(str, shape))} ({'zarr' if zarr_input else 'numpy'} in)",
        **_memory(out),
        "extra_over_input": round((out["peak"] - out["base"]) / out["input"], 2),
        "body_passes_per_tile": round(out["body_calls"] / max(out["tiles"], 1), 2),
        "tiles": out["tiles"],
        "batch": out["batch"],
        "mode": out["mode"],
        "estimate_mb": round(out["estimate"] / 1e6),
        "seconds": round(out["seconds"], 1),
        "samples_digest": out["samples_digest"],
    }


def run_bodies(shape: tuple[int, ...], repeats: int = 2) -> list[dict]:
    """SSN N = 64 (several sample batches per strip): each tile's body kept between the batches
    (ours) vs run once per tile and batch (before), side by side; the same samples.

    The two sides alternate ``repeats`` times and each keeps its fastest run: one child after
    another on a 2-core machine varies by +-10 %, as much as the difference measured.
    """
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(max(1, repeats)):
        for keep in (True, False):
            runs[keep].append(run_case("ssn-n64", shape, keep_bodies=keep))
    kept, again = (min(runs[k], key=lambda r: r["seconds"]) for k in (True, False))
    kept["case"] += f", bodies kept between batches (fastest of {len(runs[True])})"
    again["case"] += f", a body per tile and batch (before; fastest of {len(runs[False])})"
    ratio = {
        "case": "ssn-n64 kept / before",
        "time_ratio": round(kept["seconds"] / max(again["seconds"], 1e-9), 2),
        "peak_ratio": round(kept["peak_rss_mb"] / max(again["peak_rss_mb"], 1), 2),
        "body_passes_per_tile": f"{kept['body_passes_per_tile']} vs "
        f"{again['body_passes_per_tile']}",
        "same_samples": kept["samples_digest"] == again["samples_digest"],
    }
    return [kept, again, ratio]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_bigvolume", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 64 x 128 x 128 volume")
    parser.add_argument("--full", action="store_true", help="the 300 x 512 x 512 CT volume")
    every = [*CASES, *CLI_CASES, "summary"]
    parser.add_argument("--only", default=",".join(every), help="comma-separated cases")
    args = parser.parse_args(argv)
    shape = (300, 512, 512) if args.full else (64, 128, 128) if args.quick else (64, 192, 192)
    for name in (n.strip() for n in args.only.split(",")):
        if name == "summary":
            rows = run_summary(shape)
        elif name == "ssn-n64":
            rows = run_bodies(shape, repeats=1 if args.full else 2)  # --full: ~17 min a run
        elif name in CLI_CASES:
            rows = [run_cli(name, shape)]
        else:
            rows = [run_case(name, shape)]
        for row in rows:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


def _env() -> dict:
    import os

    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": str(root / "src")}


def _memory(out: dict) -> dict:
    """The memory columns every case prints: input, peak RSS, their ratio and the goal."""
    return {
        "input_mb": round(out["input"] / 1e6, 1),
        "peak_rss_mb": round(out["peak"] / 1e6),
        "rss_over_input": round(out["peak"] / out["input"], 2),
        "goal": "<= 6x on 300x512x512",
    }


def _child_json(code: str):
    """Run ``code`` in a fresh Python (the package's ``src`` on its path); return the JSON of
    its last output line."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(name: str, shape: tuple[int, ...]) -> dict:
    """Peak RSS of the ``probseg predict --out`` process (prediction + summary + output)."""
    model, method, n = CLI_CASES[name]
    code = _CLI_CHILD.format(shape=shape, model=model, method=method, n=n)
    out = _child_json(code)
    return {
        "case": f"probseg predict --out, {method} N={n} {'x'.join(map(str, shape))} (.npy in)",
        **_memory(out),
        "regions": out["regions"],
        "seconds": round(out["seconds"], 1),
    }


def write_synthetic_output(path: Path, shape: tuple[int, ...], n: int = 16) -> int:
    """A prediction store like ``probseg predict --out`` writes (float32 maps in 64^3 chunks,
    uint8 samples), filled slab by slab: nested spheres as samples, a shell of doubt plus
    scattered blobs as maps. Returns the input-equivalent bytes (float32 volume)."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    chunk = tuple(min(s, 64) for s in shape)
    arrays = {
        name: group.create_array(name, shape=shape, dtype="float32", chunks=chunk)
        for name in ("predictive_entropy", "expected_entropy", "mutual_information")
    }
    mean = group.create_array("mean_probs", shape=(2, *shape), dtype="float32", chunks=(1, *chunk))
    samples = group.create_array("samples", shape=(n, *shape), dtype="uint8", chunks=(1, *chunk))
    rng = np.random.default_rng(0)
    centre = [s / 2 for s in shape]
    radius = min(shape) / 4
    for a in range(0, shape[0], 64):
        b = min(shape[0], a + 64)
        z, y, x = np.ogrid[a:b, : shape[1], : shape[2]]
        r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
        p = 1 / (1 + np.exp((r - radius) / 3))
        pe = -(p * np.log(p + 1e-12) + (1 - p) * np.log(1 - p + 1e-12))
        blobs = (rng.random((b - a, *shape[1:])) < 2e-4).astype(np.float32)
        pe = (pe + 0.6 * blobs + 0.01 * rng.random(pe.shape)).astype(np.float32)
        arrays["predictive_entropy"][a:b] = pe
        arrays["expected_entropy"][a:b] = 0.7 * pe
        arrays["mutual_information"][a:b] = 0.3 * pe
        mean[:, a:b] = np.stack([1 - p, p]).astype(np.float32)
        for s in range(n):
            samples[s, a:b] = (r < radius - 2 + 0.25 * s).astype(np.uint8)
    return int(np.prod(shape)) * 4


def run_summary(shape: tuple[int, ...]) -> list[dict]:
    """The summary of a stored N = 16 prediction, block by block vs loaded whole, side by side
    (``extra_over_input``: peak RSS above the process before reading, over the float32 volume)."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    try:
        # written by a child: a parent that grew while writing would lend its high-water RSS
        # to the children it spawns (Linux carries ru_maxrss across fork/exec)
        here = str(Path(__file__).resolve().parents[1])
        write = (
            f"import sys; sys.path.insert(0, {here!r}); from pathlib import Path; "
            "from benchmarks.bench_bigvolume import write_synthetic_output as w; "
            f"print(w(Path({str(tmp / 'out.zarr')!r}), {tuple(shape)!r}))"
        )
        input_bytes = int(_child_json(write))
        root = str(Path(__file__).resolve().parents[1] / "src")
        out = {}
        for whole in (False, True):
            code = _SUMMARY_CHILD.format(root=root, path=str(tmp / "out.zarr"), whole=whole)
            out[whole] = _child_json(code)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    same = _same_values(out[False]["values"], out[True]["values"])
    rows = []
    for whole in (False, True):
        o = out[whole]
        rows.append(
            {
                "case": f"summary N=16 {'x'.join(map(str, shape))} "
                + ("loaded whole (before)" if whole else "block by block from the store"),
                "peak_rss_mb": round(o["peak"] / 1e6),
                "extra_over_input": round((o["peak"] - o["base"]) / input_bytes, 2),
                "seconds": round(o["seconds"], 1),
            }
        )
    rows.append(
        {
            "case": "summary: block by block vs whole",
            "peak_ratio": round(out[False]["peak"] / out[True]["peak"], 2),
            "time_ratio": round(out[False]["seconds"] / out[True]["seconds"], 2),
            "same_numbers": same,
        }
    )
    return rows


def _same_values(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    flat_a = json.dumps(a["regions"]) == json.dumps(b["regions"]) or all(
        x[0] == y[0] and abs(x[1] - y[1]) <= 1e-9 * abs(y[1])
        for x, y in zip(a["regions"], b["regions"])
    )
    scalars = all(
        (a[k] is None and b[k] is None) or abs(a[k] - b[k]) <= 1e-9 * max(abs(b[k]), 1e-12)
        for k in a
        if k != "regions"
    )
    return bool(flat_a and scalars and len(a["regions"]) == len(b["regions"]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
