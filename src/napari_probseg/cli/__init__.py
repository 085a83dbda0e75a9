"""The ``probseg`` command.

Each sub-command lives in its own module ``cli/_<name>.py`` exposing ``register(subparsers)``, which
adds a parser whose ``func`` attribute takes the parsed namespace and returns an exit code. Errors a
user can cause raise :class:`CLIError` (or ``ValueError``/``FileNotFoundError``) and are printed as one
line on stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Sub-command modules, imported on demand so that ``probseg --help`` stays fast.
SUBCOMMAND_MODULES = (
    "_models",
    "_predict",
    "_demo",
    "_store",
    "_train",
    "_export",
    "_evaluate",
    "_rank",
    "_al",
)


class CLIError(Exception):
    """An error the user can fix; printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    """Return the ``probseg`` argument parser with every available sub-command."""
    from napari_probseg import __version__

    parser = argparse.ArgumentParser(
        prog="probseg",
        description="Probabilistic segmentation: sampled hypotheses, uncertainty and multi-rater stores.",
    )
    parser.add_argument("--version", action="version", version=f"napari-probseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"napari_probseg.cli.{name}")
        except ModuleNotFoundError as exc:  # sub-command not written yet
            if exc.name == f"napari_probseg.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``probseg``; return the exit code (also used as the console-script entry point)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"probseg {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except (ValueError, FileNotFoundError, PermissionError, OSError) as exc:
        print(f"probseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"probseg {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
