"""Export a project store as an nnU-Net raw dataset or a MONAI datalist (NIfTI files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg.core._validation import check_choice

PER_CHOICES = ("rater", "consensus")
FORMATS = ("nnunet", "monai")
#: Separator of ``<image>+<rater>`` case names: not an identifier character, so names never
#: collide (``a_b`` + ``c`` and ``a`` + ``b_c`` stay ``a_b+c`` and ``a+b_c``).
CASE_SEPARATOR = "+"


def majority_vote(masks: list[np.ndarray]) -> np.ndarray:
    """Per-voxel label chosen by most raters; ties go to the lowest label (background first).

    Parameters
    ----------
    masks : list of ndarray, each shape (*S)
        Integer label masks of the same shape (at least one).

    Returns
    -------
    ndarray, shape (*S)
        The consensus mask, dtype of the first mask. For binary masks a voxel is foreground
        only if strictly more than half of the raters marked it.
    """
    if not masks:
        raise ValueError("masks: expected at least one mask")
    stack = np.stack([np.asarray(m) for m in masks])
    n_labels = int(stack.max()) + 1 if stack.size else 1
    counts = np.zeros((n_labels, *stack.shape[1:]), dtype=np.int32)
    for label in range(n_labels):
        counts[label] = (stack == label).sum(axis=0)
    return np.argmax(counts, axis=0).astype(stack.dtype)  # argmax picks the lowest label on ties


def _nifti(data: np.ndarray, scale: tuple[float, ...], path: Path) -> None:
    """Write (Z, Y, X) or (Y, X) data as NIfTI with axes (x, y, z) and the voxel size as affine."""
    import nibabel as nib

    arr = np.asarray(data)
    if arr.ndim == 2:
        arr, scale = arr[None], (1.0, *scale)
    xyz = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
    affine = np.diag([scale[2], scale[1], scale[0], 1.0])
    if xyz.dtype == np.float64:
        xyz = xyz.astype(np.float32)
    nib.save(nib.Nifti1Image(xyz, affine), str(path))


def _cases(
    store: Any, per: str
) -> list[tuple[str, str, str | None, np.ndarray, np.ndarray, tuple]]:
    """(case id, image id, rater or None, image, label, scale) for every exported case."""
    cases = []
    for image_id in store.image_ids():
        raters = store.raters(image_id)
        if not raters:
            continue
        image, scale = store.read_image(image_id)
        masks = {r: store.latest(image_id, r)[0] for r in raters}
        if per == "rater":
            for r, m in masks.items():
                cases.append((f"{image_id}{CASE_SEPARATOR}{r}", image_id, r, image, m, scale))
        else:
            cases.append(
                (image_id, image_id, None, image, majority_vote(list(masks.values())), scale)
            )
    return cases


def _check_case_names(cases: list) -> None:
    """Refuse two cases whose file names are equal, or equal but for letter case (one file on
    Windows and macOS)."""
    seen: dict[str, str] = {}
    for case, *_ in cases:
        other = seen.setdefault(case.lower(), case)
        if other != case or sum(c[0] == case for c in cases) > 1:
            raise ValueError(f"cases: {other!r} and {case!r} would be the same export file")


def _label_names(store: Any, cases: list) -> dict[str, int]:
    top = max((int(c[4].max()) for c in cases), default=1)
    names = list(store.class_names or [])
    if not names:
        names = ["background"] + [f"label_{i}" for i in range(1, max(top, 1) + 1)]
    if top >= len(names):  # never invent class names the store does not define
        case = next(c[0] for c in cases if int(c[4].max()) == top)
        raise ValueError(
            f"labels: case {case!r} holds label {top}, outside the store's classes {names}"
        )
    return {name: i for i, name in enumerate(names)}


def export_store(store: Any, out: str | Path, *, format: str, per: str = "rater") -> dict[str, Any]:
    """Export every annotated image of ``store`` to ``out``.

    Parameters
    ----------
    store : ProjectStore
        The store (read only).
    out : path
        Output directory (created; must not hold a previous export).
    format : {"nnunet", "monai"}
        ``"nnunet"``: ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` and
        ``dataset.json`` (nnU-Net v2 raw format). ``"monai"``: ``images/<case>.nii.gz``,
        ``labels/<case>.nii.gz`` and ``datalist.json`` (``{"training": [{"image", "label", ...}]}``
        with paths relative to ``out``, for ``monai.data.load_decathlon_datalist``).
    per : {"rater", "consensus"}
        One case per image and rater (latest version, case ``<image>+<rater>``), or one case per
        image with the raters' majority vote (:func:`majority_vote`).

    Returns
    -------
    dict
        The written ``dataset.json`` / ``datalist.json`` content.
    """
    check_choice(format, "format", FORMATS)
    check_choice(per, "per", PER_CHOICES)
    out = Path(out)
    index_name = "dataset.json" if format == "nnunet" else "datalist.json"
    if (out / index_name).exists():
        raise FileExistsError(f"out: {out} already holds an export ({index_name})")
    cases = _cases(store, per)
    if not cases:
        raise ValueError(f"store: {store.path} holds no annotated image to export")
    _check_case_names(cases)
    labels = _label_names(store, cases)  # before any file is written
    img_dir, lbl_dir = ("imagesTr", "labelsTr") if format == "nnunet" else ("images", "labels")
    (out / img_dir).mkdir(parents=True, exist_ok=True)
    (out / lbl_dir).mkdir(parents=True, exist_ok=True)
    entries = []
    for case, image_id, rater, image, label, scale in cases:
        img_name = f"{case}_0000.nii.gz" if format == "nnunet" else f"{case}.nii.gz"
        _nifti(image, scale, out / img_dir / img_name)
        _nifti(
            label.astype(np.uint8 if label.max() < 256 else np.uint16),
            scale,
            out / lbl_dir / f"{case}.nii.gz",
        )
        entries.append(
            {
                "image": f"{img_dir}/{img_name}",
                "label": f"{lbl_dir}/{case}.nii.gz",
                "case": case,
                "image_id": image_id,
                "rater": rater,
            }
        )
    if format == "nnunet":
        index: dict[str, Any] = {
            "channel_names": {"0": "image"},
            "labels": labels,
            "numTraining": len(entries),
            "file_ending": ".nii.gz",
            "name": store.path.stem,
            "description": f"exported by napari-probseg from {store.path} (per {per})",
        }
    else:
        index = {"labels": {str(v): k for k, v in labels.items()}, "per": per, "training": entries}
    (out / index_name).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return index
