"""What a model card may turn into code: the allow-list of network constructors.

A card is data. Without ``trust=True`` it may only name

- a network class of ``monai.networks.nets`` (``"network": "BasicUNet"``, or
  ``"factory": "monai.networks.nets:BasicUNet"``), looked up by exact attribute name on that
  package (never imported from a module path the card spells), and only ``torch.nn.Module``
  subclasses defined there; or
- one of napari-probseg's own builders listed in `OWN_FACTORIES`, by exact ``"module:name"``.

Anything else (``"monai:os.system"``, ``"monai.utils.misc:run_cmd"``, any third-party module)
raises `UntrustedModelError` *before* anything is imported or called. Constructor arguments that
would download or read weights (``pretrained=True``, ``pretrained_url``, ``weights``,
``checkpoint``, Hugging Face repositories) are refused whatever the trust: nothing is downloaded at
run time.

`check_bundle_config` applies the same rule to MONAI-bundle style configurations (``_target_``
and ``$`` expressions), for adapters that read them.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from napari_probseg.models.errors import ModelCardError, UntrustedModelError

__all__ = [
    "MONAI_NETS",
    "OWN_FACTORIES",
    "check_bundle_config",
    "check_no_download",
    "resolve_constructor",
]

MONAI_NETS = "monai.networks.nets"

#: napari-probseg's own network builders a card may name without trust (exact ``module:name``).
#: Adapters register theirs here in code (never from a card).
OWN_FACTORIES: dict[str, tuple[str, str]] = {}

# MONAI network modules whose constructors fetch or unpickle files themselves (Hugging Face BERT,
# a SAM checkpoint read with torch.load): never built from a card without trust.
_FETCHING_MODULES = ("monai.networks.nets.transchex", "monai.networks.nets.cell_sam_wrapper")
# Constructor parameters that make MONAI download or read pretrained weights.
_FLAG_PARAMS = ("pretrained",)  # must be false
_PATH_PARAMS = ("pretrained_url", "weights", "checkpoint", "path_or_repo_id")  # must be None
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _untrusted(spec: str, why: str) -> UntrustedModelError:
    return UntrustedModelError(
        f"architecture.factory: {spec!r} {why}; only MONAI network classes "
        f"({MONAI_NETS}.<Class>) and napari-probseg's own builders load without trust. "
        "Pass trust=True (--trust) only if you trust this card"
    )


def _monai_class(name: str, spec: str) -> Any:
    """The ``torch.nn.Module`` subclass ``monai.networks.nets.<name>`` or raise."""
    from torch import nn

    if not _NAME_RE.fullmatch(name):
        raise _untrusted(spec, "is not the name of a MONAI network class")
    nets = importlib.import_module(MONAI_NETS)
    obj = getattr(nets, name, None)
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise ModelCardError(
            f"architecture.network: {name!r} is not a network class of {MONAI_NETS}"
        )
    module = getattr(obj, "__module__", "")
    if module != MONAI_NETS and not module.startswith(MONAI_NETS + "."):
        raise _untrusted(spec, f"resolves to {module}.{name}, outside {MONAI_NETS}")
    if module in _FETCHING_MODULES:
        raise _untrusted(spec, "downloads or unpickles files when it is built")
    return obj


def resolve_constructor(architecture: dict[str, Any], *, trust: bool = False) -> Any:
    """Return the callable a card's ``architecture`` names (``network`` or ``factory``).

    Parameters
    ----------
    architecture : dict
        The card's ``architecture`` (``network`` = MONAI class name, or ``factory`` =
        ``"module:attribute"``).
    trust : bool
        Allow any importable ``module:attribute`` (it can run arbitrary code).

    Raises
    ------
    UntrustedModelError
        If the factory is not on the allow-list and ``trust`` is False (nothing was imported).
    ModelCardError
        If the name does not resolve.
    """
    if "network" in architecture:
        name = str(architecture["network"])
        return _monai_class(name, f"{MONAI_NETS}:{name}")
    spec = str(architecture.get("factory", ""))
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelCardError(f"architecture.factory: expected 'module:callable', got {spec!r}")
    if spec in OWN_FACTORIES:
        own_module, own_attr = OWN_FACTORIES[spec]
        return getattr(importlib.import_module(own_module), own_attr)
    if module_name == MONAI_NETS or module_name.startswith(MONAI_NETS + "."):
        if "." not in attr and _NAME_RE.fullmatch(attr):
            cls = _monai_class(attr, spec)
            if module_name in (MONAI_NETS, cls.__module__):
                return cls
    if not trust:
        raise _untrusted(spec, f"would import and run code from module {module_name!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelCardError(f"architecture.factory: cannot import {spec!r}: {exc}") from exc
    return obj


def check_no_download(ctor: Any, args: dict[str, Any]) -> None:
    """Refuse constructor arguments (given or default) that would fetch or read weights.

    Raises
    ------
    ModelCardError
        Naming ``architecture.args.<name>``.
    """
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        params = {}

    def value(name: str) -> Any:
        if name in args:
            return args[name]
        p = params.get(name)
        return None if p is None or p.default is inspect.Parameter.empty else p.default

    for name in _FLAG_PARAMS:
        if (name in args or name in params) and value(name):
            raise ModelCardError(
                f"architecture.args.{name}: {value(name)!r} would download pretrained weights at "
                f"run time; set {name}: false (weights come from the card's weights file)"
            )
    for name in _PATH_PARAMS:
        if (name in args or name in params) and value(name) is not None:
            raise ModelCardError(
                f"architecture.args.{name}: {value(name)!r} would download or read weights "
                f"outside the card; remove it (weights come from the card's weights file)"
            )


def check_bundle_config(config: Any, *, trust: bool = False, where: str = "config") -> None:
    """Refuse the parts of a MONAI-bundle style configuration that run code, unless ``trust``.

    ``$``-expressions (evaluated by MONAI as Python), ``_target_`` outside the allow-list (MONAI
    network classes by exact name) and ``_requires_`` / ``_mode_`` (calls) all run code.

    Raises
    ------
    UntrustedModelError
        Naming the key path of the first such entry.
    """
    if trust:
        return
    if isinstance(config, dict):
        for key, item in config.items():
            path = f"{where}.{key}"
            if key in ("_requires_", "_mode_"):
                raise UntrustedModelError(f"{path}: runs code; pass trust=True to allow it")
            if key == "_target_":
                target = str(item).replace(":", ".")
                module, _, name = target.rpartition(".")
                try:
                    cls = _monai_class(name, target)
                    if module not in ("", MONAI_NETS, cls.__module__):  # MONAI looks bare names up
                        raise _untrusted(target, "is not a MONAI network class")
                except ModelCardError as exc:
                    raise UntrustedModelError(f"{path}: {exc}") from None
                continue
            check_bundle_config(item, trust=trust, where=path)
    elif isinstance(config, (list, tuple)):
        for i, item in enumerate(config):
            check_bundle_config(item, trust=trust, where=f"{where}[{i}]")
    elif isinstance(config, str) and config.startswith("$"):
        raise UntrustedModelError(
            f"{where}: {config[:40]!r} is a Python expression; pass trust=True to evaluate it"
        )
