"""Streaming accumulator of sampled probabilities: running sums merged over batches and tiles.

One chunked pass per batch (float64 sums, numpy or torch on the input's device) gives the mean
probabilities, the per-class variance, the predictive and expected entropy and the mutual
information (:class:`~napari_probseg.core.maps.UncertaintyMaps`); accumulators of disjoint sample
sets merge. Public through :mod:`napari_probseg.core.uncertainty`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_probseg.core._validation import PROB_SUM_ATOL, check_probs, is_torch, to_numpy
from napari_probseg.core.maps import UncertaintyMaps, _plogp, _zeros_like

__all__ = ["UncertaintyAccumulator"]

# Elements of one float32 chunk processed at a time by the numpy update: small enough to stay
# in cache and to keep temporaries negligible next to the running sums (see bench_accumulator).
_CHUNK_ELEMENTS = 1 << 18
_MIN_CHUNK_VOXELS = 1024


# --------------------------------------------------------------------------------------------
# Streaming accumulator
# --------------------------------------------------------------------------------------------


class UncertaintyAccumulator:
    """Streaming uncertainty maps over samples, with memory independent of the sample count.

    Keeps running sums of ``p``, ``p**2`` and of each sample's entropy, per voxel, plus each
    sample's expected foreground volume. The sums are float64 (float32 on devices without
    float64, e.g. Apple MPS): with float32 running sums the rounding error grows with ``N`` and
    the small difference ``PE - EE`` (mutual information) and ``E[p^2] - E[p]^2`` (variance)
    would drift; float64 keeps both accurate to ~1e-12 for any practical ``N``. Within one
    update, the partial sums over the batch's ``B`` samples are taken in the input precision
    (error <= B * eps, independent of ``N``) before being added to the float64 sums. Per batch,
    the numpy path walks the voxels in cache-sized chunks, so temporaries stay a few MiB and
    peak memory is about the sums plus the caller's batch (see ``benchmarks/bench_accumulator``).

    Parameters
    ----------
    n_classes : int
        Number of classes ``K``.
    foreground_classes : sequence of int, optional
        Classes counted as foreground in ``volumes``; default: every class except 0.
    spatial_dims : {2, 3}, optional
        Number of spatial axes; inferred from the first :meth:`update` when it is unambiguous.
    atol : float, optional
        Tolerance on ``sum_k p_k == 1``.
    validate : bool, optional
        Check every update for NaN/Inf, range and normalization (default True; the check is one
        extra cheap pass over each chunk, made before any state changes).

    Notes
    -----
    Feeding samples:

    - ``update(p)`` with ``p`` of shape ``(K, *spatial)`` adds one sample, with shape
      ``(B, K, *spatial)`` a batch of ``B`` samples (the efficient path: one chunked pass).
    - :meth:`merge` adds the samples of another accumulator *of the same image region*
      (e.g. a second worker or device).

    Tiled inference: the per-sample entropy must be taken on each sample's *blended* full
    probabilities, so the engine blends the overlapping sliding-window tiles of a batch of
    ``B`` samples into one ``(B, K, *spatial)`` buffer and then calls ``update(buffer)``;
    memory is ``B * K * V`` for the buffer plus ``(2K + 1) * V`` float64 sums. For volumes where
    even one such buffer is too large, split the image into disjoint blocks, blend each block's
    tiles (with a halo) per batch, keep one accumulator per block (fed with the block's core
    only), and join the block results with :func:`stitch_maps` (volumes add up over blocks).

    Examples
    --------
    >>> import numpy as np
    >>> acc = UncertaintyAccumulator(2)
    >>> acc.update(np.full((2, 4, 4), 0.5))
    >>> acc.update(np.stack([np.ones((4, 4)), np.zeros((4, 4))]))
    >>> maps = acc.result()
    >>> maps.n_samples, float(maps.mean_probs[1, 0, 0])
    (2, 0.25)
    """

    def __init__(
        self,
        n_classes: int,
        *,
        foreground_classes: Sequence[int] | None = None,
        spatial_dims: int | None = None,
        atol: float = PROB_SUM_ATOL,
        validate: bool = True,
    ) -> None:
        if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 1:
            raise ValueError(f"n_classes: expected an integer >= 1, got {n_classes!r}")
        self.n_classes = int(n_classes)
        if foreground_classes is None:
            fg = tuple(range(1, self.n_classes))
        else:
            fg = tuple(int(c) for c in foreground_classes)
            if any(c < 0 or c >= self.n_classes for c in fg) or len(set(fg)) != len(fg):
                raise ValueError(
                    f"foreground_classes: expected distinct classes in [0, {self.n_classes}), "
                    f"got {foreground_classes!r}"
                )
        self.foreground_classes = fg
        if spatial_dims is not None and spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2, 3 or None, got {spatial_dims!r}")
        self._spatial_dims = spatial_dims
        if not (atol >= 0):
            raise ValueError(f"atol: expected a tolerance >= 0, got {atol!r}")
        self.atol = float(atol)
        self.validate = bool(validate)
        self._n = 0
        self._spatial: tuple[int, ...] | None = None
        self._torch_device: Any = None  # None: numpy state
        self._float64_input = False
        self._sum_p: Any = None  # (K, V)
        self._sum_p2: Any = None  # (K, V)
        self._sum_h: Any = None  # (V,)
        self._volumes: list[float] = []

    # -- properties ----------------------------------------------------------------------------

    @property
    def n_samples(self) -> int:
        """Number of samples added so far."""
        return self._n

    @property
    def spatial_shape(self) -> tuple[int, ...] | None:
        """Spatial shape fixed by the first update (None before)."""
        return self._spatial

    @property
    def nbytes(self) -> int:
        """Bytes held by the running sums (independent of the number of samples)."""
        if self._sum_p is None:
            return 0
        state = (self._sum_p, self._sum_p2, self._sum_h)
        if self._torch_device is not None:
            return int(sum(t.element_size() * t.numel() for t in state))
        return int(sum(a.nbytes for a in state))

    # -- shape handling --------------------------------------------------------------------------

    def _as_batch(self, probs: Any) -> Any:
        """Return ``probs`` as a (B, K, *spatial) batch, fixing the spatial shape if needed."""
        shape = tuple(int(s) for s in probs.shape)
        k = self.n_classes
        expect = "(K, *spatial) or (B, K, *spatial) with 2 or 3 spatial axes"
        if self._spatial is not None:
            sdim = len(self._spatial)
            if len(shape) == sdim + 1 and shape == (k, *self._spatial):
                return probs[None]
            if len(shape) == sdim + 2 and shape[1:] == (k, *self._spatial):
                batched = True
            else:
                raise ValueError(
                    f"probs: expected shape ({k}, *{self._spatial}) or (B, {k}, *{self._spatial}), "
                    f"got {shape}"
                )
        else:
            sdim = self._spatial_dims
            if sdim is None:
                single = len(shape) in (3, 4) and shape[0] == k
                batch = len(shape) in (4, 5) and shape[1] == k
                if len(shape) == 3:
                    sdim = 2
                elif len(shape) == 5:
                    sdim = 3
                elif len(shape) == 4 and single != batch:
                    sdim = 3 if single else 2
                elif len(shape) == 4 and single and batch:
                    raise ValueError(
                        f"probs: shape {shape} is ambiguous between one 3D sample and a batch "
                        "of 2D samples; pass spatial_dims to the accumulator"
                    )
                else:
                    raise ValueError(f"probs: expected shape {expect} and K = {k}, got {shape}")
            if len(shape) == sdim + 1:
                batched = False
            elif len(shape) == sdim + 2:
                batched = True
            else:
                raise ValueError(f"probs: expected shape {expect}, got {shape}")
            kaxis = 1 if batched else 0
            if shape[kaxis] != k:
                raise ValueError(f"probs: expected {k} classes on axis {kaxis}, got shape {shape}")
            self._spatial = shape[kaxis + 1 :]
        if not batched:
            probs = probs[None]
        if int(probs.shape[0]) < 1:
            raise ValueError("probs: a batch must hold at least 1 sample, got 0")
        return probs

    # -- update ----------------------------------------------------------------------------------

    def update(self, probs: Any) -> None:
        """Add one sample ``(K, *spatial)`` or a batch of samples ``(B, K, *spatial)``.

        Parameters
        ----------
        probs : ndarray or Tensor
            Probabilities summing to 1 over the class axis. The first update fixes the spatial
            shape and the backend (numpy, or torch on the tensor's device); later inputs of the
            other kind are converted.

        Raises
        ------
        ValueError
            Wrong shape, NaN/Inf, values outside [0, 1], sums off 1, or an empty batch. The
            accumulator is unchanged when an update is rejected.
        """
        spatial_before = self._spatial
        try:
            batch = self._as_batch(probs)
            if self._sum_p is None:
                self._init_state(batch)
            if self._torch_device is not None:
                self._update_torch(batch)
            else:
                self._update_numpy(batch)
        except ValueError:
            if self._n == 0:
                self._spatial = spatial_before
                self._sum_p = self._sum_p2 = self._sum_h = None
                self._torch_device = None
            raise

    def _init_state(self, batch: Any) -> None:
        v = int(np.prod(self._spatial))
        k = self.n_classes
        if is_torch(batch):
            import torch

            device = batch.device
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._torch_device = device
            self._sum_p = torch.zeros((k, v), dtype=dtype, device=device)
            self._sum_p2 = torch.zeros((k, v), dtype=dtype, device=device)
            self._sum_h = torch.zeros((v,), dtype=dtype, device=device)
        else:
            self._sum_p = np.zeros((k, v), np.float64)
            self._sum_p2 = np.zeros((k, v), np.float64)
            self._sum_h = np.zeros((v,), np.float64)

    def _update_numpy(self, batch: Any) -> None:
        x = to_numpy(batch)
        if x.dtype not in (np.float32, np.float64):
            if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
                raise ValueError(f"probs: expected real probabilities, got dtype {x.dtype}")
            x = x.astype(np.float32)
        b, k = x.shape[:2]
        x = x.reshape(b, k, -1)
        v = x.shape[2]
        step = max(_MIN_CHUNK_VOXELS, _CHUNK_ELEMENTS // (b * k))
        if self.validate:
            for a in range(0, v, step):
                self._check_chunk(x[:, :, a : a + step])
        buf = np.empty((b, k, min(step, v)), x.dtype)
        vol = np.zeros(b, np.float64)
        sum_p, sum_p2, sum_h = self._sum_p, self._sum_p2, self._sum_h
        for a in range(0, v, step):
            xc = x[:, :, a : a + step]
            c = xc.shape[2]
            t = buf[:, :, :c]
            # Partial sums over the B samples of this batch are in the input precision (error
            # <= B * eps, not growing with N, and ~2x faster); the running sums are float64.
            sum_p[:, a : a + c] += xc.sum(axis=0)
            np.multiply(xc, xc, out=t)
            sum_p2[:, a : a + c] += t.sum(axis=0)
            _plogp(xc, out=t)
            sum_h[a : a + c] -= t.sum(axis=(0, 1))
            for cls in self.foreground_classes:
                vol += xc[:, cls].sum(axis=1, dtype=np.float64)
        self._float64_input |= x.dtype == np.float64
        self._n += b
        self._volumes.extend(vol.tolist())

    def _check_chunk(self, xc: np.ndarray) -> None:
        lo, hi = xc.min(), xc.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("probs: contains NaN or Inf values")
        if lo < -self.atol or hi > 1 + self.atol:
            raise ValueError(
                f"probs: probabilities must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]"
            )
        # K float32 additions: rounding ~K * 6e-8, far below any sensible atol.
        total = xc[:, 0].copy()
        for cls in range(1, xc.shape[1]):
            total += xc[:, cls]
        total -= 1.0
        err = float(max(-total.min(), total.max()))
        if err > self.atol:
            raise ValueError(
                "probs: probabilities must sum to 1 over the class axis "
                f"(max deviation {err:.3g} > {self.atol:g})"
            )

    def _update_torch(self, batch: Any) -> None:
        import torch

        x = batch if is_torch(batch) else torch.as_tensor(np.asarray(batch))
        x = x.detach().to(self._torch_device)
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if self.validate:
            check_probs(x, "probs", class_axis=1, atol=self.atol)
        b, k = int(x.shape[0]), int(x.shape[1])
        x = x.reshape(b, k, -1)
        acc = self._sum_p.dtype
        with torch.no_grad():
            self._sum_p += x.sum(dim=0, dtype=acc)
            self._sum_p2 += (x * x).sum(dim=0, dtype=acc)
            self._sum_h -= torch.special.xlogy(x, x).sum(dim=(0, 1), dtype=acc)
            if self.foreground_classes:
                fg = list(self.foreground_classes)
                vol = x[:, fg].sum(dim=(1, 2), dtype=acc).cpu().to(torch.float64).numpy()
            else:
                vol = np.zeros(b)
        self._float64_input |= x.dtype == torch.float64
        self._n += b
        self._volumes.extend(float(v) for v in vol)

    # -- merge -----------------------------------------------------------------------------------

    def merge(self, other: UncertaintyAccumulator) -> UncertaintyAccumulator:
        """Add the samples of ``other`` (same image region, same classes) to this accumulator.

        Parameters
        ----------
        other : UncertaintyAccumulator
            Accumulator over samples of the same image/tile; it is left unchanged.

        Returns
        -------
        UncertaintyAccumulator
            ``self``, for chaining. Volumes keep the order: this accumulator's samples first.

        Raises
        ------
        ValueError
            ``other`` has other classes, foreground classes or spatial shape.
        """
        if not isinstance(other, UncertaintyAccumulator):
            raise ValueError(f"other: expected an UncertaintyAccumulator, got {type(other)!r}")
        if (other.n_classes, other.foreground_classes) != (
            self.n_classes,
            self.foreground_classes,
        ):
            raise ValueError(
                "other: accumulators differ in n_classes or foreground_classes "
                f"({other.n_classes}, {other.foreground_classes}) != "
                f"({self.n_classes}, {self.foreground_classes})"
            )
        if other._n == 0:
            return self
        if self._spatial is not None and other._spatial != self._spatial:
            raise ValueError(f"other: spatial shape {other._spatial} differs from {self._spatial}")
        if self._sum_p is None:
            self._spatial = other._spatial
            self._torch_device = other._torch_device
            self._sum_p = _zeros_like(other._sum_p)
            self._sum_p2 = _zeros_like(other._sum_p2)
            self._sum_h = _zeros_like(other._sum_h)
        for mine, theirs in (
            (self._sum_p, other._sum_p),
            (self._sum_p2, other._sum_p2),
            (self._sum_h, other._sum_h),
        ):
            mine += self._convert_state(theirs)
        self._n += other._n
        self._float64_input |= other._float64_input
        self._volumes.extend(other._volumes)
        return self

    def _convert_state(self, arr: Any) -> Any:
        if self._torch_device is None:
            return to_numpy(arr)
        import torch

        return torch.as_tensor(to_numpy(arr) if not is_torch(arr) else arr).to(
            device=self._torch_device, dtype=self._sum_p.dtype
        )

    # -- result ----------------------------------------------------------------------------------

    def result(self) -> UncertaintyMaps:
        """Return the uncertainty maps of all samples added so far (the state is kept).

        Returns
        -------
        UncertaintyMaps
            Maps of shape ``(K, *spatial)`` / ``(*spatial)`` and per-sample volumes ``(N,)``.

        Raises
        ------
        ValueError
            No sample has been added (``n_samples`` is 0).
        """
        if self._n == 0:
            raise ValueError("n_samples: no samples added yet; call update() first")
        n, k, shape = self._n, self.n_classes, self._spatial
        if self._torch_device is not None:
            maps = self._result_torch()
        else:
            maps = self._result_numpy()
        mean, pe, ee, mi, var = maps
        return UncertaintyMaps(
            mean_probs=mean.reshape(k, *shape),
            predictive_entropy=pe.reshape(shape),
            expected_entropy=ee.reshape(shape),
            mutual_information=mi.reshape(shape),
            variance=var.reshape(k, *shape),
            volumes=np.asarray(self._volumes, np.float64),
            n_samples=n,
            foreground_classes=self.foreground_classes,
        )

    def _result_numpy(self) -> tuple[np.ndarray, ...]:
        n, k = self._n, self.n_classes
        out_dtype = np.float64 if self._float64_input else np.float32
        v = self._sum_h.shape[0]
        mean, var = np.empty((k, v), out_dtype), np.empty((k, v), out_dtype)
        pe, ee, mi = (np.empty(v, out_dtype) for _ in range(3))
        # Chunks keep the float64 temporaries small (peak memory ~ state + outputs).
        step = max(_MIN_CHUNK_VOXELS, _CHUNK_ELEMENTS // (4 * k))
        for a in range(0, v, step):
            sl = slice(a, a + step)
            m = self._sum_p[:, sl] / n
            mean[:, sl] = m
            sq = self._sum_p2[:, sl] / n
            sq -= m * m
            var[:, sl] = np.maximum(sq, 0.0, out=sq)
            h = -_plogp(m).sum(axis=0)
            e = self._sum_h[sl] / n
            pe[sl] = np.maximum(h, 0.0)
            ee[sl] = np.maximum(e, 0.0)
            h -= e
            mi[sl] = np.maximum(h, 0.0, out=h)
        return mean, pe, ee, mi, var

    def _result_torch(self) -> tuple[Any, ...]:
        import torch

        n = self._n
        out_dtype = torch.float64 if self._float64_input else torch.float32
        if self._sum_p.dtype != torch.float64:
            out_dtype = self._sum_p.dtype
        mean = self._sum_p / n
        pe = (-torch.special.xlogy(mean, mean).sum(dim=0)).clamp_min(0.0)
        ee = (self._sum_h / n).clamp_min(0.0)
        mi = (pe - ee).clamp_min(0.0)
        var = (self._sum_p2 / n - mean * mean).clamp_min(0.0)
        return tuple(t.to(out_dtype) for t in (mean, pe, ee, mi, var))
