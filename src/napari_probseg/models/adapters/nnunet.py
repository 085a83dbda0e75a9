"""nnU-Net v2 trained-model folders as sampling methods: folds and mirrorings become hypotheses.

A trained-model folder (``nnUNetTrainer__nnUNetPlans__3d_fullres``) holds ``dataset.json``,
``plans.json`` and ``fold_*/checkpoint_final.pth``. Everything nnU-Net defines runs through its own
public predictor API (`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`): preprocessing
(transpose, crop to non-zero, normalisation, resampling to the plans' spacing) via the plans'
preprocessor, the sliding window with its gaussian blending, and the export back to the image
geometry (`convert_predicted_logits_to_segmentation_with_correct_shape`). nnU-Net averages the
logits of all folds and mirrorings inside the predictor; here its sliding window runs once per
fold's parameters (and, for test-time augmentation, once per mirroring), so every fold / mirroring
is kept as its own hypothesis.

Methods (hypothesis ``i`` is hypothesis ``i mod n_hypotheses``; ``F`` folds, ``M`` mirrorings, the
identity included, ``M = 2 ** len(allowed mirroring axes)``):

==============  ===========  =========================================================  =========
method          hypotheses   hypothesis                                                 source
==============  ===========  =========================================================  =========
softmax         1            nnU-Net's own output (all folds and mirrorings averaged)   none
ensemble        F            fold ``i mod F``, its mirrorings averaged (as nnU-Net)     parameter
tta             M            mirroring ``i mod M``, the folds' logits averaged          input
tta+ensemble    F × M        fold ``c mod F``, mirroring ``c // F`` (``c = i mod FM``)  input,
                                                                                        parameter
==============  ===========  =========================================================  =========

Averages inside a hypothesis are of logits, as in nnU-Net; the engine then averages the
hypotheses' *probabilities* (the predictive distribution), which differs from nnU-Net's
softmax-of-mean-logits by a Jensen gap (zero when the hypotheses agree). The mean of the
hypotheses' logits equals nnU-Net's logits up to its float16 accumulation.

Safety: nnU-Net itself loads checkpoints with ``weights_only=False`` (a pickle can run code). Here
they are read with ``torch.load(weights_only=True)`` plus numpy's data-only scalar/array types,
which is enough for checkpoints nnU-Net writes (tensors, dicts, numbers, strings, ``torch.device``,
numpy scalars of the training log); anything else needs ``trust=True``. The network class and the
classes named in ``plans.json`` (``network_class_name``, ``_kw_requires_import``) are imported only
from ``dynamic_network_architectures`` and ``torch.nn`` without trust. Region-based label sets
(overlapping sigmoid outputs, not one categorical distribution) and cascades are refused.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg.models.adapters._common import (
    folder_sha256,
    read_mapping,
    require,
    safe_torch_load,
    sample_via_hypotheses,
)
from napari_probseg.models.errors import (
    DimensionalityError,
    MissingModelFileError,
    ModelCardError,
    UnknownMethodError,
    UntrustedModelError,
)

__all__ = [
    "NNUNET_METHODS",
    "NNUNetFolderInfo",
    "NNUNetMethod",
    "inspect_nnunet_folder",
    "is_nnunet_folder",
    "load_nnunet",
    "mirror_combinations",
]

NNUNET_METHODS = ("tta+ensemble", "ensemble", "tta", "softmax")
_SOURCES = {
    "softmax": ("none",),
    "ensemble": ("parameter",),
    "tta": ("input",),
    "tta+ensemble": ("input", "parameter"),
}
#: What ``plans.json`` may make us import without trust (``pydoc.locate`` of dotted names).
_SAFE_ARCH_PREFIXES = ("dynamic_network_architectures.",)
_SAFE_KWARG_PREFIXES = ("torch.nn.",)
_EXTRA = "nnunet"


def is_nnunet_folder(path: str | Path) -> bool:
    """True when ``path`` is a directory with ``dataset.json``, ``plans.json`` and a ``fold_*``."""
    p = Path(path)
    return (
        p.is_dir()
        and (p / "dataset.json").is_file()
        and (p / "plans.json").is_file()
        and any(d.is_dir() for d in p.glob("fold_*"))
    )


@dataclass(frozen=True)
class NNUNetFolderInfo:
    """What a trained-model folder holds, read from its JSON files only (nothing unpickled).

    Attributes
    ----------
    path : Path
    name : str
        ``"<dataset>/<folder>"``, e.g. ``"Dataset999_Tiny/nnUNetTrainer__nnUNetPlans__2d"``.
    configuration : str
        ``"2d"``, ``"3d_fullres"``, ...
    folds : tuple
        Folds with the checkpoint (``int`` or ``"all"``).
    checkpoint : str
    class_names : list of str
    in_channels, spatial_dims : int
    methods : tuple of str
    """

    path: Path
    name: str
    configuration: str
    folds: tuple[Any, ...]
    checkpoint: str
    class_names: list[str]
    in_channels: int
    spatial_dims: int
    methods: tuple[str, ...]


def _read_json(path: Path) -> dict[str, Any]:
    return read_mapping(path, what="model")


def _class_names(dataset: dict[str, Any]) -> list[str]:
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelCardError("dataset.json: 'labels' must map class names to label values")
    if any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values()):
        raise ModelCardError(
            "dataset.json: region-based labels (nnU-Net 'regions') are not supported: their "
            "outputs are overlapping sigmoid channels, not one categorical distribution over "
            "classes, so hypotheses and entropies of classes are undefined for them"
        )
    items = {
        int(v[0] if isinstance(v, (list, tuple)) else v): str(k)
        for k, v in labels.items()
        if k != "ignore"
    }
    if sorted(items) != list(range(len(items))):
        raise ModelCardError(
            f"dataset.json: labels must be 0..K-1 (background 0), got {sorted(items)}"
        )
    return [items[i] for i in range(len(items))]


def _configuration(path: Path, plans: dict[str, Any]) -> str:
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or not configs:
        raise ModelCardError("plans.json: no 'configurations'")
    parts = path.name.split("__")
    if len(parts) == 3 and parts[2] in configs:
        return parts[2]  # nnU-Net names the folder Trainer__Plans__configuration
    if len(configs) == 1:
        return next(iter(configs))
    raise ModelCardError(
        f"plans.json: cannot tell the configuration of {path.name!r} (its name is not "
        f"Trainer__Plans__configuration); configurations: {', '.join(configs)}"
    )


def _folds(path: Path, checkpoint: str, folds: Sequence[Any] | None) -> tuple[Any, ...]:
    found: list[Any] = []
    for d in sorted(path.glob("fold_*")):
        m = re.fullmatch(r"fold_(\d+|all)", d.name)
        if m and (d / checkpoint).is_file():
            found.append(int(m.group(1)) if m.group(1).isdigit() else "all")
    if folds is None:
        chosen = [f for f in found if f != "all"] or found  # nnU-Net's default skips fold_all
    else:
        chosen = [int(f) if str(f).isdigit() else str(f) for f in folds]
        missing = [f for f in chosen if f not in found]
        if missing:
            raise MissingModelFileError(
                f"folds: no {checkpoint} for fold(s) {missing} in {str(path)!r} "
                f"(available: {found or 'none'})"
            )
    if not chosen:
        raise MissingModelFileError(f"model: no fold_*/{checkpoint} in {str(path)!r}")
    return tuple(sorted(set(chosen), key=str))


def inspect_nnunet_folder(
    path: str | Path,
    *,
    folds: Sequence[Any] | None = None,
    checkpoint: str = "checkpoint_final.pth",
) -> NNUNetFolderInfo:
    """Describe an nnU-Net trained-model folder from its JSON files (no torch, nothing unpickled).

    Raises
    ------
    ModelCardError, MissingModelFileError
    """
    p = Path(path).resolve()
    if not is_nnunet_folder(p):
        raise MissingModelFileError(
            f"model: {str(path)!r} is not an nnU-Net trained-model folder "
            "(dataset.json, plans.json, fold_*/)"
        )
    dataset, plans = _read_json(p / "dataset.json"), _read_json(p / "plans.json")
    config = _configuration(p, plans)
    names = _class_names(dataset)
    channels = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise ModelCardError("dataset.json: 'channel_names' must name the input channels")
    patch = plans["configurations"][config].get("patch_size")
    if patch is None and "inherits_from" in plans["configurations"][config]:
        parent = plans["configurations"][config]["inherits_from"]
        patch = plans["configurations"].get(parent, {}).get("patch_size")
    if not isinstance(patch, list) or len(patch) not in (2, 3):
        raise ModelCardError(f"plans.json: configuration {config!r} has no 2D/3D patch_size")
    return NNUNetFolderInfo(
        path=p,
        name=f"{plans.get('dataset_name', 'nnunet')}/{p.name}",
        configuration=config,
        folds=_folds(p, checkpoint, folds),
        checkpoint=checkpoint,
        class_names=names,
        in_channels=len(channels),
        spatial_dims=len(patch),
        methods=NNUNET_METHODS,
    )


def mirror_combinations(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """The mirrorings nnU-Net averages for ``axes``: the identity, then every non-empty
    combination of the axes in its order (`nnUNetPredictor._internal_maybe_mirror_and_predict`)."""
    axes = list(axes or ())
    return [()] + [c for r in range(len(axes)) for c in itertools.combinations(axes, r + 1)]


def _check_architecture(config_manager: Any, *, trust: bool) -> None:
    """Refuse dotted names in plans.json outside the allow-list (they are imported)."""
    arch = str(config_manager.network_arch_class_name)
    kwargs = config_manager.network_arch_init_kwargs
    bad = [] if arch.startswith(_SAFE_ARCH_PREFIXES) else [f"network_class_name {arch!r}"]
    for key in config_manager.network_arch_init_kwargs_req_import:
        value = kwargs.get(key)
        if value is not None and not str(value).startswith(_SAFE_KWARG_PREFIXES):
            bad.append(f"{key} {value!r}")
    if bad and not trust:
        raise UntrustedModelError(
            f"plans.json: imports {', '.join(bad)}, outside dynamic_network_architectures / "
            "torch.nn; importing it can run code. Pass trust=True (CLI: --trust) only if you "
            "trust the model's source"
        )


def _never() -> bool:
    return False


def _make_predictor_class() -> type:
    """nnU-Net's predictor with two hooks into its per-tile step (everything else is its own):
    a fixed mirroring per pass (the hypotheses of TTA) and cheap skipping once cancelled."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class _Predictor(nnUNetPredictor):  # type: ignore[misc, valid-type]
        fixed_mirror: tuple[int, ...] | None = None
        cancelled: Callable[[], bool] = staticmethod(lambda: False)

        @torch.inference_mode()
        def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
            if self.cancelled():
                # finish the pass without the network: raising here would leave nnU-Net's
                # producer thread blocked on its queue; the caller raises after the pass
                heads = self.label_manager.num_segmentation_heads
                return torch.zeros((x.shape[0], heads, *x.shape[2:]), device=x.device)
            if self.fixed_mirror is None:
                return super()._internal_maybe_mirror_and_predict(x)
            dims = [a + 2 for a in self.fixed_mirror]
            if not dims:
                return self.network(x)
            return torch.flip(self.network(torch.flip(x, dims)), dims)

    return _Predictor


