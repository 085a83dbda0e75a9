"""Seeded synthetic multi-rater lesion data and the translational circle toy.

The lesion generator draws 2D or 3D images of 1-4 blob-shaped lesions with soft, ambiguous boundaries
and labels each image with several simulated raters whose styles differ systematically (DESIGN.md):

========================  ===========================================================================
style                     how the rater draws a lesion
========================  ===========================================================================
``"tight"``               high threshold (0.72) on the soft lesion map: hugs the bright core
``"generous"``            low threshold (0.28): includes most of the intensity ramp
``"smoothed"``            threshold 0.5 on a coarse grid, linearly interpolated: polygonal contours
``"conservative"``        threshold 0.55 and never marks faint lesions
========================  ===========================================================================

Every rater also adds its own smooth random field (boundary jitter) to the soft lesion map before
thresholding, and marks each faint lesion only with a style-dependent probability. Because the soft
map is a sigmoid of the signed distance to the lesion surface with a per-lesion width, the raters
agree on sharp, bright lesions (a steep sigmoid: thresholds and jitter move the contour by less than
a pixel) and disagree on soft boundaries and faint lesions, which is where the image is ambiguous.

Lengths are drawn in physical units relative to the image extent, so the same seed gives the same
scene at any ``shape`` and ``spacing``; spatial axes are (plane, row, column).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import fft, ndimage
from scipy.special import expit

from napari_probseg.core._validation import check_positive_int

__all__ = [
    "LESION_KINDS",
    "MAX_SHIFT",
    "RATER_STYLES",
    "SHIFT_SEVERITIES",
    "LesionSet",
    "make_circle_samples",
    "make_lesions",
    "make_shifted_circle",
    "sample_case",
    "shift_appearance",
    "shift_severity",
]

#: Rater styles, cycled when more raters than styles are asked for.
RATER_STYLES: tuple[str, ...] = ("tight", "generous", "smoothed", "conservative")

#: Lesion kinds: sharp and bright, soft (wide intensity ramp) and bright, faint (low contrast, soft).
LESION_KINDS: tuple[str, ...] = ("sharp", "soft", "faint")

# threshold on the soft map, probability of marking a faint lesion, jitter amplitude
_STYLE_PARAMS: dict[str, dict[str, float]] = {
    "tight": {"threshold": 0.72, "p_faint": 0.6, "jitter": 0.10},
    "generous": {"threshold": 0.28, "p_faint": 0.95, "jitter": 0.10},
    "smoothed": {"threshold": 0.50, "p_faint": 0.75, "jitter": 0.10},
    "conservative": {"threshold": 0.55, "p_faint": 0.0, "jitter": 0.10},
}

# (probability, contrast range, boundary width range in units, shape irregularity range)
_KIND_PARAMS: dict[
    str, tuple[float, tuple[float, float], tuple[float, float], tuple[float, float]]
] = {
    "sharp": (0.40, (0.45, 0.80), (0.25, 0.6), (0.0, 0.25)),
    "soft": (0.35, (0.40, 0.70), (1.8, 3.5), (0.0, 0.35)),
    "faint": (0.25, (0.12, 0.22), (1.2, 2.5), (0.0, 0.35)),
}

# Image appearance of the training domain (severity 0) and of the strongest shift (severity 3,
# ``shift=True``); severities in between interpolate linearly (see `shift_appearance`).
_APPEARANCE: dict[bool, dict[str, float]] = {
    False: {"background": 0.15, "texture": 0.025, "contrast": 1.0, "noise": 0.04, "blur": 0.6},
    True: {"background": 0.45, "texture": 0.10, "contrast": 0.5, "noise": 0.12, "blur": 1.6},
}

#: The strongest shift severity (``shift=True``); graded severities are numbers in [0, MAX_SHIFT].
MAX_SHIFT = 3.0

#: The named severities used by ``make validate``: in-domain, mild, moderate, strong.
SHIFT_SEVERITIES: tuple[int, ...] = (0, 1, 2, 3)


def shift_severity(shift: bool | float) -> float:
    """Return the severity in [0, `MAX_SHIFT`] of a ``shift`` argument of `make_lesions`.

    ``False`` is 0 (the training domain), ``True`` is `MAX_SHIFT` (the strong shift of earlier
    versions); numbers are taken as they are.

    Raises
    ------
    ValueError
        ``shift: ...`` for a value outside [0, `MAX_SHIFT`] or not a number.
    """
    if isinstance(shift, (bool, np.bool_)):
        return MAX_SHIFT if shift else 0.0
    try:
        value = float(shift)
    except (TypeError, ValueError):
        raise ValueError(f"shift: expected a bool or a severity in [0, 3], got {shift!r}") from None
    if not 0.0 <= value <= MAX_SHIFT:
        raise ValueError(f"shift: expected a severity in [0, {MAX_SHIFT:g}], got {shift!r}")
    return value


def shift_appearance(shift: bool | float) -> dict[str, float]:
    """Appearance of the images at a shift severity: background, texture, lesion contrast, noise and
    blur, interpolated linearly between the training domain (0) and the strong shift (3).

    Contrast falls and noise, blur, background and texture grow with the severity, so the
    contrast-to-noise ratio falls from 25 (0) through 12 (1) and 7 (2) to 4 (3).
    """
    t = shift_severity(shift) / MAX_SHIFT
    lo, hi = _APPEARANCE[False], _APPEARANCE[True]
    return {k: float(lo[k] + t * (hi[k] - lo[k])) for k in lo}


class LesionSet(NamedTuple):
    """Synthetic multi-rater lesion images (a named tuple: unpack it or use the fields).

    Attributes
    ----------
    images : ndarray of float32, shape (n_images, *shape)
        Intensity images, roughly in [0, 1] (not clipped: noise may leave it).
    raters : ndarray of uint8, shape (n_images, n_raters, *shape)
        Binary masks drawn by each simulated rater (1 = lesion).
    truth : ndarray of uint8, shape (n_images, *shape)
        The latent "true" mask: every lesion's soft map thresholded at 0.5, faint lesions included.
    rater_styles : list of str
        Style of each rater (see `RATER_STYLES`), cycled when ``n_raters > 4``.
    meta : dict
        ``"rater_names"`` (unique names, e.g. ``"tight"``, ``"tight_2"``), ``"shape"``, ``"ndim"``,
        ``"spacing"``, ``"seed"``, ``"shift"`` (bool), ``"shift_severity"`` (float in [0, 3]),
        ``"appearance"`` (intensity model),
        ``"lesions"`` (per image a list of dicts: kind, center, radii, width, contrast, and
        ``"marked_by"``: the raters who marked it) and ``"lesion_labels"`` (uint8 array
        ``(n_images, *shape)``: the index + 1 of the lesion whose soft map dominates each pixel where
        some soft map exceeds 0.02, 0 elsewhere).
    """

    images: np.ndarray
    raters: np.ndarray
    truth: np.ndarray
    rater_styles: list[str]
    meta: dict[str, Any]


@dataclass
class _Lesion:
    kind: str
    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    width: float
    contrast: float
    irregularity: float
    extra: dict[str, Any] = field(default_factory=dict)


def _smooth_fields(
    rng: np.random.Generator, n: int, shape: tuple[int, ...], sigma: np.ndarray
) -> np.ndarray:
    """Return ``n`` smooth Gaussian random fields ``(n, *shape)`` float32 with unit std.

    The fields are Gaussian-filtered white noise (periodic boundary). The noise is drawn directly
    as Fourier coefficients and only where the Gaussian transfer function is not negligible: with
    the wide kernels used here that is a few percent of the spectrum, which makes this several
    times faster than filtering white noise with ``ndimage.gaussian_filter``.
    """
    transfer = np.ones((), dtype=np.float32)
    for i, (size, s) in enumerate(zip(shape, sigma)):
        freq = fft.rfftfreq(size) if i == len(shape) - 1 else fft.fftfreq(size)
        gauss = np.exp(-2.0 * (np.pi * s * freq) ** 2).astype(np.float32)
        transfer = np.multiply.outer(transfer, gauss)
    keep = transfer > 1e-4
    coeffs = rng.standard_normal((2, n, int(keep.sum())), dtype=np.float32)
    spec = np.zeros((n, *transfer.shape), dtype=np.complex64)
    spec[:, keep] = (coeffs[0] + 1j * coeffs[1]) * transfer[keep]
    axes = tuple(range(1, len(shape) + 1))
    out = fft.irfftn(spec, s=shape, axes=axes).astype(np.float32, copy=False)
    std = out.reshape(n, -1).std(axis=1).reshape((n,) + (1,) * len(shape))
    return out / np.maximum(std, 1e-12)


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _draw_lesions(
    rng: np.random.Generator, extent: np.ndarray, unit: float, ndim: int
) -> list[_Lesion]:
    """Draw 1-4 non-overlapping lesions inside ``extent`` (physical units)."""
    kinds = list(LESION_KINDS)
    probs = np.array([_KIND_PARAMS[k][0] for k in kinds])
    n_wanted = int(rng.integers(1, 5))
    lesions: list[_Lesion] = []
    for _ in range(n_wanted):
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        _, contrast_rng, width_rng, irr_rng = _KIND_PARAMS[kind]
        r_mean = rng.uniform(5.0, 14.0) * unit if ndim == 2 else rng.uniform(4.0, 10.0) * unit
        radii = r_mean * rng.uniform(0.75, 1.3, size=ndim)
        width = rng.uniform(*width_rng) * unit
        reach = radii.max() * 1.35 + 2 * width
        lo, hi = np.minimum(reach, extent / 2), np.maximum(extent - reach, extent / 2)
        for _try in range(30):
            center = rng.uniform(lo, hi)
            ok = all(
                np.linalg.norm(center - other.center)
                > reach + other.radii.max() * 1.35 + 2 * other.width + unit
                for other in lesions
            )
            if ok:
                lesions.append(
                    _Lesion(
                        kind=kind,
                        center=center,
                        radii=radii,
                        rotation=_random_rotation(rng, ndim),
                        width=float(width),
                        contrast=float(rng.uniform(*contrast_rng)),
                        irregularity=float(rng.uniform(*irr_rng)),
                    )
                )
                break
    return lesions


def _soft_map(
    lesion: _Lesion, coords: np.ndarray, shape_field: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """Sigmoid of the (approximate, perturbed) signed distance to the lesion surface, float32.

    Only a bounding box is evaluated (the map is < 1e-3 outside it), which is ~10x faster.
    """
    out = np.zeros(coords.shape[1:], dtype=np.float32)
    r_geo = float(np.exp(np.log(lesion.radii).mean()))
    reach = lesion.radii.max() * (1.0 + lesion.irregularity * 1.2) + 8 * lesion.width
    lo = np.maximum(np.floor((lesion.center - reach) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((lesion.center + reach) / spacing).astype(int) + 1, out.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    local_coords = coords[(slice(None), *box)]
    local = np.einsum(
        "ji,j...->i...", lesion.rotation, local_coords - _bcast(lesion.center, local_coords)
    )
    rho = np.sqrt(np.sum((local / _bcast(lesion.radii, local)) ** 2, axis=0))
    signed = (rho - 1.0) * r_geo + lesion.irregularity * 0.3 * r_geo * shape_field[box]
    out[box] = expit(-signed / lesion.width)
    return out


def _bcast(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32).reshape((-1,) + (1,) * (like.ndim - 1))


def _coarse_smooth(values: np.ndarray, factor: int) -> np.ndarray:
    """Average ``values`` (n, *shape) over blocks of ``factor`` pixels, interpolate back linearly.

    Thresholding the result gives piecewise-smooth, polygon-like contours (a rater clicking a
    coarse polygon). The blocks are aligned exactly with the pixel grid so that no shift is added.
    """
    spatial = values.shape[1:]
    padded = np.pad(values, [(0, 0)] + [(0, -s % factor) for s in spatial], mode="edge")
    blocks: list[int] = [len(values)]
    for s in padded.shape[1:]:
        blocks += [s // factor, factor]
    coarse = padded.reshape(blocks).mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))
    up = ndimage.zoom(
        coarse, (1, *(factor,) * len(spatial)), order=1, mode="nearest", grid_mode=True
    )
    return up[(slice(None), *(slice(0, s) for s in spatial))]


def make_lesions(
    n_images: int,
    *,
    ndim: int = 2,
    shape: tuple[int, ...] | None = None,
    spacing: tuple[float, ...] | None = None,
    n_raters: int = 4,
    shift: bool | float = False,
    seed: int = 0,
) -> LesionSet:
    """Generate images of lesions with ambiguous boundaries, labelled by several simulated raters.

    Parameters
    ----------
    n_images : int
        Number of images (>= 1).
    ndim : {2, 3}
        Number of spatial dimensions.
    shape : tuple of int, optional
        Spatial shape, default ``(128, 128)`` in 2D and ``(64, 64, 64)`` in 3D.
    spacing : tuple of float, optional
        Physical pixel size per spatial axis (default 1). Lesions are drawn in physical units, so an
        anisotropic spacing gives round lesions in physical space.
    n_raters : int
        Number of raters, 1 to 8; styles cycle through `RATER_STYLES`.
    shift : bool or float
        Draw the images in a shifted domain of graded severity (`shift_appearance`): 0 or False is
        the training domain; 1, 2, 3 are a mild, moderate and strong shift (brighter background,
        lower lesion contrast, more noise, stronger blur and texture, growing linearly); True is
        the strong shift, severity 3 (halved contrast, three times the noise). Any number in
        [0, 3] is allowed. Lesion geometry and rater masks are identical at every severity with the
        same seed, and so are the texture and noise fields (only their amplitudes change), so
        images of different severities are paired.
    seed : int
        Seed of the numpy random generator; the output is a deterministic function of all arguments.

    Returns
    -------
    LesionSet
        ``images`` (n_images, *shape) float32, ``raters`` (n_images, n_raters, *shape) uint8,
        ``truth`` (n_images, *shape) uint8, ``rater_styles`` and ``meta`` (see `LesionSet`).

    Examples
    --------
    >>> images, raters, truth, styles, meta = make_lesions(4, seed=1)
    >>> images.shape, raters.shape, styles
    ((4, 128, 128), (4, 4, 128, 128), ['tight', 'generous', 'smoothed', 'conservative'])
    """
    n_images = check_positive_int(n_images, "n_images")
    severity = shift_severity(shift)
    if ndim not in (2, 3):
        raise ValueError(f"ndim: expected 2 or 3, got {ndim!r}")
    n_raters = check_positive_int(n_raters, "n_raters")
    if n_raters > 8:
        raise ValueError(f"n_raters: expected 1 to 8 raters, got {n_raters}")
    if shape is None:
        shape = (128, 128) if ndim == 2 else (64, 64, 64)
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim or min(shape) < 8:
        raise ValueError(f"shape: expected {ndim} sizes >= 8, got {shape}")
    spacing_arr = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=float)
    if spacing_arr.shape != (ndim,) or not np.all(spacing_arr > 0):
        raise ValueError(f"spacing: expected {ndim} positive values, got {spacing!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")

    extent = np.asarray(shape) * spacing_arr
    # One "unit" is a pixel of the default 128^2 / 64^3 image: scenes look alike at any resolution.
    unit = float(extent.min()) / (128.0 if ndim == 2 else 64.0)
    geom_ss, rater_ss, look_ss = np.random.SeedSequence(int(seed)).spawn(3)
    geom_rng = np.random.default_rng(geom_ss)
    styles = [RATER_STYLES[r % len(RATER_STYLES)] for r in range(n_raters)]
    names = [
        s if r < len(RATER_STYLES) else f"{s}_{r // len(RATER_STYLES) + 1}"
        for r, s in enumerate(styles)
    ]

    coords = np.stack(
        np.meshgrid(*[(np.arange(s) + 0.5) * d for s, d in zip(shape, spacing_arr)], indexing="ij")
    ).astype(np.float32)
    shape_fields = _smooth_fields(geom_rng, n_images, shape, 6.0 * unit / spacing_arr)

    # soft maps per lesion, kept per image for the raters
    all_lesions: list[list[_Lesion]] = []
    softs: list[np.ndarray] = []  # each (L_i, *shape)
    for i in range(n_images):
        lesions = _draw_lesions(geom_rng, extent, unit, ndim)
        all_lesions.append(lesions)
        softs.append(
            np.stack([_soft_map(les, coords, shape_fields[i], spacing_arr) for les in lesions])
        )

    soft_all = np.stack([s.max(axis=0) for s in softs])  # (n, *shape)
    truth = (soft_all >= 0.5).astype(np.uint8)
    labels = np.zeros((n_images, *shape), dtype=np.uint8)
    for i, s in enumerate(softs):
        labels[i] = np.where(s.max(axis=0) > 0.02, s.argmax(axis=0) + 1, 0)

    raters = np.zeros((n_images, n_raters, *shape), dtype=np.uint8)
    factor = max(2, round(min(shape) / 40))
    for r, (style, child) in enumerate(zip(styles, rater_ss.spawn(n_raters))):
        rng = np.random.default_rng(child)
        params = _STYLE_PARAMS[style]
        jitter = _smooth_fields(rng, n_images, shape, 3.0 * unit / spacing_arr)
        jitter = np.clip(params["jitter"] * jitter, -0.25, 0.25)
        soft_r = np.empty_like(soft_all)
        for i, (lesions, s) in enumerate(zip(all_lesions, softs)):
            marked = np.array(
                [les.kind != "faint" or rng.random() < params["p_faint"] for les in lesions]
            )
            for les, m in zip(lesions, marked):
                les.extra.setdefault("marked_by", [])
                if m:
                    les.extra["marked_by"].append(names[r])
            soft_r[i] = s[marked].max(axis=0) if marked.any() else 0.0
        values = soft_r + jitter
        if style == "smoothed":
            values = _coarse_smooth(values, factor)
        # The support condition keeps jitter from drawing blobs far from any marked lesion.
        raters[:, r] = (values > params["threshold"]) & (soft_r > 0.02)

    look = shift_appearance(severity)
    look_rng = np.random.default_rng(look_ss)
    texture = _smooth_fields(look_rng, n_images, shape, 8.0 * unit / spacing_arr)
    # (a per-lesion weighted sum; tensordot/BLAS is oddly slow for these tiny leading axes)
    contrast = np.stack(
        [
            (_bcast(np.array([les.contrast for les in ls]), s) * s).sum(axis=0)
            for ls, s in zip(all_lesions, softs)
        ]
    )
    clean = look["background"] + look["texture"] * texture + look["contrast"] * contrast
    blur = (0, *tuple(look["blur"] * unit / spacing_arr))
    images = ndimage.gaussian_filter(clean, sigma=blur, mode="nearest")
    images += look["noise"] * look_rng.standard_normal(images.shape, dtype=np.float32)

    meta: dict[str, Any] = {
        "ndim": ndim,
        "shape": shape,
        "spacing": tuple(float(s) for s in spacing_arr),
        "seed": int(seed),
        "shift": severity > 0,
        "shift_severity": severity,
        "rater_names": names,
        "appearance": dict(look),
        "lesions": [
            [
                {
                    "kind": les.kind,
                    "center": tuple(float(c) for c in les.center),
                    "radii": tuple(float(r) for r in les.radii),
                    "width": les.width,
                    "contrast": les.contrast,
                    "marked_by": list(les.extra.get("marked_by", [])),
                }
                for les in lesions
            ]
            for lesions in all_lesions
        ],
        "lesion_labels": labels,
    }
    return LesionSet(images.astype(np.float32), raters, truth, styles, meta)


def make_shifted_circle(
    n_positions: int,
    *,
    shape: tuple[int, ...] = (64, 64),
    radius: float = 8,
    seed: int = 0,
) -> np.ndarray:
    """Return a disk (or ball) at ``n_positions`` distinct positions: the translational toy.

    A circle that sits at one of ``n`` equally likely positions has an entropy of ``log2(n)`` bits,
    whereas per-pixel entropy summed over the image counts every boundary pixel: the toy shows the
    gap (DESIGN.md).

    Parameters
    ----------
    n_positions : int
        Number of distinct positions (>= 1).
    shape : tuple of int
        Spatial shape (2D or 3D).
    radius : float
        Radius in pixels (> 0); the disk always lies fully inside the image.
    seed : int
        Seed for the random choice of positions (distinct integer centers, without replacement).

    Returns
    -------
    masks : ndarray of uint8, shape (n_positions, *shape)
        One binary mask per position; all masks are distinct.
    """
    n_positions = check_positive_int(n_positions, "n_positions")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"shape: expected 2 or 3 spatial sizes, got {shape}")
    if not radius > 0:
        raise ValueError(f"radius: expected a positive number, got {radius!r}")
    margin = int(np.ceil(radius))
    ranges = [np.arange(margin, s - margin) for s in shape]
    n_valid = int(np.prod([len(r) for r in ranges]))
    if n_valid < n_positions:
        raise ValueError(
            f"n_positions: only {n_valid} positions fit a radius-{radius} disk in {shape}, "
            f"got {n_positions}"
        )
    rng = np.random.default_rng(seed)
    flat = rng.choice(n_valid, size=n_positions, replace=False)
    centers = np.stack(np.unravel_index(flat, [len(r) for r in ranges]), axis=1) + margin
    grid = np.indices(shape, dtype=np.float32)  # (ndim, *shape)
    d2 = ((grid[None] - centers.reshape(n_positions, len(shape), *(1,) * len(shape))) ** 2).sum(1)
    return (d2 <= radius**2).astype(np.uint8)


def make_circle_samples(
    n_samples: int,
    n_positions: int,
    *,
    shape: tuple[int, ...] = (64, 64),
    radius: float = 8,
    seed: int = 0,
    return_index: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draw ``n_samples`` masks from the translational toy (uniform over its ``n_positions``).

    Parameters
    ----------
    n_samples : int
        Number of samples (>= 1).
    n_positions, shape, radius :
        As in `make_shifted_circle` (the positions use ``seed``).
    seed : int
        Seed for the positions and for the draws.
    return_index : bool
        Also return which position each sample took.

    Returns
    -------
    samples : ndarray of uint8, shape (n_samples, *shape)
    index : ndarray of int, shape (n_samples,)
        Only with ``return_index=True``.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    masks = make_shifted_circle(n_positions, shape=shape, radius=radius, seed=seed)
    rng = np.random.default_rng([int(seed), 1])
    index = rng.integers(0, len(masks), size=n_samples)
    return (masks[index], index) if return_index else masks[index]


#: Fixed seeds and geometry of the sample cases (napari sample data, ``probseg --sample``).
_SAMPLE_CASES: dict[int, dict[str, Any]] = {
    2: {"shape": (128, 128), "spacing": (1.0, 1.0), "seed": 13},
    3: {"shape": (32, 64, 64), "spacing": (2.0, 1.0, 1.0), "seed": 22},
}


def sample_case(ndim: int = 2) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[float, ...]]:
    """Return one fixed synthetic case: image, one mask per rater and the pixel spacing.

    Parameters
    ----------
    ndim : {2, 3}
        2D: a 128 x 128 image, spacing (1, 1). 3D: a 32 x 64 x 64 volume with anisotropic spacing
        (2, 1, 1), like a CT series with thick slices.

    Returns
    -------
    image : ndarray of float32, shape (*shape)
    raters : dict of str to ndarray of uint8, shape (*shape)
        One binary mask per rater, keyed by rater name (``"tight"``, ``"generous"``, ...).
    scale : tuple of float
        Pixel spacing per spatial axis, (plane, row, column) order.
    """
    if ndim not in _SAMPLE_CASES:
        raise ValueError(f"ndim: expected 2 or 3, got {ndim!r}")
    case = _SAMPLE_CASES[ndim]
    data = make_lesions(1, ndim=ndim, n_raters=4, **case)
    masks = {name: data.raters[0, r] for r, name in enumerate(data.meta["rater_names"])}
    return data.images[0], masks, tuple(case["spacing"])
