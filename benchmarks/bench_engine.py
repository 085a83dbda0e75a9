"""Engine benchmarks: batched sampling, one-pass latent methods, memory of 3D tiled inference.

1. MC dropout, N = 16: the engine with automatic batching vs a per-sample loop (``batch_size=1``),
   on a 2D 256² image and a 3D 96³ volume (goal: batched >= 2x faster on the CPU).
2. SSN and probabilistic U-Net, N = 16, vs one deterministic forward of the same network through
   the same engine and tiles (goal: <= 1.5x the time of one forward).
3. 3D tiled inference of a 256 x 256 x 160 volume with N = 8 (MC dropout), in a subprocess:
   peak RSS (goal < 3 GB) and time.

Uses the bundled models (``resources/models``) when present, else random-init networks with the
same architecture (timings do not need trained weights). ``--quick`` shrinks every size.

    python -m benchmarks engine [--quick]
    python benchmarks/bench_engine.py [--quick] [--only batching,latent,memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from typing import Any

import numpy as np

# Same architectures as napari_probseg.training.demo (the bundled models).
FEATURES = {2: [8, 16, 32, 64, 128, 8], 3: [8, 8, 16, 32, 64, 8]}
MODELS = {
    ("plain", 2): "lesions2d-unet",
    ("plain", 3): "lesions3d-unet",
    ("ssn", 2): "lesions2d-ssn",
    ("prob_unet", 2): "lesions2d-prob-unet",
}
EXTRA = {
    "plain": {},
    "ssn": {"rank": 10},
    "prob_unet": {"latent_dim": 6, "encoder_channels": [8, 16, 32, 32]},
}
METHOD = {"plain": "mc_dropout", "ssn": "ssn", "prob_unet": "prob_unet"}


def load(wrapper: str, ndim: int) -> tuple[Any, str]:
    """Return ``(method, origin)``: the bundled model, else a random-init one of the same shape."""
    from napari_probseg.models import ModelCard, bundled_models, load_method
    from napari_probseg.models.loading import build_method
    from napari_probseg.models.networks import build_network

    name = MODELS[(wrapper, ndim)]
    if name in bundled_models():
        return load_method(name, METHOD[wrapper]), "bundled"
    import torch

    torch.manual_seed(0)
    card = ModelCard(
        name=name,
        architecture={
            "wrapper": wrapper,
            "network": "BasicUNet",
            "dropout_mode": "channel",
            "args": {"features": FEATURES[ndim], "dropout": 0.1, "norm": "batch"},
            **EXTRA[wrapper],
        },
        weights={"path": "none.safetensors", "format": "safetensors"},
        classes=["background", "lesion"],
        in_channels=1,
        spatial_dims=ndim,
        normalization={"kind": "zscore"},
        spacing=[1.0] * ndim,
        patch_size=[128, 128] if ndim == 2 else [64, 64, 64],
        methods={METHOD[wrapper]: {}},
        default_method=METHOD[wrapper],
    )
    return build_method(card, build_network(card), METHOD[wrapper]), "random-init"


class DeterministicForward:
    """One deterministic forward of a method's network (SSN: softmax(mu); prob U-Net: z = prior
    mean), exposed through the Method interface so it runs through the same engine and tiles."""

    deterministic = True

    def __init__(self, method: Any) -> None:
        self.inner = method
        for key in ("n_classes", "class_names", "spatial_dims", "in_channels", "card", "device"):
            setattr(self, key, getattr(method, key))
        self.name, self.source = f"{method.name}-forward", ("none",)

    def to(self, device: Any) -> DeterministicForward:
        self.inner.to(device)
        return self

    def sample(self, x: Any, n: int, *, generator: Any, first_index: int = 0) -> Any:
        import torch

        net = self.inner.network
        with torch.no_grad():
            if self.inner.name == "ssn":
                logits = net(x)[0]
            else:
                mu, _ = net.prior(x)
                logits = net.decode(net.features(x), mu)
        return torch.softmax(logits, dim=1).expand(n, *logits.shape[1:])


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    from napari_probseg.data.synthetic import make_lesions

    return make_lesions(1, shape=shape, ndim=len(shape), seed=seed).images[0]


def timed(fn: Any, repeat: int = 1) -> float:
    """Best CPU time (``time.process_time``, all threads) of ``repeat`` calls.

    CPU seconds, not wall seconds: on a shared machine the wall time of the same call varied 10x
    with the other load, the CPU time by a few percent; ratios use it.
    """
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def bench_batching(quick: bool) -> list[dict]:
    from napari_probseg import engine

    rows = []
    n = 16
    for ndim, shape in (
        (2, (128, 128) if quick else (256, 256)),
        (3, (48,) * 3 if quick else (96,) * 3),
    ):
        method, origin = load("plain", ndim)
        img = image(shape)
        kw = dict(n_samples=n, seed=0, device="cpu")
        t_loop = timed(partial(engine.run_prediction, img, method, batch_size=1, **kw))
        t0 = time.process_time()
        batched = engine.run_prediction(img, method, **kw)
        t_batch = time.process_time() - t0
        rows.append(
            {
                "case": f"mc_dropout N={n} {'x'.join(map(str, shape))} ({origin})",
                "batched_cpu_s": round(t_batch, 2),
                "loop_cpu_s": round(t_loop, 2),
                "speedup": round(t_loop / t_batch, 2),
                "goal": ">= 2x",
                "batch_size": batched.provenance["batch_size"],
            }
        )
    return rows


def bench_latent(quick: bool) -> list[dict]:
    from napari_probseg import engine

    rows = []
    shape = (128, 128) if quick else (256, 256)
    img = image(shape)
    for wrapper in ("ssn", "prob_unet"):
        method, origin = load(wrapper, 2)
        det = DeterministicForward(method)
        engine.run_prediction(img, det, device="cpu")  # warm-up
        t_det = timed(partial(engine.run_prediction, img, det, device="cpu"), repeat=2)
        t_n = timed(
            partial(engine.run_prediction, img, method, n_samples=16, batch_size=16, device="cpu"),
            repeat=2,
        )
        rows.append(
            {
                "case": f"{METHOD[wrapper]} N=16 {'x'.join(map(str, shape))} ({origin})",
                "n16_cpu_s": round(t_n, 3),
                "one_forward_cpu_s": round(t_det, 3),
                "ratio": round(t_n / t_det, 2),
                "goal": "<= 1.5x",
            }
        )
    return rows


_MEMORY_CHILD = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from benchmarks.bench_engine import load
from napari_probseg import engine
shape = tuple({shape!r})
rng = np.random.default_rng(0)
img = rng.normal(size=shape).astype(np.float32)
method, origin = load("plain", 3)
t0 = time.perf_counter()
res = engine.run_prediction(img, method, n_samples={n}, seed=0, device="cpu")
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": dt, "peak_rss": rss, "origin": origin,
                  "batch_size": res.provenance["batch_size"],
                  "n_tiles": res.provenance["tiling"]["n_tiles"]}}))
"""


def bench_memory(quick: bool) -> list[dict]:
    from pathlib import Path

    shape = (80, 128, 128) if quick else (160, 256, 256)
    n = 4 if quick else 8
    root = str(Path(__file__).resolve().parents[1])
    code = _MEMORY_CHILD.format(root=root, shape=shape, n=n)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return [
        {
            "case": f"3D tiled mc_dropout N={n} {'x'.join(map(str, shape))} ({out['origin']})",
            "seconds": round(out["seconds"], 1),
            "peak_rss_gb": round(out["peak_rss"] / 1e9, 2),
            "goal": "< 3 GB",
            "tiles": out["n_tiles"],
            "batch_size": out["batch_size"],
        }
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", default="batching,latent,memory", help="comma-separated parts")
    args = parser.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", flush=True)
    parts = {"batching": bench_batching, "latent": bench_latent, "memory": bench_memory}
    for name in args.only.split(","):
        for row in parts[name.strip()](args.quick):
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
