"""A torch ``Dataset`` over the images and rater annotations of a project store.

`StoreDataset` reads every selected image and the pinned annotation versions of its raters once
(so the dataset does not change when someone saves a new version while it trains), normalizes the
images as a model card says (:func:`napari_probseg.data.normalize`, the function the engine uses
at prediction time) and serves items

``{"image": (C, *P) float32, "target": ..., "image_id": str, "raters": [str], "versions":
{rater: version}, "origin": (start per axis), "index": int}``

where the target depends on the rater mode:

- ``"random"``: the mask of one rater, drawn per access from ``(seed, epoch, index)``: (*P) int64;
- ``"majority"``: the per-voxel majority vote of the raters' masks, ties to the lowest label
  (:func:`napari_probseg.store.majority_vote`; for binary masks strictly more than half): (*P) int64;
- ``"soft"``: the fraction of raters giving each class: (K, *P) float32 (sums to 1 over K; a
  probability target for ``torch.nn.functional.cross_entropy``);
- ``"all"``: every rater's mask stacked: (R, *P) int64.

With ``patch_size`` each access crops a random patch (optionally centred on a foreground voxel);
images smaller than the patch are padded by mirroring (image and masks alike). Splits are by
image (`split_images`, `StoreDataset.split`), so patches of one image never land in two splits.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_probseg.data._normalize import normalize, parse_normalization
from napari_probseg.store import ProjectStore, majority_vote

__all__ = ["RATER_MODES", "StoreDataset", "collate_items", "split_images"]

#: Rater modes of `StoreDataset`.
RATER_MODES = ("random", "majority", "soft", "all")


@dataclass
class _Entry:
    """One loaded image: normalized image (1, *S), rater masks (R, *S) and their versions."""

    image_id: str
    image: np.ndarray
    masks: np.ndarray
    raters: tuple[str, ...]
    versions: tuple[int, ...]
    foreground: np.ndarray | None = None  # (F, ndim) voxel coordinates of the raters' union


def split_images(
    image_ids: Sequence[str],
    val_fraction: float | None = None,
    *,
    n_val: int | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Split image identifiers into a training and a validation set (seeded).

    Parameters
    ----------
    image_ids : sequence of str
        Distinct image identifiers.
    val_fraction : float, optional
        Fraction of the images held out, in [0, 1). Rounded; at least one image when it is > 0
        and there are two images or more, and never all of them.
    n_val : int, optional
        Number of images held out instead (0 <= n_val < number of images).
    seed : int
        Seed of the permutation (the split depends only on the sorted ids and the seed).

    Returns
    -------
    train, val : list of str
        Disjoint, each sorted.
    """
    ids = sorted(str(i) for i in image_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("image_ids: identifiers must be distinct")
    n = len(ids)
    if (val_fraction is None) == (n_val is None):
        raise ValueError("val_fraction: give exactly one of val_fraction or n_val")
    if val_fraction is not None:
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction: expected a fraction in [0, 1), got {val_fraction!r}")
        k = round(float(val_fraction) * n)
        if val_fraction > 0 and n >= 2:
            k = max(k, 1)
        k = min(k, max(n - 1, 0))
    else:
        k = int(n_val)  # type: ignore[arg-type]
        if k != n_val or not 0 <= k < max(n, 1):
            raise ValueError(f"n_val: expected an integer in [0, {max(n - 1, 0)}], got {n_val!r}")
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(ids[i] for i in order[:k])
    train = sorted(ids[i] for i in order[k:])
    return train, val


def collate_items(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate `StoreDataset` items: stack ``image`` and ``target``, keep the rest as lists.

    (``torch.utils.data.default_collate`` cannot batch the per-item rater lists and version dicts,
    whose lengths differ between images.)
    """
    if not batch:
        raise ValueError("batch: expected at least one item")
    out: dict[str, Any] = {
        "image": torch.stack([b["image"] for b in batch]),
        "target": torch.stack([b["target"] for b in batch]),
    }
    for key in batch[0]:
        if key not in out:
            out[key] = [b[key] for b in batch]
    return out


class StoreDataset(Dataset):
    """Torch dataset of a project store's images and rater annotations (see the module docstring).

    Parameters
    ----------
    store : ProjectStore or path
        The store (a path is opened read-only).
    image_ids : sequence of str, optional
        Images to use (default: every image of the store).
    raters : sequence of str, optional
        Raters to use (default: every rater of each image). Images none of them annotated are
        skipped.
    versions : mapping, optional
        ``{image_id: {rater: version}}``: use exactly these annotation versions (e.g. the
        ``training.annotations`` recorded in a fine-tuned model card) instead of the latest ones.
    rater_mode : {"random", "majority", "soft", "all"}
    normalization : None, str or mapping
        Input normalization, usually ``card.normalization`` (statistics over the whole image,
        before cropping, as at prediction time).
    n_classes : int, optional
        Number of classes K (``soft`` targets have K channels); default: the store's class names,
        else the largest label + 1 (at least 2). Labels >= K raise ``ValueError``.
    spatial_dims : {2, 3}, optional
        Keep only images of this dimensionality (default: ``len(patch_size)`` when a patch size
        is given, else all).
    patch_size : sequence of int, optional
        Crop a random patch of this size per access (mirror-padded where the image is smaller).
    samples_per_image : int
        Items per image and epoch (``len = n_images * samples_per_image``).
    foreground_fraction : float
        Probability that a patch is centred on a random voxel of the raters' foreground union.
    seed : int
        Seed of the rater and patch draws; item ``i`` depends only on (seed, epoch, i).

    Attributes
    ----------
    image_ids : list of str
        Images used, sorted.
    patch_size : tuple of int or None
        May be changed after construction (e.g. once `shapes` are known).
    annotations : dict
        ``{image_id: {rater: version}}`` of the annotation versions used.
    skipped : dict of str to list of str
        Images left out: ``"no_annotations"`` and ``"other_dims"``.
    """

    def __init__(
        self,
        store: ProjectStore | str | Path,
        *,
        image_ids: Sequence[str] | None = None,
        raters: Sequence[str] | None = None,
        versions: Mapping[str, Mapping[str, int]] | None = None,
        rater_mode: str = "random",
        normalization: Any = None,
        n_classes: int | None = None,
        spatial_dims: int | None = None,
        patch_size: Sequence[int] | None = None,
        samples_per_image: int = 1,
        foreground_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        if rater_mode not in RATER_MODES:
            raise ValueError(f"rater_mode: expected one of {RATER_MODES}, got {rater_mode!r}")
        if isinstance(samples_per_image, bool) or int(samples_per_image) != samples_per_image:
            raise ValueError(f"samples_per_image: expected an integer, got {samples_per_image!r}")
        if samples_per_image < 1:
            raise ValueError(f"samples_per_image: expected >= 1, got {samples_per_image!r}")
        if not 0.0 <= float(foreground_fraction) <= 1.0:
            raise ValueError(f"foreground_fraction: expected [0, 1], got {foreground_fraction!r}")
        if patch_size is not None:
            patch_size = tuple(int(p) for p in patch_size)
            if len(patch_size) not in (2, 3) or min(patch_size) < 1:
                raise ValueError(f"patch_size: expected 2 or 3 positive sizes, got {patch_size!r}")
            if spatial_dims is None:
                spatial_dims = len(patch_size)
            elif spatial_dims != len(patch_size):
                raise ValueError(
                    f"patch_size: {len(patch_size)} sizes but spatial_dims is {spatial_dims}"
                )
        if spatial_dims not in (None, 2, 3):
            raise ValueError(f"spatial_dims: expected 2, 3 or None, got {spatial_dims!r}")
        self.normalization = parse_normalization(normalization)
        if not isinstance(store, ProjectStore):
            store = ProjectStore.open(store, mode="r")
        self.store_path = Path(store.path)
        self.rater_mode = rater_mode
        self.patch_size: tuple[int, ...] | None = patch_size
        self.spatial_dims = spatial_dims
        self.samples_per_image = int(samples_per_image)
        self.foreground_fraction = float(foreground_fraction)
        self.seed = int(seed)
        self.epoch = 0
        self.skipped: dict[str, list[str]] = {"no_annotations": [], "other_dims": []}
        self._entries = self._load(store, image_ids, raters, versions)
        self.n_classes = self._check_classes(n_classes, store.class_names)

    # --- loading -----------------------------------------------------------------------------

    def _load(
        self,
        store: ProjectStore,
        image_ids: Sequence[str] | None,
        raters: Sequence[str] | None,
        versions: Mapping[str, Mapping[str, int]] | None,
    ) -> list[_Entry]:
        known = store.image_ids()
        if versions is not None:
            if image_ids is not None or raters is not None:
                raise ValueError("versions: give either versions or image_ids/raters, not both")
            image_ids = list(versions)
        ids = known if image_ids is None else [str(i) for i in image_ids]
        unknown = sorted(set(ids) - set(known))
        if unknown:
            raise ValueError(f"image_ids: not in the store {self.store_path}: {unknown}")
        wanted = None if raters is None else {str(r) for r in raters}
        entries = []
        for image_id in sorted(set(ids)):
            info = store.image_info(image_id)
            if self.spatial_dims is not None and len(info["shape"]) != self.spatial_dims:
                self.skipped["other_dims"].append(image_id)
                continue
            if versions is not None:
                pinned = {str(r): int(v) for r, v in versions[image_id].items()}
            else:
                pinned = {r: 0 for r in store.raters(image_id) if wanted is None or r in wanted}
            if not pinned:
                self.skipped["no_annotations"].append(image_id)
                continue
            masks, used = [], []
            for rater in sorted(pinned):
                if pinned[rater]:
                    mask, record = store.read_version(image_id, rater, pinned[rater])
                else:
                    mask, record = store.latest(image_id, rater)
                masks.append(np.asarray(mask, dtype=np.int64))
                used.append(int(record.version))
            data, _ = store.read_image(image_id)
            image = normalize(np.asarray(data)[None], self.normalization)
            stack = np.stack(masks)
            fg = None
            if self.foreground_fraction > 0:
                fg = np.argwhere(stack.max(0) > 0)
            entries.append(_Entry(image_id, image, stack, tuple(sorted(pinned)), tuple(used), fg))
        if not entries:
            raise ValueError(
                f"store: no annotated images to use in {self.store_path} "
                f"(skipped {len(self.skipped['no_annotations'])} without annotations, "
                f"{len(self.skipped['other_dims'])} of other dimensionality)"
            )
        return entries

    def _check_classes(self, n_classes: int | None, class_names: list[str] | None) -> int:
        top = max(int(e.masks.max()) for e in self._entries)
        if n_classes is None:
            n_classes = len(class_names) if class_names else max(top + 1, 2)
        if int(n_classes) != n_classes or n_classes < 2:
            raise ValueError(f"n_classes: expected an integer >= 2, got {n_classes!r}")
        if top >= n_classes:
            worst = next(e for e in self._entries if int(e.masks.max()) == top)
            raise ValueError(
                f"n_classes: image {worst.image_id!r} has label {top} but there are only "
                f"{n_classes} classes (labels 0..{n_classes - 1})"
            )
        return int(n_classes)

    # --- public API --------------------------------------------------------------------------

    @property
    def image_ids(self) -> list[str]:
        return [e.image_id for e in self._entries]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Spatial shapes of the images, in `image_ids` order."""
        return [tuple(e.masks.shape[1:]) for e in self._entries]

    @property
    def annotations(self) -> dict[str, dict[str, int]]:
        return {e.image_id: dict(zip(e.raters, e.versions)) for e in self._entries}

    @property
    def n_skipped(self) -> int:
        """Number of images left out (without annotations or of the other dimensionality)."""
        return sum(len(v) for v in self.skipped.values())

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch, so that every epoch draws new raters and patches (seeded)."""
        self.epoch = int(epoch)

    def subset(self, image_ids: Sequence[str]) -> StoreDataset:
        """A dataset over some of this one's images (sharing the loaded arrays)."""
        wanted = {str(i) for i in image_ids}
        missing = sorted(wanted - set(self.image_ids))
        if missing:
            raise ValueError(f"image_ids: not in this dataset: {missing}")
        out = copy.copy(self)
        out._entries = [e for e in self._entries if e.image_id in wanted]
        out.skipped = {k: list(v) for k, v in self.skipped.items()}
        return out

    def split(
        self, val_fraction: float | None = None, *, n_val: int | None = None, seed: int = 0
    ) -> tuple[StoreDataset, StoreDataset]:
        """Split by image (`split_images`) into ``(train, val)`` datasets; ``val`` may be empty."""
        train, val = split_images(self.image_ids, val_fraction, n_val=n_val, seed=seed)
        return self.subset(train), self.subset(val)

    def __len__(self) -> int:
        return len(self._entries) * self.samples_per_image

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index: {index} out of range for {n} items")
        index %= n
        entry = self._entries[index // self.samples_per_image]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        origin, image, masks = self._crop(entry, rng)
        raters, versions = entry.raters, entry.versions
        if self.rater_mode == "random":
            r = int(rng.integers(len(raters)))
            target = torch.from_numpy(masks[r].copy())
            raters, versions = (raters[r],), (versions[r],)
        elif self.rater_mode == "majority":
            target = torch.from_numpy(majority_vote(list(masks)).astype(np.int64))
        elif self.rater_mode == "soft":
            onehot = masks[None] == np.arange(self.n_classes).reshape(-1, 1, *([1] * masks[0].ndim))
            target = torch.from_numpy(onehot.mean(1, dtype=np.float32))
        else:
            target = torch.from_numpy(masks.copy())
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "target": target,
            "image_id": entry.image_id,
            "raters": list(raters),
            "versions": dict(zip(raters, versions)),
            "origin": origin,
            "index": index,
        }

    def _crop(
        self, entry: _Entry, rng: np.random.Generator
    ) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
        """Return ``(origin, image (C, *P), masks (R, *P))`` of a random patch (or everything)."""
        shape = entry.masks.shape[1:]
        if self.patch_size is None:
            return (0,) * len(shape), entry.image, entry.masks
        patch = self.patch_size
        fg = entry.foreground
        if fg is not None and len(fg) and rng.random() < self.foreground_fraction:
            centre = fg[int(rng.integers(len(fg)))]
            start = [
                int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, p, s in zip(centre, patch, shape)
            ]
        else:
            start = [int(rng.integers(max(s - p, 0) + 1)) for p, s in zip(patch, shape)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
        image, masks = entry.image[(slice(None), *sl)], entry.masks[(slice(None), *sl)]
        short = [(0, p - s) for p, s in zip(patch, image.shape[1:])]
        if any(b for _, b in short):
            # mirror padding keeps image and masks consistent (no invented background)
            image = np.pad(image, [(0, 0), *short], mode="symmetric")
            masks = np.pad(masks, [(0, 0), *short], mode="symmetric")
        return tuple(start), image, masks

    def __repr__(self) -> str:
        return (
            f"StoreDataset({str(self.store_path)!r}, images={len(self._entries)}, "
            f"rater_mode={self.rater_mode!r}, patch_size={self.patch_size}, "
            f"skipped={self.n_skipped})"
        )
