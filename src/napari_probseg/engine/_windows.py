"""The tile loop both prediction paths share: run a sample batch on windows and blend it.

:func:`blend_windows` is the one place that calls ``method.sample`` on a window, checks what it
returned and blends it (edge-ramp weights, ``engine/_tiling.py``) into a buffer; the whole-image
path (``engine/_predict.py``) and the slab/strip path (``engine/_slabs.py``) differ only in the
buffer they give it and in what they do with it afterwards. :class:`BodyCache` keeps the network
body of a window (``Method.body``) between the sample batches of those windows, so a shared body
runs once per tile whatever the number of batches.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from napari_probseg.engine._tiling import TilePlan
from napari_probseg.engine._types import Progress


def blend_windows(
    method: Any,
    source: Any,
    windows: Sequence[Any],
    plan: TilePlan,
    buf: Any,
    *,
    bj: int,
    seed: int,
    first_index: int | None,
    dev: Any,
    check_cancel: Callable[[], None],
    on_window: Callable[[int], Progress | None],
    bodies: BodyCache | None = None,
) -> Generator[Progress, None, None]:
    """Blend hypotheses ``first_index .. first_index + bj - 1`` of every window into ``buf``.

    Parameters
    ----------
    method : Method
        ``method.sample(x, bj, generator=g, first_index=i0)`` gives ``(bj, K, *patch)``.
    source : Tensor, shape (C, *spatial)
        The normalised, padded input the windows' ``source`` indices read.
    windows : sequence of Window
        Their ``target`` indices address ``buf``.
    plan : TilePlan
        Blending weights (untiled plans copy the output instead).
    buf : Tensor, shape (bj, K, *spatial)
        The float32 CPU blend buffer.
    bj : int
        Hypotheses in the batch.
    seed : int
        Seed of the CPU generator, re-seeded identically for every window.
    first_index : int or None
        Global index of the batch's first hypothesis; None for methods whose ``sample`` takes
        none (``seed`` is then a per-batch seed).
    dev : torch.device
    check_cancel : callable
        Raises :class:`~napari_probseg.engine.Cancelled`; checked before every window.
    on_window : callable
        Called with the window's position after it is blended; a returned event is yielded.
    bodies : BodyCache, optional
        Network bodies of ``windows`` by position, kept from an earlier batch of the same
        windows (and filled here); None, or a method without a body: ``sample`` runs it.
    """
    import torch

    k = buf.shape[1]
    for w_i, window in enumerate(windows):
        check_cancel()
        x = source[window.source].unsqueeze(0).to(dev)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        body = None
        with torch.inference_mode():
            if first_index is None:
                out = method.sample(x, bj, generator=generator)
            elif bodies is not None:
                body = bodies.body(w_i, method, x)
                out = method.sample(x, bj, generator=generator, first_index=first_index, body=body)
            else:
                out = method.sample(x, bj, generator=generator, first_index=first_index)
        expected = (bj, k, *x.shape[2:])
        if tuple(out.shape) != expected:
            raise ValueError(
                f"method: {method.name}.sample returned shape {tuple(out.shape)}, "
                f"expected {expected}"
            )
        probs = out.detach().to("cpu", torch.float32)
        if plan.tiled:
            buf[window.target] += probs * plan.weight(window)
        else:
            buf[window.target] = probs
        del out, probs, x
        body = None
        event = on_window(w_i)
        if event is not None:
            yield event


class BodyCache:
    """Network bodies (``Method.body``) of a group of windows, kept between sample batches.

    The engine runs the sample batches of a group of windows (a strip of a slab, or the whole
    image) one after another; without this, a method whose body all hypotheses share would run
    it once per tile *and batch*. Bodies are stored on the CPU (moved back to the compute device
    when used) while they fit ``limit_bytes``; a body past the limit is computed again by every
    batch (so an estimate that was too small costs time, never memory).

    Attributes
    ----------
    passes : int
        Bodies computed so far (over every group: :meth:`clear` keeps the count).
    peak_bytes : int
        Most bytes held at once.
    """

    def __init__(self, limit_bytes: float) -> None:
        self.limit_bytes = float(limit_bytes)
        self.passes = 0
        self.peak_bytes = 0
        self._held: dict[int, Any] = {}
        self._bytes = 0

    def body(self, key: int, method: Any, x: Any) -> Any:
        """The body of ``method`` on window ``key``'s input ``x`` (1, C, *patch), on x's device:
        from the cache, or computed (after the method's input check) and kept if it fits."""
        import torch

        held = self._held.get(key)
        if held is not None:
            return _tree_to(held, x.device)
        method.check_input(x)
        body = method.body(x.to(getattr(method, "device", x.device), torch.float32))
        if body is None:
            return None
        self.passes += 1
        size = _tree_bytes(body)
        if self._bytes + size <= self.limit_bytes:
            self._held[key] = _tree_to(body, "cpu")
            self._bytes += size
            self.peak_bytes = max(self.peak_bytes, self._bytes)
        return body

    def clear(self) -> None:
        """Forget the bodies (the next group of windows starts)."""
        self._held.clear()
        self._bytes = 0


def _tree_to(tree: Any, device: Any) -> Any:
    """``tree`` (a tensor, or tuples, lists and dicts of them) moved to ``device``."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(_tree_to(t, device) for t in tree)
    if isinstance(tree, dict):
        return {k: _tree_to(v, device) for k, v in tree.items()}
    return tree.to(device) if hasattr(tree, "to") else tree


def _tree_bytes(tree: Any) -> int:
    """Bytes of the tensors in ``tree``."""
    if isinstance(tree, (tuple, list)):
        return sum(_tree_bytes(t) for t in tree)
    if isinstance(tree, dict):
        return sum(_tree_bytes(v) for v in tree.values())
    return int(tree.numel() * tree.element_size()) if hasattr(tree, "element_size") else 0


def batch_seed(seed: int, start: int) -> int:
    """Seed of the sample batch starting at sample ``start``, for methods whose ``sample`` takes no
    ``first_index`` (their samples then depend on the batch split)."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1, dtype=np.uint64)[0] >> 1)


def accepts_first_index(method: Any) -> bool:
    """True when ``method.sample`` takes ``first_index`` (the Method contract; batch-invariant)."""
    return sample_accepts(method, "first_index")


def keeps_bodies(method: Any) -> bool:
    """True when ``method`` splits off a hypothesis-independent body that the engine may keep
    between sample batches: ``body(x)``, ``body_bytes(patch)`` and ``sample(..., body=)``."""
    return (
        callable(getattr(method, "body", None))
        and callable(getattr(method, "body_bytes", None))
        and sample_accepts(method, "body")
        and accepts_first_index(method)  # blend_windows passes bodies with first_index only
    )


def sample_accepts(method: Any, keyword: str) -> bool:
    """True when ``method.sample`` takes the keyword argument ``keyword``."""
    import inspect

    try:
        params = inspect.signature(method.sample).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def install_cancel_hooks(method: Any, check_cancel: Callable[[], None]) -> list:
    """Check ``cancel`` before every module of the method's network runs.

    One forward of a large batch can take seconds on a CPU; forward pre-hooks make a cancel land
    within one layer (a few ms) instead of at the end of the batch, without changing the batch
    (which would change the samples). Methods without a ``network`` module get no hooks.
    """
    network = getattr(method, "network", None)
    if network is None or not hasattr(network, "modules"):
        return []

    def hook(module: Any, args: Any) -> None:
        check_cancel()

    return [m.register_forward_pre_hook(hook) for m in network.modules()]


def argmax_into(probs: np.ndarray, out: np.ndarray) -> None:
    """Write the argmax over axis 1 of ``probs`` (b, K, *S) into ``out`` (b, *S).

    A loop over classes with a strict ``>``: ties go to the lower class (as ``np.argmax``), so
    an even split stays background. ~20x faster than ``torch.argmax(dim=1)`` on CPU (0.016 vs
    0.31 s for 16 x 2 x 256²) and 2x faster than ``np.argmax``.
    """
    best = probs[:, 0].copy()
    out[...] = 0
    for k in range(1, probs.shape[1]):
        pk = probs[:, k]
        higher = pk > best
        out[higher] = k
        np.maximum(best, pk, out=best)


def balanced(batch: int, n: int) -> int:
    """Largest batch <= ``batch`` that splits ``n`` samples into equal-ish batches (16 = 8 + 8,
    not 15 + 1: the same number of passes with less memory and no tiny last pass)."""
    n_batches = -(-n // max(batch, 1))
    return -(-n // n_batches)
