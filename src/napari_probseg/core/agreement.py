"""Agreement between raters of one image: pairwise Dice matrix, majority vote, soft consensus and
the share of voxels they disagree on.

Built on the package's one IoU matrix, :func:`napari_probseg.core.observer.iou_matrix` (the one
GED, HM-IoU and ``core.structure`` use): ``Dice = 2 IoU / (1 + IoU)`` per class. Used by the
annotation panel (in its worker) and by scripts; no Qt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_probseg.core._validation import check_masks
from napari_probseg.core.observer import iou_matrix
from napari_probseg.core.structure import consensus

__all__ = ["Agreement", "agreement", "dice_matrix"]


@dataclass(frozen=True)
class Agreement:
    """Agreement between the raters of one image.

    Attributes
    ----------
    raters : tuple of str
        Rater order of the matrix.
    dice : ndarray, shape (R, R)
        Pairwise Dice, averaged over the foreground classes present in either mask of the pair;
        1 for two empty masks (diagonal 1).
    majority : ndarray, shape (*spatial)
        Per-voxel majority label (ties go to the lowest label, i.e. background).
    soft : ndarray of float32, shape (*spatial)
        Share of raters marking the voxel as foreground (mean of the raters' foreground masks).
    disagreement : float
        Share of all voxels where the raters do not all give the same label.
    disagreement_foreground : float
        The same among voxels that at least one rater marked (NaN if none did).
    """

    raters: tuple[str, ...]
    dice: np.ndarray
    majority: np.ndarray
    soft: np.ndarray
    disagreement: float
    disagreement_foreground: float

    def summary(self) -> str:
        """One sentence: raters, mean pairwise Dice, disagreement shares."""
        fg = self.disagreement_foreground
        return (
            f"{len(self.raters)} raters; mean pairwise Dice {self.mean_pairwise_dice:.3f}. "
            f"Raters disagree on {100 * self.disagreement:.2f}% of all voxels"
            + ("" if np.isnan(fg) else f" ({100 * fg:.1f}% of the voxels any rater marked)")
            + "."
        )

    @property
    def mean_pairwise_dice(self) -> float:
        """Mean Dice over pairs of distinct raters (NaN with fewer than two)."""
        r = len(self.raters)
        if r < 2:
            return float("nan")
        return float(self.dice[np.triu_indices(r, k=1)].mean())


def dice_matrix(masks: Any) -> np.ndarray:
    """Pairwise Dice between label masks, per foreground class then averaged.

    Parameters
    ----------
    masks : ndarray, shape (R, *spatial)
        Integer label masks, 0 = background.

    Returns
    -------
    ndarray of float64, shape (R, R)
        ``D[i, j]`` = mean over the foreground classes present in mask ``i`` or ``j`` of that
        class's Dice ``2|A∩B| / (|A| + |B|)``; 1 when neither mask has foreground (the
        convention of ``core.structure.pairwise_dice``). Computed from
        ``core.observer.iou_matrix`` of each class's binary masks (one matrix product each) with
        ``Dice = 2 IoU / (1 + IoU)``, exact for binary masks.
    """
    arr = check_masks(masks, "masks")
    r = arr.shape[0]
    flat = arr.reshape(r, -1)
    classes = [int(c) for c in np.unique(flat) if c > 0]
    total = np.zeros((r, r))
    count = np.zeros((r, r))
    for c in classes:
        binary = (flat == c).astype(np.uint8)
        iou = iou_matrix(binary[:, :, None])  # (R, V, 1): any 2D shape will do for the IoU
        has = binary.any(axis=1)
        present = has[:, None] | has[None, :]
        total += np.where(present, 2 * iou / (1 + iou), 0.0)
        count += present
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def agreement(masks: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> Agreement:
    """Agreement of the raters' masks of one image.

    Parameters
    ----------
    masks : mapping of rater to ndarray, each shape (*spatial)
        At least one mask; all the same shape.

    Returns
    -------
    Agreement
    """
    items = list(masks.items()) if isinstance(masks, Mapping) else list(masks)
    if not items:
        raise ValueError("masks: expected at least one rater's mask")
    shapes = {np.shape(m) for _, m in items}
    if len(shapes) != 1:
        raise ValueError(f"masks: raters' masks differ in shape: {sorted(shapes)}")
    stack = np.stack([np.asarray(m) for _, m in items])
    differ = (stack != stack[:1]).any(axis=0)
    anyfg = (stack > 0).any(axis=0)
    n_fg = int(anyfg.sum())
    return Agreement(
        raters=tuple(str(r) for r, _ in items),
        dice=dice_matrix(stack),
        majority=np.asarray(consensus(stack)),
        soft=(stack > 0).mean(axis=0, dtype=np.float64).astype(np.float32),
        disagreement=float(differ.mean()) if differ.size else 0.0,
        disagreement_foreground=float(differ[anyfg].sum() / n_fg) if n_fg else float("nan"),
    )
