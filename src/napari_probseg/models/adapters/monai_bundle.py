"""MONAI bundles as sampling methods: softmax, test-time flips, MC dropout, ensembles of bundles.

A bundle directory holds ``configs/metadata.json``, ``configs/inference.json`` (or ``.yaml``) and
``models/model.pt`` (a state dict) or ``models/model.ts`` (TorchScript). Its own definitions run
through `monai.bundle.ConfigParser`: ``network_def``, ``preprocessing`` (minus the image loader:
the engine hands over the array) and ``inferer`` (e.g. a sliding window); its postprocessing and
writers do not run. Outputs are mapped back to the image geometry with MONAI's ``Invertd`` over
the bundle's preprocessing. Class names come from ``metadata.json``'s
``network_data_format.outputs.pred.channel_def``.

Axes: MONAI loads images in (x, y[, z]) order (nibabel's / PIL's with ``reverse_indexing``); our
arrays are (plane, row, column) = (z, y, x), so spatial axes are reversed on the way in and out.

Methods (hypothesis ``i``; ``B`` bundles):

* ``softmax`` — one hypothesis per bundle (``B = 1``): softmax of the inferer's logits.
* ``tta`` — hypothesis ``i mod 2**d``: one flip combination of the ``d`` spatial axes (the identity
  first), inverted on the output; source ``input``.
* ``mc_dropout`` — hypothesis ``i``: dropout layers stochastic, their masks drawn from a generator
  seeded by ``i`` (the same hypothesis for the same ``i``); source ``parameter``. A network without
  dropout but with a dropout argument in ``network_def`` (``dropout``, ``dropout_prob``,
  ``dropout_rate``, ``drop_rate``) gets ``dropout_p`` (0.2, as MONAI Label) set there.
* ``ensemble`` — several bundles with the same classes and input given together: hypothesis ``i``
  is bundle ``i mod B``; source ``parameter``.

Safety (``ConfigParser`` instantiates ``_target_`` classes and evaluates ``$`` expressions: code from
data): only the config entries used (``network_def``, ``preprocessing``, ``inferer`` and what they
reference with ``@``) are given to the parser, and without ``trust`` every ``_target_`` in them
must lie in `ALLOWED_TARGET_MODULES` and no ``$`` expression, ``%`` macro or ``_mode_`` may occur.
``model.pt`` loads with ``torch.load(weights_only=True)``; TorchScript only with ``trust``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg.models.adapters._common import (
    folder_sha256,
    read_mapping,
    safe_torch_load,
    sample_via_hypotheses,
)
from napari_probseg.models.errors import (
    MissingModelFileError,
    ModelCardError,
    UnknownMethodError,
    UntrustedModelError,
)

__all__ = [
    "ALLOWED_TARGET_MODULES",
    "BundleInfo",
    "MonaiBundleMethod",
    "check_bundle_config",
    "inspect_monai_bundle",
    "is_monai_bundle",
    "load_monai_bundle",
]

#: Modules whose classes a bundle may instantiate without trust.
ALLOWED_TARGET_MODULES = (
    "monai.transforms.",
    "monai.networks.nets.",
    "monai.networks.layers.",
    "monai.networks.blocks.",
    "monai.inferers.",
    "monai.data.meta_tensor",
)
_ROOTS = ("network_def", "preprocessing", "inferer")
_DROPOUT_ARGS = ("dropout", "dropout_prob", "dropout_rate", "drop_rate")
_LOADERS = ("LoadImage", "LoadImaged")


def _config_file(path: Path) -> Path | None:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (path / "configs" / name).is_file():
            return path / "configs" / name
    return None


def is_monai_bundle(path: str | Path) -> bool:
    """True when ``path`` has ``configs/metadata.json`` and ``configs/inference.json|yaml``."""
    p = Path(path)
    return (
        p.is_dir() and (p / "configs" / "metadata.json").is_file() and _config_file(p) is not None
    )


@dataclass(frozen=True)
class BundleInfo:
    """A bundle as read from its config files (nothing instantiated)."""

    path: Path
    name: str
    spatial_dims: int
    in_channels: int
    class_names: list[str]
    methods: tuple[str, ...]
    weights: Path


def _read(path: Path) -> dict[str, Any]:
    return read_mapping(path, what="bundle")


def inspect_monai_bundle(path: str | Path) -> BundleInfo:
    """Describe a bundle from ``metadata.json`` and its inference config (no torch, no parser).

    Raises
    ------
    ModelCardError, MissingModelFileError
    """
    p = Path(path).resolve()
    cfg_file = _config_file(p)
    if cfg_file is None or not (p / "configs" / "metadata.json").is_file():
        raise MissingModelFileError(f"model: {str(path)!r} is not a MONAI bundle")
    meta, config = _read(p / "configs" / "metadata.json"), _read(cfg_file)
    fmt = meta.get("network_data_format") or {}
    image = (fmt.get("inputs") or {}).get("image") or {}
    pred = (fmt.get("outputs") or {}).get("pred") or {}
    channel_def = pred.get("channel_def")
    if not isinstance(channel_def, dict) or not channel_def:
        raise ModelCardError(
            "metadata.json: network_data_format.outputs.pred.channel_def must name the classes"
        )
    try:
        names = {int(k): str(v) for k, v in channel_def.items()}
    except ValueError as exc:
        raise ModelCardError(f"metadata.json: channel_def keys must be integers ({exc})") from None
    if sorted(names) != list(range(len(names))):
        raise ModelCardError(f"metadata.json: channel_def must number classes 0..K-1: {names}")
    net = config.get("network_def")
    if not isinstance(net, dict):
        raise ModelCardError(f"{cfg_file.name}: needs a 'network_def' mapping")
    shape = image.get("spatial_shape")
    dims = int(net.get("spatial_dims", len(shape) if isinstance(shape, list) else 0))
    if dims not in (2, 3):
        raise ModelCardError("bundle: cannot tell 2D or 3D (network_def.spatial_dims)")
    channels = int(image.get("num_channels", net.get("in_channels", 1)))
    weights = next(
        (p / "models" / n for n in ("model.pt", "model.ts") if (p / "models" / n).is_file()), None
    )
    if weights is None:
        raise MissingModelFileError(f"bundle: no models/model.pt or models/model.ts in {str(p)!r}")
    return BundleInfo(
        path=p,
        name=str(meta.get("name") or p.name),
        spatial_dims=dims,
        in_channels=channels,
        class_names=[names[i] for i in range(len(names))],
        methods=("softmax", "tta", "mc_dropout", "ensemble"),
        weights=weights,
    )


def _target_module(target: str) -> str:
    if "." in target:
        return target
    from monai.bundle.config_item import ComponentLocator

    found = ComponentLocator().get_component_module_name(target)
    if isinstance(found, list):
        return found[0] if len(found) == 1 else f"ambiguous:{target}"
    return f"{found}.{target}" if found else f"unknown:{target}"


def check_bundle_config(config: dict[str, Any], *, trust: bool) -> dict[str, Any]:
    """Return the entries of ``config`` that ``network_def``, ``preprocessing`` and ``inferer``
    need (they and what they reference with ``@``), refusing code without ``trust``.

    Raises
    ------
    UntrustedModelError
        A ``_target_`` outside `ALLOWED_TARGET_MODULES`, a ``$`` expression, a ``%`` macro or a
        ``_mode_`` (when ``trust`` is False).
    ModelCardError
        A root is missing or a reference points nowhere.
    """
    problems: list[str] = []
    needed: dict[str, Any] = {}
    todo = [r for r in _ROOTS]
    for root in _ROOTS:
        if root not in config:
            raise ModelCardError(f"bundle config: needs {root!r}")

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and isinstance(value, str):
                    module = _target_module(value)
                    if not module.startswith(ALLOWED_TARGET_MODULES):
                        problems.append(f"{where}: _target_ {value!r} ({module})")
                elif key == "_mode_" and value not in (None, "default"):
                    problems.append(f"{where}: _mode_ {value!r}")
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str):
            if node.startswith("$"):
                problems.append(f"{where}: expression {node[:60]!r}")
            elif node.startswith("%"):
                problems.append(f"{where}: macro {node[:60]!r}")
            elif node.startswith("@"):
                ref = node[1:].replace("#", "::").split("::")[0]
                if ref not in config:
                    raise ModelCardError(f"bundle config: {where} references unknown {node!r}")
                if ref not in needed:
                    todo.append(ref)

    while todo:
        key = todo.pop()
        if key in needed:
            continue
        needed[key] = config[key]
        walk(config[key], key)
    if problems and not trust:
        raise UntrustedModelError(
            "bundle config: would run code from the bundle ("
            + "; ".join(problems[:4])
            + (f"; +{len(problems) - 4} more" if len(problems) > 4 else "")
            + "). Pass trust=True (CLI: --trust) only if you trust the bundle's source"
        )
    return needed


class _Bundle:
    """One loaded bundle: network, preprocessing (no loader), inferer, inverse."""

    def __init__(
        self,
        info: BundleInfo,
        *,
        trust: bool,
        dropout_p: float | None,
    ) -> None:
        import torch
        from monai.bundle import ConfigParser
        from monai.transforms import Compose, Invertd

        self.info = info
        config = _read(_config_file(info.path))  # type: ignore[arg-type]
        needed = check_bundle_config(config, trust=trust)
        self.dropout_arg: str | None = None
        if dropout_p is not None:
            net_def = dict(needed["network_def"])
            self.dropout_arg = next((a for a in _DROPOUT_ARGS if a in net_def), None)
            if self.dropout_arg is None:
                self.dropout_arg = _dropout_arg_of(net_def)
            if self.dropout_arg is not None and not net_def.get(self.dropout_arg):
                net_def[self.dropout_arg] = float(dropout_p)  # MONAI Label's override
            needed["network_def"] = net_def
        parser = ConfigParser(needed)
        with _quiet():
            network = parser.get_parsed_content("network_def", instantiate=True)
            pre = parser.get_parsed_content("preprocessing", instantiate=True)
            self.inferer = parser.get_parsed_content("inferer", instantiate=True)
        if info.weights.suffix == ".ts":
            if not trust:
                raise UntrustedModelError(
                    f"bundle: {str(info.weights)!r} is TorchScript; loading it executes code "
                    "stored in the file. Pass trust=True (CLI: --trust) only if you trust it"
                )
            network = torch.jit.load(str(info.weights), map_location="cpu")
        else:
            state = safe_torch_load(info.weights, trust=trust, what="bundle weights")
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]  # CheckpointSaver layout
            from napari_probseg.models.loading import load_state_dict

            load_state_dict(network, state, name=f"bundle {info.name}")
        self.network = network.eval()
        transforms = list(pre.transforms) if isinstance(pre, Compose) else [pre]
        kept = [t for t in transforms if type(t).__name__ not in _LOADERS]
        self.preprocessing = Compose(kept)
        self.invert = Invertd(
            keys="pred", transform=self.preprocessing, orig_keys="image", nearest_interp=False
        )
        self.dropouts = [
            m for m in network.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)
        ]

    def prepare(self, image: np.ndarray, scale: Sequence[float] | None) -> Any:
        """The bundle's preprocessing of ``image`` (C, *S) in our (z, y, x) order."""
        import torch
        from monai.data import MetaTensor

        spatial = image.ndim - 1
        arr = np.ascontiguousarray(np.transpose(image, (0, *range(spatial, 0, -1))))  # (C, x, y, z)
        spacing = list(scale)[::-1] if scale is not None else [1.0] * spatial
        affine = np.eye(4)
        for i, s in enumerate(spacing):
            affine[i, i] = float(s)
        mt = MetaTensor(torch.from_numpy(arr.astype(np.float32)), affine=torch.from_numpy(affine))
        mt.meta["original_channel_dim"] = 0
        with _quiet():
            return self.preprocessing({"image": mt})

    def logits(self, x: Any, flip: tuple[int, ...]) -> Any:
        import torch

        dims = [a + 2 for a in flip]
        xin = torch.flip(x, dims) if dims else x
        out = self.inferer(xin, self.network)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return torch.flip(out, dims) if dims else out

    def to_image(self, probs: Any, prepared: dict[str, Any]) -> np.ndarray:
        """Invert the preprocessing on ``probs`` (K, *S') and return (K, *S) in (z, y, x)."""
        from monai.data import MetaTensor

        img = prepared["image"]
        pred = MetaTensor(probs, affine=img.affine, meta=dict(img.meta))
        with _quiet():
            out = self.invert({"image": img, "pred": pred})["pred"]
        arr = np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out)
        spatial = arr.ndim - 1
        return np.ascontiguousarray(np.transpose(arr, (0, *range(spatial, 0, -1))), np.float32)