class NNUNetMethod:
    """An nnU-Net v2 trained model as a whole-image sampling method (module docstring).

    Built by `load_nnunet`. Conforms to `napari_probseg.models.protocol.WholeImageMethod`.
    """

    whole_image = True
    card = None

    def __init__(
        self,
        *,
        info: NNUNetFolderInfo,
        method: str,
        predictor: Any,
        parameters: list[dict[str, Any]],
        mirror_axes: tuple[int, ...] | None,
        trainer: str,
        reader: str,
        sha256: str,
    ) -> None:
        if method not in NNUNET_METHODS:
            raise UnknownMethodError(method, list(NNUNET_METHODS), info.name)
        self.info = info
        self.name = method
        self.source = _SOURCES[method]
        self.deterministic = method == "softmax"
        self.class_names = list(info.class_names)
        self.n_classes = len(self.class_names)
        self.spatial_dims = info.spatial_dims
        self.in_channels = info.in_channels
        self.model_name = info.name
        self.model_sha256 = sha256
        self.predictor = predictor
        self.parameters = parameters
        self.folds = info.folds
        self.mirror_axes = tuple(mirror_axes) if mirror_axes else ()
        self.mirrors = mirror_combinations(self.mirror_axes)
        self.trainer = trainer
        self.reader = reader
        self.device = predictor.device
        n_f, n_m = len(self.folds), len(self.mirrors)
        # (fold position or None = all folds, mirror position or None = all mirrorings)
        self.hypotheses: list[tuple[int | None, int | None]] = {
            "softmax": [(None, None)],
            "ensemble": [(f, None) for f in range(n_f)],
            "tta": [(None, m) for m in range(n_m)],
            "tta+ensemble": [(c % n_f, c // n_f) for c in range(n_f * n_m)],
        }[method]
        self.n_hypotheses = len(self.hypotheses)

    # -- protocol -----------------------------------------------------------------------------
    def to(self, device: Any) -> NNUNetMethod:
        """Run on ``device`` (in place); returns ``self``."""
        import torch

        dev = torch.device(device)
        self.predictor.device = dev
        self.predictor.perform_everything_on_device = dev.type == "cuda"
        self.predictor.network.to(dev)
        self.device = dev
        return self

    def describe(self) -> dict[str, Any]:
        """JSON-able description: method, sources, folds, mirrorings, configuration, hash."""
        return {
            "method": self.name,
            "source": list(self.source),
            "deterministic": self.deterministic,
            "class_names": self.class_names,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "model": self.model_name,
            "model_kind": "nnunet",
            "model_path": str(self.info.path),
            "model_sha256": self.model_sha256,
            "configuration": self.info.configuration,
            "trainer": self.trainer,
            "checkpoint": self.info.checkpoint,
            "folds": list(self.folds),
            "mirror_axes": list(self.mirror_axes),
            "n_hypotheses": self.n_hypotheses,
            "hypotheses": [self._hypothesis_label(h) for h in self.hypotheses],
            "tile_step_size": self.predictor.tile_step_size,
            "use_gaussian": self.predictor.use_gaussian,
            "image_reader_writer": self.reader,
        }

    def _hypothesis_label(self, hyp: tuple[int | None, int | None]) -> dict[str, Any]:
        f, m = hyp
        return {
            "fold": "all" if f is None else self.folds[f],
            "mirror_axes": "all" if m is None else list(self.mirrors[m]),
        }

    def sample(
        self,
        x: Any,
        n: int,
        *,
        generator: Any = None,
        first_index: int = 0,
    ) -> Any:
        """Probabilities ``(n, K, *S)`` of hypotheses ``first_index ..`` for a raw image
        ``(1, C, *S)`` at the model's own spacing (the engine uses `predict_hypotheses`)."""

        if x.ndim != self.spatial_dims + 2 or x.shape[0] != 1:
            raise DimensionalityError(
                f"x: expected (1, {self.in_channels}, *{self.spatial_dims} sizes), got "
                f"{tuple(x.shape)}",
                model_dims=self.spatial_dims,
                image_dims=x.ndim - 2,
            )
        return sample_via_hypotheses(self, x, n, first_index)

    # -- whole-image prediction ---------------------------------------------------------------
    def preprocess(self, image: np.ndarray, scale: Sequence[float] | None) -> tuple[Any, dict]:
        """nnU-Net's preprocessing of ``image`` (C, *S): ``(data, properties)``."""
        import torch

        cm, pm = self.predictor.configuration_manager, self.predictor.plans_manager
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim not in (3, 4) or arr.shape[0] != self.in_channels:
            raise ValueError(
                f"image: expected ({self.in_channels}, *spatial) with 2 or 3 spatial axes, got "
                f"{arr.shape}"
            )
        spatial = arr.ndim - 1
        if spatial == 2 and self.spatial_dims == 3:
            raise DimensionalityError(
                f"image: a 3D nnU-Net configuration ({self.info.configuration}) got a 2D image "
                f"{arr.shape[1:]}",
                model_dims=3,
                image_dims=2,
            )
        if scale is None:
            spacing = [float(s) for s in cm.spacing][-spatial:]
            if spatial == 3 and len(spacing) == 2:
                spacing = [1.0, *spacing]
        else:
            spacing = [float(s) for s in scale]
        if spatial == 2:  # nnU-Net's convention for 2D images: one plane, spacing 999 across
            arr, spacing = arr[:, None], [999.0, *spacing]
        preprocessor = cm.preprocessor_class(verbose=False)
        data, _, props = preprocessor.run_case_npy(
            arr, None, {"spacing": spacing}, pm, cm, self.predictor.dataset_json
        )
        return torch.from_numpy(np.ascontiguousarray(data)).to(torch.float32), props

    def export(self, logits: Any, props: dict, *, squeeze: bool) -> np.ndarray:
        """nnU-Net's export of logits to probabilities ``(K, *S)`` in the input geometry."""
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        p = self.predictor
        _, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits,
            p.plans_manager,
            p.configuration_manager,
            p.label_manager,
            props,
            return_probabilities=True,
        )
        probs = np.asarray(probs, dtype=np.float32)
        return probs[:, 0] if squeeze else probs

    def _pass(self, data: Any, fold: int, mirror: tuple[int, ...] | None, cancelled: Any) -> Any:
        """One sliding-window pass of nnU-Net with fold ``fold``'s parameters; ``mirror`` fixes
        one mirroring (None: nnU-Net averages its allowed mirrorings)."""
        p = self.predictor
        p.network.load_state_dict(self.parameters[fold])
        p.fixed_mirror = mirror
        p.use_mirroring = mirror is None and bool(self.mirror_axes)
        p.cancelled = cancelled
        try:
            return p.predict_sliding_window_return_logits(data).to("cpu")
        finally:
            p.fixed_mirror, p.cancelled = None, _never

    def hypothesis_logits(
        self,
        data: Any,
        hyps: Sequence[int],
        *,
        check_cancel: Callable[[], None] = lambda: None,
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(h, logits)`` in nnU-Net's preprocessed geometry for the distinct hypotheses
        ``hyps`` (positions in ``self.hypotheses``), fold-major so each fold's parameters load
        once (tta holds one float32 sum per mirroring until the last fold)."""

        def cancelled() -> bool:
            try:
                check_cancel()
            except Exception:
                return True
            return False

        wanted = sorted(set(hyps))
        if self.name == "softmax":
            p = self.predictor
            p.use_mirroring, p.cancelled = bool(self.mirror_axes), cancelled
            try:
                logits = p.predict_logits_from_preprocessed_data(data)  # nnU-Net's own average
            finally:
                p.cancelled = _never
            check_cancel()
            yield 0, logits
            return
        if self.name == "tta":
            sums: dict[int, Any] = {}
            for f in range(len(self.folds)):
                for h in wanted:
                    out = self._pass(data, f, self.mirrors[h], cancelled)
                    check_cancel()
                    sums[h] = out.float() if h not in sums else sums[h] + out.float()
            for h in wanted:
                yield h, (sums.pop(h) / len(self.folds)).half()
            return
        by_fold: dict[int, list[int]] = {}
        for h in wanted:
            by_fold.setdefault(int(self.hypotheses[h][0]), []).append(h)  # type: ignore[arg-type]
        for f, hs in sorted(by_fold.items()):
            for h in hs:
                m = self.hypotheses[h][1]
                out = self._pass(data, f, None if m is None else self.mirrors[m], cancelled)
                check_cancel()
                yield h, out

    def predict_hypotheses(
        self,
        image: np.ndarray,
        *,
        scale: Sequence[float] | None,
        indices: Sequence[int],
        check_cancel: Callable[[], None],
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield ``(rows, probs (len(rows), K, *S))`` for the hypotheses ``indices`` (protocol
        `WholeImageMethod`); ``rows`` are positions in ``indices``."""
        arr = np.asarray(image)
        data, props = self.preprocess(arr, scale)
        check_cancel()
        rows_of: dict[int, list[int]] = {}
        for row, i in enumerate(indices):
            rows_of.setdefault(int(i) % self.n_hypotheses, []).append(row)
        squeeze = arr.ndim == 3
        for h, logits in self.hypothesis_logits(data, list(rows_of), check_cancel=check_cancel):
            probs = self.export(logits, props, squeeze=squeeze)
            check_cancel()
            rows = rows_of[h]
            yield rows, np.broadcast_to(probs, (len(rows), *probs.shape))


def load_nnunet(
    path: str | Path,
    method: str | None = None,
    *,
    folds: Sequence[Any] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    device: Any = "cpu",
    trust: bool = False,
    tile_step_size: float = 0.5,
) -> NNUNetMethod:
    """Load an nnU-Net v2 trained-model folder as a sampling method.

    Parameters
    ----------
    path : str or Path
        The trained-model folder (``dataset.json``, ``plans.json``, ``fold_*/<checkpoint>``).
    method : {"tta+ensemble", "ensemble", "tta", "softmax"}, optional
        Default ``"tta+ensemble"`` (every fold × mirroring a hypothesis).
    folds : sequence of int or "all", optional
        Folds to use (default: every ``fold_<int>`` holding ``checkpoint``, as nnU-Net does).
    checkpoint : str
        ``"checkpoint_final.pth"`` or ``"checkpoint_best.pth"``.
    device : str or torch.device
    trust : bool
        Allow checkpoints holding arbitrary pickled objects and plans importing classes outside
        ``dynamic_network_architectures`` / ``torch.nn`` (both can run code).
    tile_step_size : float
        nnU-Net's sliding-window step, a fraction of the patch (0.5, its default).

    Raises
    ------
    MissingExtraError
        nnunetv2 is not installed (``pip install 'napari-probseg[nnunet]'``).
    UntrustedModelError, ModelCardError, MissingModelFileError, UnknownMethodError
    """
    name = method or NNUNET_METHODS[0]
    info = inspect_nnunet_folder(path, folds=folds, checkpoint=checkpoint)
    if name not in NNUNET_METHODS:
        raise UnknownMethodError(name, list(NNUNET_METHODS), info.name)
    if not 0 < float(tile_step_size) <= 1:
        raise ValueError(f"tile_step_size: expected in (0, 1], got {tile_step_size!r}")
    require("nnunetv2", extra=_EXTRA, what="an nnU-Net model folder")
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from napari_probseg.models.loading import load_state_dict

    dataset = _read_json(info.path / "dataset.json")
    plans = _read_json(info.path / "plans.json")
    pm = PlansManager(plans)
    files = [info.path / "dataset.json", info.path / "plans.json"]
    parameters: list[dict[str, Any]] = []
    trainer, mirror_axes, config = "nnUNetTrainer", None, info.configuration
    for i, fold in enumerate(info.folds):
        ck_path = info.path / f"fold_{fold}" / checkpoint
        files.append(ck_path)
        ck = safe_torch_load(ck_path, trust=trust, what=f"fold {fold}")
        if not isinstance(ck, dict) or not isinstance(ck.get("network_weights"), dict):
            raise ModelCardError(f"fold {fold}: {str(ck_path)!r} has no 'network_weights'")
        if i == 0:
            trainer = str(ck.get("trainer_name", trainer))
            init = ck.get("init_args") or {}
            config = str(init.get("configuration", config))
            axes = ck.get("inference_allowed_mirroring_axes")
            mirror_axes = tuple(int(a) for a in axes) if axes else None
        parameters.append(ck["network_weights"])
    if config != info.configuration and config in pm.available_configurations:
        info = NNUNetFolderInfo(**{**info.__dict__, "configuration": config})
    cm = pm.get_configuration(info.configuration)
    if cm.previous_stage_name is not None:
        raise ModelCardError(
            f"plans.json: configuration {info.configuration!r} is a cascade stage (needs the "
            f"segmentation of {cm.previous_stage_name!r}); cascades are not supported"
        )
    if len(cm.patch_size) != info.spatial_dims:
        info = NNUNetFolderInfo(**{**info.__dict__, "spatial_dims": len(cm.patch_size)})
    label_manager = pm.get_label_manager(dataset)
    if label_manager.has_regions:  # also refused by _class_names; nnU-Net may infer regions
        raise ModelCardError("dataset.json: region-based labels are not supported")
    _check_architecture(cm, trust=trust)
    network = get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        info.in_channels,
        label_manager.num_segmentation_heads,
        allow_init=False,
        deep_supervision=False,
    )
    for fold, params in zip(info.folds, parameters):
        try:
            load_state_dict(network, params, name=f"fold {fold} ({trainer})")
        except ModelCardError as exc:
            raise type(exc)(
                f"{exc}. A custom trainer may build another network than plans.json describes"
            ) from None
    network.load_state_dict(parameters[0])
    dev = torch.device(device)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a CPU notice
        predictor = _make_predictor_class()(
            tile_step_size=float(tile_step_size),
            use_gaussian=True,
            use_mirroring=True,
            perform_everything_on_device=dev.type == "cuda",
            device=dev,
            verbose=False,
            allow_tqdm=False,
        )
    predictor.manual_initialization(
        network.eval().to(dev), pm, cm, parameters, dataset, trainer, mirror_axes
    )
    return NNUNetMethod(
        info=info,
        method=name,
        predictor=predictor,
        parameters=parameters,
        mirror_axes=mirror_axes,
        trainer=trainer,
        reader=str(plans.get("image_reader_writer", "")),
        sha256=folder_sha256(files, info.path),
    )
