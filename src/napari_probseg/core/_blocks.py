"""Row blocks: how the core reads maps and masks that may not fit in memory.

The image summary (:mod:`napari_probseg.core.summary`) takes numpy arrays or arrays on disk
(zarr, dask: a streamed prediction's output store) and reads them in blocks of rows of the first
spatial axis, so its working memory is one block, not the image. Reads follow the storage chunks
of arrays on disk (a chunk is decompressed once per pass); computation goes
:data:`BLOCK_ELEMENTS` at a time. Every score accumulated over blocks is the same number as on the
whole array (sums to float rounding, counts exactly).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from napari_probseg.core._validation import is_torch, to_numpy

__all__ = ["BLOCK_ELEMENTS", "READ_BYTES", "RowBlocks", "common_stride"]

#: Elements (voxels times the leading axis) per computed block: ~8 MB as float32, 16 MB as
#: float64, before the computation's temporaries.
BLOCK_ELEMENTS = 1 << 21
#: Bytes read at a time from an array on disk (one 64-row float32 chunk row of 512^2 planes).
READ_BYTES = 1 << 26


def _is_lazy(x: Any) -> bool:
    return (
        not isinstance(x, np.ndarray)
        and not is_torch(x)
        and hasattr(x, "shape")
        and hasattr(x, "dtype")
        and hasattr(x, "__getitem__")
    )


def _chunk_rows(x: Any, axis: int) -> int | None:
    """Storage chunk length along ``axis`` of a zarr/dask array (None for in-memory arrays)."""
    chunks = getattr(x, "chunks", None)
    if chunks is None or isinstance(x, np.ndarray):
        return None
    first = chunks[axis]
    if isinstance(first, tuple):  # dask: one length per block
        first = max(first) if first else None
    return int(first) if first else None


class RowBlocks:
    """An array read in blocks of rows of axis ``lead`` (the first spatial axis).

    Arrays on disk are read ``read_rows`` rows at a time (whole storage chunks where that is at
    most :data:`READ_BYTES`: reading part of a chunk decompresses all of it) and
    handed out ``rows`` at a time (the computation's block, at most :data:`BLOCK_ELEMENTS`
    elements), so the memory is one read plus one block's temporaries. In-memory arrays are
    sliced, never copied.

    Parameters
    ----------
    array : ndarray, Tensor, zarr or dask array, shape (*lead_axes, *spatial)
        Tensors are moved to numpy; zarr and dask arrays are read block by block, never whole.
    lead : int
        Number of leading non-spatial axes (0 for a map, 1 for ``(K, *spatial)`` or
        ``(N, *spatial)``).
    """

    def __init__(self, array: Any, *, lead: int = 0) -> None:
        self.lazy = _is_lazy(array)
        self.array = array if self.lazy else to_numpy(array)
        self.lead = int(lead)
        self.shape = tuple(int(s) for s in self.array.shape)
        self.dtype = np.dtype(self.array.dtype)
        if len(self.shape) <= self.lead:
            raise ValueError(
                f"array: expected spatial axes after {lead} leading axes, got {self.shape}"
            )
        self.n_rows = self.shape[self.lead]
        per_row = math.prod(self.shape[: self.lead]) * math.prod(self.shape[self.lead + 1 :])
        self.rows = max(1, min(self.n_rows, BLOCK_ELEMENTS // max(per_row, 1)))
        # whole storage chunks per read unless that is more than READ_BYTES (N = 16 samples
        # of 64-row chunks of 512^2 planes: 268 MB); then part-chunk reads (more decompression)
        chunk = _chunk_rows(self.array, self.lead) if self.lazy else None
        row_bytes = max(per_row * self.dtype.itemsize, 1)
        if chunk and chunk * row_bytes <= READ_BYTES:
            self.read_rows = chunk * max(1, READ_BYTES // (chunk * row_bytes))
        else:
            self.read_rows = max(self.rows, READ_BYTES // row_bytes)
        self.read_rows = min(self.read_rows, self.n_rows)
        self.stride = common_stride([self])

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial shape."""
        return self.shape[self.lead :]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the first spatial axis, as a numpy array."""
        block = self.array[(slice(None),) * self.lead + (slice(start, stop),)]
        if hasattr(block, "compute"):  # dask
            block = block.compute()
        return np.asarray(block)

    def blocks_in(self, start: int, stop: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(a, b, block)`` over rows ``start:stop``, at most ``rows`` rows each; read
        ``read_rows`` rows at a time (each row once)."""
        lead = (slice(None),) * self.lead
        for r0 in range(start, stop, self.read_rows):
            r1 = min(stop, r0 + self.read_rows)
            outer = self.read(r0, r1)
            for a in range(r0, r1, self.rows):
                b = min(r1, a + self.rows)
                yield a, b, outer[(*lead, slice(a - r0, b - r0))]
            del outer

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, block)`` over all rows, in order."""
        for start in range(0, self.n_rows, self.stride):
            yield from self.blocks_in(start, min(self.n_rows, start + self.stride))


def common_stride(blocks: Sequence[RowBlocks]) -> int:
    """Rows of each array handled in turn when arrays are read side by side (the same rows of
    each, one array at a time): a multiple of every array's ``read_rows`` where possible (the
    largest of them; in-memory arrays: the largest ``rows``)."""
    stride = max(b.read_rows for b in blocks)
    return max(1, min(stride, blocks[0].n_rows))