def _dropout_arg_of(net_def: dict[str, Any]) -> str | None:
    import inspect

    target = net_def.get("_target_")
    if not isinstance(target, str):
        return None
    module = _target_module(target)
    import importlib

    mod_name, _, cls_name = module.rpartition(".")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
        params = inspect.signature(cls).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    return next((a for a in _DROPOUT_ARGS if a in params), None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _hypothesis_seed(i: int) -> int:
    return int(np.random.SeedSequence([20260, i]).generate_state(1, dtype=np.uint64)[0] >> 1)


class MonaiBundleMethod:
    """One or more MONAI bundles as a whole-image sampling method (module docstring).

    Built by `load_monai_bundle`; conforms to `napari_probseg.models.protocol.WholeImageMethod`.
    """

    whole_image = True
    card = None

    def __init__(self, bundles: list[_Bundle], method: str, *, sha256: str) -> None:
        first = bundles[0].info
        self.bundles = bundles
        self.name = method
        self.source = {"softmax": ("none",), "tta": ("input",)}.get(method, ("parameter",))
        self.deterministic = method == "softmax"
        self.class_names = list(first.class_names)
        self.n_classes = len(self.class_names)
        self.spatial_dims = first.spatial_dims
        self.in_channels = first.in_channels
        self.model_name = "+".join(b.info.name for b in bundles)
        self.model_sha256 = sha256
        self.flips = [
            c
            for r in range(self.spatial_dims + 1)
            for c in itertools.combinations(range(self.spatial_dims), r)
        ]
        self.n_hypotheses = {
            "softmax": 1,
            "tta": len(self.flips),
            "ensemble": len(bundles),
            "mc_dropout": 2**31,
        }[method]
        import torch

        self.device = torch.device("cpu")

    def to(self, device: Any) -> MonaiBundleMethod:
        import torch

        self.device = torch.device(device)
        for b in self.bundles:
            b.network.to(self.device)
        return self

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.name,
            "source": list(self.source),
            "deterministic": self.deterministic,
            "class_names": self.class_names,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "model": self.model_name,
            "model_kind": "monai_bundle",
            "model_path": [str(b.info.path) for b in self.bundles],
            "model_sha256": self.model_sha256,
            "inferer": type(self.bundles[0].inferer).__name__,
        }
        if self.name == "tta":
            out["flips"] = [list(f) for f in self.flips]
        if self.name == "mc_dropout":
            b = self.bundles[0]
            out["dropout_layers"] = len(b.dropouts)
            out["dropout_p"] = sorted({float(m.p) for m in b.dropouts})
            out["dropout_arg"] = b.dropout_arg
        return out

    def sample(self, x: Any, n: int, *, generator: Any = None, first_index: int = 0) -> Any:
        """Probabilities ``(n, K, *S)`` for a raw image ``(1, C, *S)`` at unit spacing."""

        return sample_via_hypotheses(self, x, n, first_index)

    def _probs(self, bundle: _Bundle, x: Any, flip: tuple[int, ...], seed: int | None) -> Any:
        import torch

        with torch.inference_mode():
            if seed is None:
                return torch.softmax(bundle.logits(x, flip).float(), dim=1)[0]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for m in bundle.dropouts:
                    m.train()
                try:
                    return torch.softmax(bundle.logits(x, flip).float(), dim=1)[0]
                finally:
                    for m in bundle.dropouts:
                        m.eval()

    def predict_hypotheses(
        self,
        image: np.ndarray,
        *,
        scale: Sequence[float] | None,
        indices: Sequence[int],
        check_cancel: Callable[[], None],
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield ``(rows, probs)`` (protocol `WholeImageMethod`)."""
        if self.name == "mc_dropout" and not self.bundles[0].dropouts:
            raise ModelCardError(f"method: {self.model_name} has no dropout layers")
        rows_of: dict[int, list[int]] = {}
        for row, i in enumerate(indices):
            rows_of.setdefault(int(i) % self.n_hypotheses, []).append(row)
        by_bundle: dict[int, list[int]] = {}
        for h in rows_of:
            by_bundle.setdefault(
                h % len(self.bundles) if self.name == "ensemble" else 0, []
            ).append(h)
        for b_i, hs in sorted(by_bundle.items()):
            bundle = self.bundles[b_i]
            prepared = bundle.prepare(np.asarray(image, np.float32), scale)
            x = prepared["image"].unsqueeze(0).to(self.device)
            check_cancel()
            for h in sorted(hs):
                flip = self.flips[h] if self.name == "tta" else ()
                seed = _hypothesis_seed(h) if self.name == "mc_dropout" else None
                probs = self._probs(bundle, x, flip, seed).cpu()
                out = bundle.to_image(probs, prepared)
                check_cancel()
                rows = rows_of[h]
                yield rows, np.broadcast_to(out, (len(rows), *out.shape))


def load_monai_bundle(
    paths: str | Path | Sequence[str | Path],
    method: str | None = None,
    *,
    device: Any = "cpu",
    trust: bool = False,
    dropout_p: float = 0.2,
) -> MonaiBundleMethod:
    """Load one or more MONAI bundles as a sampling method.

    Parameters
    ----------
    paths : path or sequence of paths
        Bundle directories; several (same classes and input) for ``method="ensemble"``.
    method : {"softmax", "tta", "mc_dropout", "ensemble"}, optional
        Default ``"ensemble"`` for several bundles, else ``"softmax"``.
    device : str or torch.device
    trust : bool
        Allow ``$`` expressions, ``_target_`` classes outside `ALLOWED_TARGET_MODULES` and
        TorchScript / pickled weights (all can run code).
    dropout_p : float
        Dropout probability set in ``network_def`` for ``mc_dropout`` when it has none.

    Raises
    ------
    UntrustedModelError, ModelCardError, MissingModelFileError, UnknownMethodError
    """
    from napari_probseg.models.adapters._common import require

    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    infos = [inspect_monai_bundle(p) for p in paths]
    name = method or ("ensemble" if len(infos) > 1 else "softmax")
    if name not in infos[0].methods:
        raise UnknownMethodError(name, list(infos[0].methods), infos[0].name)
    if (name == "ensemble") != (len(infos) > 1):
        raise ModelCardError(
            "method: 'ensemble' needs two or more bundles given together, and only it takes "
            f"several (got {len(infos)} for {name!r})"
        )
    for other in infos[1:]:
        if (other.class_names, other.in_channels, other.spatial_dims) != (
            infos[0].class_names, infos[0].in_channels, infos[0].spatial_dims,
        ):  # fmt: skip
            raise ModelCardError(
                f"bundle: {other.name} has other classes or input than {infos[0].name}"
            )
    require("monai.bundle", extra="monai", what="a MONAI bundle")
    bundles = [
        _Bundle(info, trust=trust, dropout_p=dropout_p if name == "mc_dropout" else None)
        for info in infos
    ]
    if name == "mc_dropout" and not bundles[0].dropouts:
        raise ModelCardError(
            f"method: mc_dropout needs dropout layers; {infos[0].name}'s network has none and "
            "no dropout argument in network_def"
        )
    files: list[Path] = []
    for info in infos:
        files += [info.path / "configs" / "metadata.json", _config_file(info.path), info.weights]  # type: ignore[list-item]
    root = Path(Path(*Path(infos[0].path).parts[:1]))
    return MonaiBundleMethod(bundles, name, sha256=folder_sha256(files, root)).to(device)
