"""Run every benchmark (``make bench``) or those named: ``python -m benchmarks accumulator``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = [a for a in argv if not a.startswith("-")]
    if wanted:
        names = [n for n in names if any(w in n for w in wanted)]
    failures = 0
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            module.main([a for a in argv if a.startswith("-")])
        except Exception as exc:  # report and go on with the other benchmarks
            failures += 1
            print(f"{name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"({name}: {time.perf_counter() - start:.1f} s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
