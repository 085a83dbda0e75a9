"""nnU-Net 3D, 2 folds x all mirrorings: our per-fold hypotheses vs nnU-Net's own prediction.

On a 128 x 128 x 96 volume (``--quick``: 64 x 64 x 48) with a tiny-but-real PlainConvUNet (4 stages,
patch 64³ / 32³), each side runs in its own subprocess (peak RSS of a fresh process):

* ``nnunet``: ``nnUNetPredictor.predict_single_npy_array`` with folds (0, 1) and mirroring — one
  softmax of the averaged logits (what nnU-Net gives).
* ``hypotheses``: our adapter, method ``tta+ensemble``: the 16 fold x mirroring hypotheses, each
  exported to the image geometry (``predict_hypotheses``), nothing else.
* ``engine``: the same through ``engine.run_prediction`` (uncertainty maps, uint8 samples).

Goal: ``hypotheses`` <= 1.15x nnU-Net's time (the extra work is only keeping the per-fold
outputs), peak memory <= 1.5x. Prints the ratios.

    python -m benchmarks nnunet [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(kind: str, folder: str, shape: list[int], device: str) -> dict:
    import resource

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    image = np.random.default_rng(0).normal(1.0, 2.0, (1, *shape)).astype(np.float32)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "nnunet":
        import contextlib
        import io

        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        with contextlib.redirect_stdout(io.StringIO()):
            predictor = nnUNetPredictor(device=torch.device(device), allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(folder, (0, 1))
        t = time.perf_counter()
        predictor.predict_single_npy_array(image, {"spacing": [1.0, 1.0, 1.0]}, None, None, True)
        elapsed = time.perf_counter() - t
    else:
        from napari_probseg import engine
        from napari_probseg.models import load_method

        method = load_method(folder, "tta+ensemble", device=device)
        t = time.perf_counter()
        if kind == "hypotheses":
            n = 0
            for rows, _ in method.predict_hypotheses(
                image, scale=[1.0, 1.0, 1.0], indices=list(range(16)), check_cancel=lambda: None
            ):
                n += len(rows)
            assert n == 16
        else:
            result = engine.run_prediction(image[0], method, n_samples=16, device=device)
            assert result.n_samples == 16
        elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {
        "time_s": elapsed,
        "peak_rss_mb": peak / 1024,
        "rss_before_mb": rss0 / 1024,
        "gpu_mb": gpu,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_nnunet")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, folder, device = args.child
        print(json.dumps(_child(kind, folder, json.loads(args.shape), device)))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from nnunet_helpers import build_nnunet_folder

    shape = [64, 64, 48] if args.quick else [128, 128, 96]
    patch = (32, 32, 32) if args.quick else (64, 64, 64)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_nnunet_folder(
            tmp, spatial_dims=3, patch=patch, features=(8, 16, 32, 64), final_scale=1.0
        )
        print(f"volume {shape}, patch {list(patch)}, 2 folds x 8 mirrorings, device {args.device}")
        results = {}
        for kind in ("nnunet", "hypotheses", "engine"):
            cmd = [
                sys.executable, str(Path(__file__)), "--child", kind, str(folder), args.device,
                "--shape", json.dumps(shape),
            ]  # fmt: skip
            env_path = f"{ROOT / 'src'}"
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env={**__import__("os").environ, "PYTHONPATH": env_path},
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{kind} failed: {out.stderr[-1500:]}")
            results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[kind]
            gpu = f", GPU peak {r['gpu_mb']:.0f} MiB" if r["gpu_mb"] is not None else ""
            print(f"  {kind:<11} {r['time_s']:8.2f} s   peak RSS {r['peak_rss_mb']:8.0f} MiB{gpu}")
        base = results["nnunet"]
        for kind in ("hypotheses", "engine"):
            r = results[kind]
            line = (
                f"{kind} / nnU-Net: time {r['time_s'] / base['time_s']:.2f}x (goal <= 1.15), "
                f"peak RSS {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x (goal <= 1.5)"
            )
            if r["gpu_mb"] is not None and base["gpu_mb"]:
                line += f", GPU peak {r['gpu_mb'] / base['gpu_mb']:.2f}x"
            print("  " + line)


if __name__ == "__main__":
    main(sys.argv[1:])
