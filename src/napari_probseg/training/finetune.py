"""Fine-tune a model on the rater annotations of a project store.

:func:`finetune` is a generator (the engine's style): it yields :class:`TrainProgress` events
after every optimizer step and every validation, checks ``cancel`` at each of them (raising
:class:`napari_probseg.engine.Cancelled`, nothing written), and returns a :class:`FinetuneResult`.
:func:`run_finetune` consumes it. The CLI (``probseg train``) and the napari layer use the same
generator.

The new model is written as ``OUT`` (a card, JSON) plus ``<name>.safetensors`` beside it; the card
records its lineage in ``training``: the parent model (name, card and weights sha256), the store,
the images and annotation versions used (``{"train": {image: {rater: version}}, "val": ...}``, which
``StoreDataset(store, versions=...)`` accepts to rebuild the same data), the rater mode, the
hyper-parameters, and the final training and validation losses. The Laplace method is dropped
(its curvature belongs to the parent's weights); the softmax temperature and TTA settings are
inherited unchanged.

Losses (``training._common``): cross-entropy for plain networks and each ensemble member (with
``rater_mode="soft"`` against the raters' class frequencies), the MC log-likelihood of the SSN and
the ELBO of the probabilistic U-Net. Latent models (SSN, probabilistic U-Net) learn the raters'
distribution only from one rater per item: ``"random"`` is their natural mode.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from napari_probseg import __version__
from napari_probseg.data.dataset import StoreDataset, collate_items
from napari_probseg.engine import cancel_checker, resolve_device
from napari_probseg.models.cards import ModelCard, file_sha256
from napari_probseg.models.loading import load_network, resolve_card
from napari_probseg.models.networks import MemberEnsemble
from napari_probseg.store import ProjectStore
from napari_probseg.training._common import _loss, save_model

__all__ = ["TRAIN_RATER_MODES", "FinetuneResult", "TrainProgress", "finetune", "run_finetune"]

#: Rater modes a model can be trained on (``"all"`` is a dataset mode for evaluation only).
TRAIN_RATER_MODES = ("random", "majority", "soft")
_OPTIMIZER = "Adam, cosine decay to 5% of lr, grad-norm clip 5"


@dataclass(frozen=True)
class TrainProgress:
    """A progress event of :func:`finetune`.

    Attributes
    ----------
    stage : {"prepare", "train", "validate", "save"}
    epoch, epochs : int
        Current epoch (1-based; 0 while preparing) and the number of epochs.
    step, steps_total : int
        Optimizer steps done and planned (all epochs).
    fraction : float
        ``step / steps_total`` (1.0 once saved).
    loss : float or None
        Loss of the last step ("train") or mean training loss of the epoch ("validate").
    val_loss : float or None
        Validation loss of the epoch (None without validation images).
    message : str
    """

    stage: str
    epoch: int
    epochs: int
    step: int
    steps_total: int
    fraction: float
    loss: float | None = None
    val_loss: float | None = None
    message: str = ""


@dataclass
class FinetuneResult:
    """What :func:`finetune` wrote.

    Attributes
    ----------
    card : ModelCard
        The new card (loads with ``models.load_method(card_path)``).
    card_path, weights_path : Path
    train_loss : float
        Mean training loss of the last epoch.
    val_loss : float or None
        Validation loss after the last epoch (None without validation images).
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``seconds``.
    lineage : dict
        The card's ``training`` record.
    """

    card: ModelCard
    card_path: Path
    weights_path: Path
    train_loss: float
    val_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _check_out(out: str | Path, parent: ModelCard, overwrite: bool) -> Path:
    out = Path(out)
    if out.suffix != ".json":
        raise ValueError(f"out: expected a model card file name ending in .json, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"out: {str(out)!r} is a folder; give the new card's file name")
    weights = out.with_suffix(".safetensors")
    if parent.path is not None and out.resolve() == Path(parent.path).resolve():
        raise ValueError(f"out: {str(out)!r} is the parent model's card; choose another name")
    if parent.weights_path.resolve() == weights.resolve():
        raise ValueError(f"out: {str(weights)!r} would replace the parent model's weights")
    existing = [str(p) for p in (out, weights) if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"out: {', '.join(existing)} already exist(s); pass overwrite=True")
    return out


def finetune(
    store: ProjectStore | str | Path,
    model: ModelCard | str | Path,
    *,
    out: str | Path,
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 2,
    rater_mode: str = "random",
    val_fraction: float | None = 0.2,
    n_val: int | None = None,
    raters: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    patch_size: Sequence[int] | None = None,
    samples_per_image: int = 4,
    foreground_fraction: float = 0.5,
    freeze_norm: bool = True,
    seed: int = 0,
    device: Any = "cpu",
    trust: bool = False,
    overwrite: bool = False,
    cancel: Callable[[], bool] | threading.Event | None = None,
) -> Generator[TrainProgress, None, FinetuneResult]:
    """Fine-tune ``model`` on the store's annotations; a generator of progress events.

    Parameters
    ----------
    store : ProjectStore or path
        The project store (opened read-only when a path).
    model : ModelCard, str or path
        The parent: a card, a bundled model name or a card file.
    out : path
        The new card file (``*.json``); its stem is the new model's name and the weights are
        written beside it as ``<stem>.safetensors``.
    epochs : int
        Passes over the training images (``samples_per_image`` patches per image each).
    lr : float
        Adam learning rate (cosine decay to 5 %).
    batch_size : int
        Patches per optimizer step.
    rater_mode : {"random", "majority", "soft"}
        Target per patch (see :mod:`napari_probseg.data.dataset`); ``"soft"`` needs a plain or
        ensemble network.
    val_fraction, n_val : optional
        Images held out for the validation loss (split by image, seeded); ``val_fraction=0`` or
        ``n_val=0`` trains on everything.
    raters, image_ids : sequence of str, optional
        Restrict the raters and images used.
    patch_size : sequence of int, optional
        Training patch size; default: the card's ``patch_size`` clipped to the largest image.
    samples_per_image : int
        Patches drawn per image and epoch.
    foreground_fraction : float
        Probability that a patch is centred on an annotated voxel.
    freeze_norm : bool
        Keep batch-norm statistics fixed (default: safest with small batches on data like the
        parent's); ``False`` re-estimates them, which helps when the store's images look
        different (a shifted domain). Dropout stays active either way.
    seed : int
        Seeds the split, the patches, the raters, the shuffling and torch.
    device : str or torch.device
        ``"cpu"``, ``"cuda[:i]"``, ``"mps"`` or ``"auto"``.
    trust : bool
        Allow parent models that execute code when loaded (see ``models.load_network``).
    overwrite : bool
        Replace an existing ``out`` card and its weights.
    cancel : callable or threading.Event, optional
        Checked at every event; when true, :class:`napari_probseg.engine.Cancelled` is raised and
        nothing is written.

    Yields
    ------
    TrainProgress

    Returns
    -------
    FinetuneResult
        (the generator's return value; :func:`run_finetune` returns it directly)

    Raises
    ------
    ValueError
        Naming the bad argument (checked before anything runs).
    """
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    samples_per_image = _positive_int(samples_per_image, "samples_per_image")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    if rater_mode not in TRAIN_RATER_MODES:
        raise ValueError(f"rater_mode: expected one of {TRAIN_RATER_MODES}, got {rater_mode!r}")
    if n_val is not None:
        val_fraction = None  # n_val wins
    elif val_fraction is None:
        val_fraction = 0.0
    parent = resolve_card(model)
    if parent.in_channels != 1:
        raise ValueError(
            f"model: {parent.name!r} takes {parent.in_channels} input channels; project-store "
            "images have one"
        )
    if rater_mode == "soft" and parent.wrapper in ("ssn", "prob_unet"):
        raise ValueError(
            f"rater_mode: 'soft' needs a plain or ensemble network; {parent.name!r} is a "
            f"{parent.wrapper} model, which learns the raters' distribution from 'random'"
        )
    if patch_size is not None and len(tuple(patch_size)) != parent.spatial_dims:
        raise ValueError(
            f"patch_size: expected {parent.spatial_dims} sizes for the {parent.spatial_dims}D "
            f"model {parent.name!r}, got {tuple(patch_size)}"
        )
    out_path = _check_out(out, parent, overwrite)
    check_cancel = cancel_checker(cancel, what="training")
    dev = resolve_device(device)
    if not isinstance(store, ProjectStore):
        store = ProjectStore.open(store, mode="r")
    t0 = time.perf_counter()
    # Loading and checking the data happens here, before any progress event, so that bad data
    # fails like a bad argument.
    full = StoreDataset(
        store,
        image_ids=image_ids,
        raters=raters,
        rater_mode=rater_mode,
        normalization=parent.normalization,
        n_classes=parent.n_classes,
        spatial_dims=parent.spatial_dims,
        samples_per_image=samples_per_image,
        foreground_fraction=foreground_fraction,
        seed=int(seed),
    )
    full.patch_size = tuple(int(p) for p in (patch_size or _default_patch(parent, full.shapes)))
    train_ds, val_ds = full.split(val_fraction, n_val=n_val, seed=int(seed))
    settings = {
        "raters": sorted(raters) if raters is not None else "all",
        "split": {"val_fraction": val_fraction, "n_val": n_val, "seed": int(seed), "by": "image"},
        "epochs": epochs,
        "lr": float(lr),
        "batch_size": batch_size,
        "patch_size": list(full.patch_size),
        "samples_per_image": samples_per_image,
        "foreground_fraction": foreground_fraction,
        "freeze_norm": bool(freeze_norm),
        "seed": int(seed),
        "device": str(dev),
    }
    return _finetune(
        full,
        train_ds,
        val_ds,
        parent,
        out_path,
        settings,
        trust=trust,
        check_cancel=check_cancel,
        t0=t0,
    )


def run_finetune(
    *args: Any, progress: Callable[[TrainProgress], None] | None = None, **kwargs: Any
) -> FinetuneResult:
    """Run :func:`finetune` to the end (same arguments); ``progress`` receives every event."""
    gen = finetune(*args, **kwargs)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)


# --- implementation ---------------------------------------------------------------------------


def _default_patch(parent: ModelCard, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The card's patch size, clipped to the largest extent of the images on each axis."""
    largest = np.max(np.asarray(shapes), axis=0)
    return tuple(int(min(p, s)) for p, s in zip(parent.patch_size, largest))


def _set_train(net: nn.Module, *, freeze_norm: bool) -> None:
    net.train()
    if freeze_norm:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _batch_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``_common._loss`` of the wrapper; an ensemble trains every member on the same batch."""
    if isinstance(net, MemberEnsemble):
        return torch.stack([_loss(m, x, y) for m in net.members]).mean()
    return _loss(net, x, y)


@torch.no_grad()
def _validate(net: nn.Module, ds: StoreDataset, batch_size: int, seed: int, dev: Any) -> float:
    """Mean loss over the validation items (fixed patches, raters and latent noise: comparable
    across epochs), network in eval mode."""
    net.eval()
    ds.set_epoch(0)
    total, count = 0.0, 0
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(ds), batch_size):
            batch = collate_items([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
            x, y = batch["image"].to(dev), batch["target"].to(dev)
            total += float(_batch_loss(net, x, y)) * len(x)
            count += len(x)
    return total / max(count, 1)


def _new_card(parent: ModelCard, name: str, lineage: dict[str, Any]) -> ModelCard:
    data = parent.to_dict()
    methods = {k: v for k, v in data["methods"].items() if k != "laplace"}
    data.update(
        name=name,
        weights={"path": f"{name}.safetensors", "format": "safetensors"},
        methods=methods,
        description=(
            f"{parent.name} fine-tuned on {lineage['n_images']['train']} images of the project "
            f"store {lineage['store']} ({lineage['rater_mode']} rater targets) by "
            "napari_probseg.training.finetune."
        ),
        training=lineage,
        metrics={
            "finetune": {
                "final_train_loss": lineage["final_train_loss"],
                "final_val_loss": lineage["final_val_loss"],
                "note": "losses of training._common (per wrapper); parent metrics do not apply",
            }
        },
    )
    if "laplace" in data["default_method"]:  # "laplace" or "tta+laplace"
        data["default_method"] = "mc_dropout" if "mc_dropout" in methods else next(iter(methods))
    return ModelCard.from_dict(data)


def _finetune(
    full: StoreDataset,
    train_ds: StoreDataset,
    val_ds: StoreDataset,
    parent: ModelCard,
    out: Path,
    settings: dict[str, Any],
    *,
    trust: bool,
    check_cancel: Callable[[], None],
    t0: float,
) -> Generator[TrainProgress, None, FinetuneResult]:
    epochs, lr, batch_size = settings["epochs"], settings["lr"], settings["batch_size"]
    seed, device = settings["seed"], resolve_device(settings["device"])
    check_cancel()
    torch.manual_seed(seed)
    net = load_network(parent, device=device, trust=trust)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train_ds) / batch_size)
    steps_total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps_total, eta_min=lr * 0.05)
    loader = DataLoader(
        train_ds,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate_items,
        generator=torch.Generator().manual_seed(seed),
        num_workers=0,
    )
    skipped = full.n_skipped
    check_cancel()
    # the parent's validation loss: the baseline of the fine-tuned losses
    val_loss = _validate(net, val_ds, batch_size, seed, device) if len(val_ds) else None
    initial_val_loss = val_loss
    yield TrainProgress(
        "prepare",
        0,
        epochs,
        0,
        steps_total,
        0.0,
        message=f"{len(train_ds.image_ids)} training and {len(val_ds.image_ids)} validation "
        f"images, patch {full.patch_size}, {steps_total} steps; skipped {skipped} image(s) "
        f"({len(full.skipped['no_annotations'])} without annotations, "
        f"{len(full.skipped['other_dims'])} not {parent.spatial_dims}D); parent val loss "
        + ("n/a" if val_loss is None else f"{val_loss:.4f}"),
        val_loss=val_loss,
    )
    history: list[dict[str, Any]] = []
    step = 0
    epoch_loss = float("nan")
    for epoch in range(1, epochs + 1):
        te = time.perf_counter()
        train_ds.set_epoch(epoch)
        _set_train(net, freeze_norm=settings["freeze_norm"])
        losses = []
        for batch in loader:
            check_cancel()
            x, y = batch["image"].to(device), batch["target"].to(device)
            loss = _batch_loss(net, x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"lr: the loss became {float(loss)} at step {step + 1}; lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            yield TrainProgress(
                "train",
                epoch,
                epochs,
                step,
                steps_total,
                step / steps_total,
                losses[-1],
                message=f"epoch {epoch}/{epochs} step {step}/{steps_total} loss {losses[-1]:.4f}",
            )
        epoch_loss = float(np.mean(losses))
        check_cancel()
        val_loss = _validate(net, val_ds, batch_size, seed, device) if len(val_ds) else None
        history.append(
            {
                "epoch": epoch,
                "train_loss": round(epoch_loss, 6),
                "val_loss": None if val_loss is None else round(val_loss, 6),
                "seconds": round(time.perf_counter() - te, 2),
            }
        )
        val_txt = "n/a (no validation images)" if val_loss is None else f"{val_loss:.4f}"
        yield TrainProgress(
            "validate",
            epoch,
            epochs,
            step,
            steps_total,
            step / steps_total,
            epoch_loss,
            val_loss,
            message=f"epoch {epoch}/{epochs}: train loss {epoch_loss:.4f}, val loss {val_txt}",
        )
    check_cancel()
    net.eval()
    changed = sum(
        not torch.equal(before[k], v.detach())
        for k, v in net.state_dict().items()
        if v.is_floating_point()
    )
    lineage = {
        "kind": "finetune",
        "script": "napari_probseg.training.finetune (probseg train)",
        "parent": {
            "name": parent.name,
            "sha256": parent.sha256,
            "weights_sha256": parent.weights.get("sha256") or file_sha256(parent.weights_path),
            "card": str(parent.path) if parent.path is not None else None,
        },
        "store": str(full.store_path.resolve()),
        "rater_mode": full.rater_mode,
        "annotations": {"train": train_ds.annotations, "val": val_ds.annotations},
        "n_images": {"train": len(train_ds.image_ids), "val": len(val_ds.image_ids)},
        "skipped": full.skipped,
        **settings,
        "steps": steps_total,
        "optimizer": _OPTIMIZER,
        "initial_val_loss": None if initial_val_loss is None else round(initial_val_loss, 6),
        "final_train_loss": round(epoch_loss, 6),
        "final_val_loss": None if val_loss is None else round(val_loss, 6),
        "history": history,
        "tensors_changed": int(changed),
        "inherited": "softmax temperature and TTA settings copied from the parent (not refitted)",
        "dropped_methods": sorted(set(parent.methods) & {"laplace"}),
        "seconds": round(time.perf_counter() - t0, 2),
        "software": f"napari-probseg {__version__}, torch {torch.__version__}",
    }
    card = _new_card(parent, out.stem, lineage)
    yield TrainProgress(
        "save",
        epochs,
        epochs,
        step,
        steps_total,
        1.0,
        epoch_loss,
        val_loss,
        message=f"writing {out}",
    )
    check_cancel()
    card = save_model(card, net.cpu(), out.parent)
    return FinetuneResult(
        card=card,
        card_path=Path(card.path),
        weights_path=card.weights_path,  # type: ignore[arg-type]
        train_loss=epoch_loss,
        val_loss=val_loss,
        history=history,
        lineage=lineage,
    )
