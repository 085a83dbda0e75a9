"""``probseg models``: list the bundled and user model cards with their sampling methods.

User models are card files (``*.json``, ``*.yaml``, ``*.yml``) in the folders given with
``--model-dir`` (repeatable) and in the ``PROBSEG_MODEL_PATH`` environment variable (folders
separated by ``os.pathsep``). ``find_card`` resolves a ``--model`` argument the same way for
``probseg predict``: a card file path, then a user model name, then a bundled model name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Environment variable listing user model folders.
MODEL_PATH_ENV = "PROBSEG_MODEL_PATH"
_CARD_GLOBS = ("*.json", "*.yaml", "*.yml")


def register(subparsers: Any) -> None:
    """Add the ``models`` sub-command."""
    parser = subparsers.add_parser(
        "models",
        help="list the bundled and user models and their sampling methods",
        description=(
            "List model cards: the bundled ones, then user cards from --model-dir folders and "
            f"from ${MODEL_PATH_ENV} (folders separated by {os.pathsep!r})."
        ),
    )
    add_model_dir_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=_run)


def add_model_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--model-dir`` option (shared with ``probseg predict``)."""
    parser.add_argument(
        "--model-dir",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help=f"folder of user model cards (repeatable; also ${MODEL_PATH_ENV})",
    )


def model_dirs(extra: list[Path] | None = None) -> list[Path]:
    """Return the user model folders: ``extra`` first, then those of ``PROBSEG_MODEL_PATH``."""
    dirs = list(extra or [])
    env = os.environ.get(MODEL_PATH_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p.strip()]
    return dirs


def user_cards(dirs: list[Path]) -> tuple[list[Any], list[str]]:
    """Load every card in ``dirs``; return ``(cards, problems)`` (unreadable cards are reported)."""
    from napari_probseg.models import load_card

    cards, problems = [], []
    for folder in dirs:
        if not folder.is_dir():
            problems.append(f"{folder}: not a folder")
            continue
        for pattern in _CARD_GLOBS:
            for path in sorted(folder.glob(pattern)):
                try:
                    cards.append(load_card(path))
                except (ValueError, OSError) as exc:
                    problems.append(f"{path}: {exc}")
    return cards, problems


def find_card(spec: str, dirs: list[Path]) -> Any:
    """Resolve ``--model``: a card file, a user model name, or a bundled model name.

    Raises
    ------
    CLIError
        Naming the known models when nothing matches.
    """
    from napari_probseg.cli import CLIError
    from napari_probseg.models import bundled_models, load_card

    path = Path(spec)
    if path.is_file():
        return load_card(path)
    users, _ = user_cards(dirs)
    for card in users:
        if card.name == spec:
            return card
    bundled = bundled_models()
    if spec in bundled:
        return bundled[spec]
    known = sorted({c.name for c in users} | set(bundled))
    raise CLIError(
        f"model: {spec!r} is neither a card file nor a known model "
        f"(known: {', '.join(known) or 'none'}; see 'probseg models')",
        code=2,
    )


def _describe(card: Any, origin: str) -> dict:
    return {
        "name": card.name,
        "origin": origin,
        "card": str(card.path) if card.path is not None else None,
        "spatial_dims": card.spatial_dims,
        "in_channels": card.in_channels,
        "classes": list(card.classes),
        "methods": list(card.available_methods),
        "default_method": card.default_method,
        "patch_size": list(card.patch_size),
        "spacing": list(card.spacing) if card.spacing is not None else None,
        "normalization": card.normalization,
        "description": card.description,
        **_trained_on(card),
    }


def _trained_on(card: Any) -> dict:
    """What the card says the model was trained on (``training_distribution``)."""
    from napari_probseg.core.summary import verdict_scores
    from napari_probseg.models.loading import method_source

    td = getattr(card, "training_distribution", None) or {}
    ref = getattr(card, "reference", None)
    compares = {}
    if ref:
        for method in card.available_methods:
            keys = verdict_scores(ref, method, method_source(method))
            compares[method] = keys["epistemic"]
    return {
        "trained_on": td.get("data") or "unknown (the card records no training distribution)",
        "synthetic": bool(td.get("synthetic", False)),
        "has_reference": ref is not None,
        "verdict_compares": compares,
    }


def _run(args: argparse.Namespace) -> int:
    from napari_probseg.models import bundled_models

    entries = [_describe(c, "bundled") for c in bundled_models().values()]
    cards, problems = user_cards(model_dirs(args.model_dir))
    entries += [_describe(c, "user") for c in cards]
    if args.json:
        print(json.dumps({"models": entries, "problems": problems}, indent=2))
    else:
        if not entries:
            print("no models found (bundled models live in resources/models; add --model-dir)")
        for e in entries:
            methods = ", ".join(f"{m}*" if m == e["default_method"] else m for m in e["methods"])
            print(
                f"{e['name']}  [{e['origin']}, {e['spatial_dims']}D, "
                f"classes: {', '.join(e['classes'])}]  methods: {methods}"
            )
            note = (
                "  SYNTHETIC data only: a demonstration model, not validated on real images"
                if e["synthetic"]
                else ""
            )
            print(f"    trained on: {e['trained_on']}{note}")
            if e["verdict_compares"]:
                pairs = ", ".join(f"{m}: {k}" for m, k in e["verdict_compares"].items())
                print(f"    verdict compares (epistemic): {pairs}")
        if entries:
            print("(* default method)")
    for problem in problems:
        print(f"probseg models: warning: {problem}", file=sys.stderr)
    return 0
