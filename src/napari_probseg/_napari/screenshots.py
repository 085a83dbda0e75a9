"""Regenerate the documentation screenshots: ``python -m napari_probseg._napari.screenshots docs``.

Each screenshot is a separate ``probseg demo --screenshot PATH --quit`` process (a fresh viewer and
Qt application per picture), run under ``xvfb-run`` when there is no display.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: Screenshots written into the output folder: file name -> demo arguments.
SHOTS = {
    "screenshot_2d.png": ["--sample", "2d"],
    "screenshot_3d.png": ["--sample", "3d"],
}


def command(path: Path, args: list[str], *, extra: list[str] | None = None) -> list[str]:
    """Return the command line that saves one screenshot (wrapped in xvfb-run if headless)."""
    cmd = [
        sys.executable,
        "-m",
        "napari_probseg.cli",
        "demo",
        *args,
        *(extra or []),
        "--screenshot",
        str(path),
        "--quit",
    ]
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            raise RuntimeError("no display and no xvfb-run: install xvfb (make apt)")
        cmd = [xvfb, "-a", "-s", "-screen 0 1920x1200x24", *cmd]
    return cmd


def main(argv: list[str] | None = None) -> int:
    """Write every screenshot of :data:`SHOTS` into ``argv[0]`` (default ``docs``).

    Further arguments are passed to ``probseg demo`` (e.g. ``--model CARD.json``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(argv.pop(0) if argv and not argv[0].startswith("-") else "docs")
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name, args in SHOTS.items():
        path = out / name
        result = subprocess.run(command(path, args, extra=argv), timeout=900)
        if result.returncode != 0 or not path.is_file():
            print(f"screenshots: {name} failed (exit code {result.returncode})", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
