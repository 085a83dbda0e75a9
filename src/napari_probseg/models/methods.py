"""Sampling methods: each wraps a network and draws probability samples ``(n, K, *S)``.

Interface (docs/ARCHITECTURE.md, "Method interface"):
``method.sample(x, n, generator=g, first_index=i0)`` with ``x`` of shape ``(1, C, *S)`` returns
hypotheses ``i0 .. i0 + n - 1``. ``sample`` is ``render(x, hypotheses(n, g, first_index=i0), g)``:

* :meth:`Method.hypotheses` draws all *per-hypothesis* randomness first. One number is drawn
  from ``g`` (the run's key); hypothesis ``i`` then gets its own generator seeded from
  ``SeedSequence([key, i])`` and :meth:`Method.draw` is called with ``n = 1`` on it (ensemble
  member, TTA transform, SSN low-rank ``eps``, prob. U-Net latent ``eps``, Laplace head weights,
  MC-dropout seeds) plus a per-hypothesis ``noise_seed``. So hypothesis ``i`` depends only on
  the seed of ``g`` and on ``i``: it is the same whatever the batch split, the memory budget or
  the tile (the engine re-seeds ``g`` identically for every tile and batch and passes the global
  index of the batch's first hypothesis as ``first_index``). The ensemble uses member
  ``i mod M``.
* ``render(x, state, g)`` runs the network; per-voxel noise (SSN diagonal, TTA noise) comes from
  each hypothesis's ``noise_seed`` (not from the shared ``g``), so it is batch-invariant too.

``render`` also accepts ``x`` with one row per hypothesis ``(n, C, *S)``; that is how
test-time augmentation composes over another method (``tta+mc_dropout`` ...).

Methods whose network body does not depend on the hypothesis (SSN, prob. U-Net, Laplace) split
``render`` into :meth:`Method.body` (the network pass, once per input) and
:meth:`Method.render_body` (the per-hypothesis head). ``sample(x, n, ..., body=method.body(x))``
then draws any batch of hypotheses of that input without running the body again: the engine
keeps a tile's body between sample batches, so the body runs once per tile whatever N.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_probseg.core._validation import check_positive_int
from napari_probseg.models.errors import (
    ChannelMismatchError,
    DegenerateCovarianceWarning,
    DimensionalityError,
    ModelCardError,
)
from napari_probseg.models.networks import MemberEnsemble, ProbUNet, SSNNet, dropout_modules

__all__ = [
    "EnsembleMethod",
    "LaplaceMethod",
    "MCDropoutMethod",
    "Method",
    "ProbUNetMethod",
    "SSNMethod",
    "SoftmaxMethod",
    "TTAMethod",
]

State = dict[str, torch.Tensor]


def _subset(state: State, idx: torch.Tensor) -> State:
    return {k: v[idx] for k, v in state.items()}


def hypothesis_seed(key: int, index: int, stream: int) -> int:
    """Seed of stream ``stream`` (0: per-hypothesis state, 1: per-voxel noise) of hypothesis
    ``index`` of a run with key ``key``: independent of how hypotheses are batched."""
    state = np.random.SeedSequence([int(key), int(index), int(stream)]).generate_state(
        1, dtype=np.uint64
    )
    return int(state[0] >> np.uint64(1))


def noise_generators(state: State) -> list[torch.Generator]:
    """One CPU generator per hypothesis of ``state`` for its per-voxel noise."""
    return [torch.Generator().manual_seed(int(s)) for s in state["noise_seed"]]


def per_hypothesis_randn(state: State, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise ``(n, *shape)``: row ``i`` from hypothesis ``i``'s noise seed."""
    gens = noise_generators(state)
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


class Method:
    """Base class of the sampling methods (see the module docstring).

    Attributes
    ----------
    name : str
    source : tuple of str
        Randomness sources (``"parameter"``, ``"input"``, ``"latent"``, ``"none"``), naming the
        meaning of mutual information / expected entropy (`napari_probseg.core.uncertainty`).
    n_classes, class_names, spatial_dims, in_channels
    deterministic : bool
        True when every sample is the same (softmax): callers should use ``n = 1``.
    device : torch.device
    network : nn.Module
    card : ModelCard or None
    """

    name: str = "method"
    source: tuple[str, ...] = ("none",)
    deterministic: bool = False
    #: True when the network body runs once per call whatever ``n`` (the engine then sizes
    #: batches by the output alone, so N hypotheses come from one body pass per tile)
    shared_body: bool = False

    def __init__(
        self,
        network: nn.Module,
        *,
        class_names: list[str],
        spatial_dims: int,
        in_channels: int,
        card: Any = None,
    ) -> None:
        self.network = network.eval()
        self.class_names = list(class_names)
        self.n_classes = len(self.class_names)
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.card = card
        try:
            self.device = next(network.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")

    # -- interface ----------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> Method:
        """Move the network to ``device`` (in place) and return ``self``."""
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    def check_input(self, x: torch.Tensor, *, batch: int | None = 1) -> None:
        """Raise `DimensionalityError` / `ChannelMismatchError` unless ``x`` is ``(1, C, *S)``."""
        image_dims = x.ndim - 2
        if image_dims != self.spatial_dims:
            raise DimensionalityError(
                f"x: a {self.spatial_dims}D model got a tensor of shape {tuple(x.shape)} "
                f"({image_dims} spatial dims); expected (1, {self.in_channels}, "
                f"*{self.spatial_dims} spatial sizes). Run a 2D model slice by slice on 3D images.",
                model_dims=self.spatial_dims,
                image_dims=image_dims,
            )
        if x.shape[1] != self.in_channels:
            raise ChannelMismatchError(
                f"x: model expects {self.in_channels} channel(s), got {x.shape[1]} "
                f"(shape {tuple(x.shape)})",
                expected=self.in_channels,
                got=int(x.shape[1]),
            )
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"x: expected batch size {batch}, got shape {tuple(x.shape)}")

    def sample(
        self,
        x: torch.Tensor,
        n: int,
        *,
        generator: torch.Generator | None = None,
        first_index: int = 0,
        body: Any = None,
    ) -> torch.Tensor:
        """Draw hypotheses ``first_index .. first_index + n - 1``.

        Parameters
        ----------
        x : Tensor, shape (1, C, *S)
            Normalized image tile (moved to the method's device if elsewhere).
        n : int
            Number of hypotheses (softmax returns ``n`` identical copies).
        generator : torch.Generator, optional
            CPU generator that supplies the run's key (a fresh default-seeded one when None).
            Hypothesis ``i`` depends only on the generator's state and on ``i``.
        first_index : int
            Global index of the first hypothesis of this call (>= 0), so that a run split into
            batches draws the same hypotheses as one big batch.
        body : optional
            ``self.body(x)`` computed before (for this ``x``, on this device): the hypotheses are
            rendered from it without running the network body again. None: computed here.

        Returns
        -------
        Tensor of float32, shape (n, K, *S)
            Class probabilities, summing to 1 over axis 1, on the method's device.
        """
        n = check_positive_int(n, "n")
        first_index = check_positive_int(first_index, "first_index", minimum=0)
        self.check_input(x)
        if generator is None:
            generator = torch.Generator()
        x = x.to(self.device, torch.float32)
        with torch.no_grad():
            state = self.hypotheses(n, generator, first_index=first_index)
            if body is not None:
                return self.render_body(body, x, state, generator)
            return self.render(x, state, generator)

    def hypotheses(self, n: int, generator: torch.Generator, *, first_index: int = 0) -> State:
        """Per-hypothesis state of hypotheses ``first_index .. first_index + n - 1``.

        Draws one key from ``generator``; hypothesis ``i`` calls :meth:`draw` with ``n = 1`` on
        its own generator seeded from ``(key, i)``. Adds ``index`` (the global indices) and
        ``noise_seed`` (per-voxel noise seeds). Independent of how hypotheses are batched.
        """
        key = int(torch.randint(0, 2**62, (1,), generator=generator))
        indices = range(int(first_index), int(first_index) + int(n))
        rows = [
            self.draw(1, torch.Generator().manual_seed(hypothesis_seed(key, i, 0))) for i in indices
        ]
        state = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        state["index"] = torch.tensor(list(indices), dtype=torch.int64)
        state["noise_seed"] = torch.tensor(
            [hypothesis_seed(key, i, 1) for i in indices], dtype=torch.int64
        )
        return state

    def draw(self, n: int, generator: torch.Generator) -> State:
        """Per-hypothesis randomness: a dict of CPU tensors with leading dimension ``n``.

        Called by :meth:`hypotheses` with ``n = 1`` and a generator of that hypothesis alone;
        ``index`` is replaced by the global index there.
        """
        return {"index": torch.arange(n)}

    def render(self, x: torch.Tensor, state: State, generator: torch.Generator) -> torch.Tensor:
        """Probabilities ``(n, K, *S)`` for the hypotheses in ``state``; ``x`` is (1 or n, C, *S).

        Methods with a :meth:`body` need not override it: it is ``render_body(body(x), ...)``.
        """
        body = self.body(x)
        if body is None:
            raise NotImplementedError
        return self.render_body(body, x, state, generator)

    def body(self, x: torch.Tensor) -> Any:
        """The part of :meth:`render` that no hypothesis changes, for the input ``x``.

        A tensor or a tuple of tensors on the method's device, handed back to
        :meth:`render_body` (and to ``sample(..., body=...)``) for any batch of hypotheses of
        that input. None (the default): the method has no such part (MC dropout, the ensemble
        and TTA run a different network pass per hypothesis; softmax draws one sample).
        """
        return None

    def body_bytes(self, patch: tuple[int, ...]) -> int:
        """Bytes of :meth:`body` on one ``(1, C, *patch)`` input (0: the method has none); the
        engine's memory estimate for keeping a tile's body between sample batches."""
        return 0

    def render_body(
        self, body: Any, x: torch.Tensor, state: State, generator: torch.Generator
    ) -> torch.Tensor:
        """Probabilities ``(n, K, *S)`` of the hypotheses in ``state`` from ``body(x)``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-able description: method, sources and parameters."""
        out: dict[str, Any] = {
            "method": self.name,
            "source": list(self.source),
            "deterministic": self.deterministic,
            "class_names": self.class_names,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
        }
        if self.card is not None:
            out["model"] = self.card.name
            out["card_sha256"] = self.card.sha256
        out.update(self._params())
        return out

    def _params(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()})"

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
        return x.expand(n, *x.shape[1:]) if x.shape[0] == 1 and n != 1 else x

    def _to_dev(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)


class SoftmaxMethod(Method):
    """Softmax of the logits divided by a temperature (Guo et al. 2017); deterministic.

    The temperature is fitted on held-out data by minimising the NLL and stored in the card
    (``methods.softmax.temperature``); it calibrates confidences without changing the argmax.
    """

    name = "softmax"
    source = ("none",)
    deterministic = True
    shared_body = True

    def __init__(self, network: nn.Module, *, temperature: float = 1.0, **kw: Any) -> None:
        super().__init__(network, **kw)
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def render(self, x: torch.Tensor, state: State, generator: torch.Generator) -> torch.Tensor:
        n = len(state["index"])
        probs = torch.softmax(self.network(x) / self.temperature, dim=1)
        return probs.expand(n, *probs.shape[1:]).contiguous() if probs.shape[0] != n else probs

    def _params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}


class MCDropoutMethod(Method):
    """Monte Carlo dropout (Gal & Ghahramani 2016): dropout stays stochastic at inference.

    Everything else is in eval mode (BatchNorm uses running statistics). The ``n`` hypotheses run as
    one batch; hypothesis ``i`` draws all its dropout masks from its own generator, seeded by a
    number drawn from ``generator`` first. With channel-wise dropout (the bundled models) masks do
    not depend on the tile size, so a hypothesis is the same network on every tile.
    """

    name = "mc_dropout"
    source = ("parameter",)

    def __init__(self, network: nn.Module, *, p: float | None = None, **kw: Any) -> None:
        super().__init__(network, **kw)
        self.dropouts = dropout_modules(network)
        if not self.dropouts:
            raise ModelCardError("method: MC dropout needs a network with dropout layers")
        if p is not None:
            if not 0.0 < p < 1.0:
                raise ValueError(f"p: expected a dropout probability in (0, 1), got {p!r}")
            for m in self.dropouts:
                m.p = float(p)

    def draw(self, n: int, generator: torch.Generator) -> State:
        seeds = torch.randint(0, 2**62, (n,), generator=generator)
        return {"index": torch.arange(n), "seed": seeds}

    def render(self, x: torch.Tensor, state: State, generator: torch.Generator) -> torch.Tensor:
        n = len(state["seed"])
        gens = [torch.Generator().manual_seed(int(s)) for s in state["seed"]]
        for m in self.dropouts:
            m.generators = gens  # shared per row: modules draw in forward order
        try:
            return torch.softmax(self.network(self._rows(x, n)), dim=1)
        finally:
            for m in self.dropouts:
                m.generators = None

    def _params(self) -> dict[str, Any]:
        return {
            "p": sorted({m.p for m in self.dropouts}),
            "dropout_layers": len(self.dropouts),
            "channelwise": all(m.channelwise for m in self.dropouts),
        }


class EnsembleMethod(Method):
    """Deep ensemble (Lakshminarayanan et al. 2017) of M independently trained members.

    Sample ``i`` (the global hypothesis index, whatever the batch split) uses member ``i mod M``
    (``selection="cycle"``, no randomness: for N a multiple of M every member is used N / M
    times) or a member drawn from hypothesis ``i``'s generator (``"random"``). Each member needed runs once on the image and its output is
    shared by all its samples, so ``n`` samples cost ``min(n, M)`` passes.
    """

    name = "ensemble"
    source = ("parameter",)

    def __init__(self, network: MemberEnsemble, *, selection: str = "cycle", **kw: Any) -> None:
        if not isinstance(network, MemberEnsemble):
            raise ModelCardError("method: the ensemble method needs an ensemble network")
        if selection not in ("cycle", "random"):
            raise ValueError(f"selection: expected 'cycle' or 'random', got {selection!r}")
        super().__init__(network, **kw)
        self.selection = selection
        self.n_members = len(network.members)

    def draw(self, n: int, generator: torch.Generator) -> State:
        if self.selection == "cycle":
            return {"index": torch.arange(n)}  # member = global index mod M, set in render
        member = torch.randint(0, self.n_members, (n,), generator=generator)
        return {"index": torch.arange(n), "member": member}

    def members_of(self, state: State) -> torch.Tensor:
        """Member used by each hypothesis: global index mod M (cycle) or the drawn member."""
        if self.selection == "cycle" or "member" not in state:
            return state["index"] % self.n_members
        return state["member"]

    def render(self, x: torch.Tensor, state: State, generator: torch.Generator) -> torch.Tensor:
        member = self.members_of(state)
        n = len(member)
        out: torch.Tensor | None = None
        for m in torch.unique(member).tolist():
            rows = torch.nonzero(member == m).flatten()
            xin = x if x.shape[0] == 1 else x[self._to_dev(rows)]
            probs = torch.softmax(self.network.members[m](xin), dim=1)
            if out is None:
                out = probs.new_empty((n, *probs.shape[1:]))
            out[self._to_dev(rows)] = probs  # broadcasts a single-row output to all its rows
        assert out is not None
        return out

    def _params(self) -> dict[str, Any]:
        return {"members": self.n_members, "selection": self.selection}


class SSNMethod(Method):
    """Stochastic segmentation network (Monteiro et al. 2020): logits ~ N(mu, P P^T + diag(D)).

    A sample is ``mu + P eps_R + sqrt(D) eps_diag`` with ``eps_R ~ N(0, I_R)`` per hypothesis (drawn
    first: the same on every tile) and ``eps_diag`` per pixel. When the covariance degenerates
    (non-finite ``P`` or ``D``, or a factor that collapsed to zero) the method falls back to a
    diagonal Gaussian with the finite part of the marginal variances and warns with
    `DegenerateCovarianceWarning`.
    """

    name = "ssn"
    source = ("latent",)
    shared_body = True

    def __init__(self, network: SSNNet, **kw: Any) -> None:
        if not isinstance(network, SSNNet):
            raise ModelCardError("method: the SSN method needs an SSN network")
        super().__init__(network, **kw)
        self.rank = network.rank
        self.last_fallback = False

    def draw(self, n: int, generator: torch.Generator) -> State:
        return {"index": torch.arange(n), "eps": torch.randn((n, self.rank), generator=generator)}

    def body(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mu, factor, sqrt(diag))`` of the logits' Gaussian, the covariance checked."""
        mu, factor, diag = self.network(x)
        factor, diag = self._check_covariance(factor, diag)
        return mu, factor, diag.sqrt()

    def body_bytes(self, patch: tuple[int, ...]) -> int:
        return 4 * self.n_classes * (self.rank + 2) * int(np.prod(patch))

    def render_body(
        self, body: Any, x: torch.Tensor, state: State, generator: torch.Generator
    ) -> torch.Tensor:
        mu, factor, scale = body
        eps = self._to_dev(state["eps"])
        noise = per_hypothesis_randn(state, tuple(mu.shape[1:]))
        if mu.shape[0] == 1:
            low = torch.einsum("nr,kr...->nk...", eps, factor[0])
        else:
            low = torch.einsum("nr,nkr...->nk...", eps, factor)
        logits = mu + low + scale * self._to_dev(noise)
        return torch.softmax(logits, dim=1)

    def _check_covariance(
        self, factor: torch.Tensor, diag: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        finite_f = torch.isfinite(factor)
        finite_d = torch.isfinite(diag) & (diag > 0)
        collapsed = bool(finite_f.all()) and float(factor.abs().max()) < 1e-12
        self.last_fallback = not (bool(finite_f.all()) and bool(finite_d.all())) or collapsed
        if not self.last_fallback:
            return factor, diag
        reason = "collapsed to zero" if collapsed else "non-finite values"
        warnings.warn(
            f"SSN covariance degenerate ({reason}): sampling from the diagonal part only, "
            "without spatial correlation",
            DegenerateCovarianceWarning,
            stacklevel=5,  # _check_covariance < body < render < sample < the caller
        )
        var = torch.where(finite_d, diag, torch.zeros_like(diag))
        var = var + torch.where(finite_f, factor, torch.zeros_like(factor)).square().sum(2)
        var = var.clamp(1e-5, 1e4)
        return torch.zeros_like(factor), var

    def _params(self) -> dict[str, Any]:
        return {"rank": self.rank}


class ProbUNetMethod(Method):
    """Probabilistic U-Net (Kohl et al. 2018): ``z ~ prior(x)``, logits = fcomb(U-Net(x), z).

    The U-Net body and the prior net run once; ``n`` hypotheses cost ``n`` passes of the light
    1x1-conv head. The standard-normal ``eps`` of ``z = mu + sigma * eps`` is drawn first, so each
    hypothesis is the same prior quantile on every tile (the prior's mean and sigma are computed
    from the tile itself).
    """

    name = "prob_unet"
    source = ("latent",)
    shared_body = True

    def __init__(self, network: ProbUNet, **kw: Any) -> None:
        if not isinstance(network, ProbUNet):
            raise ModelCardError("method: the prob_unet method needs a probabilistic U-Net")
        super().__init__(network, **kw)
        self.latent_dim = network.latent_dim

    def draw(self, n: int, generator: torch.Generator) -> State:
        eps = torch.randn((n, self.latent_dim), generator=generator)
        return {"index": torch.arange(n), "eps": eps}

    def body(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(features, prior mean, prior sigma)``: the U-Net body and the prior net."""
        net: ProbUNet = self.network  # type: ignore[assignment]
        mu, log_sigma = net.prior(x)
        return net.features(x), mu, log_sigma.exp()

    def body_bytes(self, patch: tuple[int, ...]) -> int:
        net: ProbUNet = self.network  # type: ignore[assignment]
        features = int(net.fcomb[0].in_channels) - self.latent_dim
        return 4 * (features * int(np.prod(patch)) + 2 * self.latent_dim)

    def render_body(
        self, body: Any, x: torch.Tensor, state: State, generator: torch.Generator
    ) -> torch.Tensor:
        net: ProbUNet = self.network  # type: ignore[assignment]
        feats, mu, sigma = body
        z = mu + sigma * self._to_dev(state["eps"])
        return torch.softmax(net.decode(feats, z), dim=1)

    def _params(self) -> dict[str, Any]:
        return {"latent_dim": self.latent_dim}


class LaplaceMethod(Method):
    """Last-layer Laplace approximation: Gaussian posterior over the final 1x1 conv only.

    ``posterior`` holds ``weight_mean`` (K, F), ``bias_mean`` (K) and either ``scale`` (P, P),
    P = K (F + 1), a full covariance factor (covariance ``scale @ scale.T`` of ``[W | b]``
    flattened class by class; what `napari_probseg.models.laplace.posterior_from_curvature`
    builds from the tempered last-layer GGN and the evidence-chosen prior precision), or a diagonal
    ``weight_var`` (K, F) and ``bias_var`` (K). All other layers keep their MAP weights. The body
    runs once; each hypothesis draws its own head weights first (the same on every tile) and costs
    one 1x1 conv.
    """

    name = "laplace"
    source = ("parameter",)
    shared_body = True

    def __init__(
        self,
        network: nn.Module,
        *,
        posterior: dict[str, torch.Tensor],
        last_layer: str = "final_conv",
        info: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(network, **kw)
        layer = dict(network.named_modules()).get(last_layer)
        if not isinstance(layer, (nn.Conv2d, nn.Conv3d)) or set(layer.kernel_size) != {1}:
            raise ModelCardError(f"last_layer: {last_layer!r} is not a 1x1 convolution")
        self.layer = layer
        self.last_layer = last_layer
        self.posterior = {k: v.detach().float().cpu() for k, v in posterior.items()}
        k, f = layer.out_channels, layer.in_channels
        if "scale" in self.posterior:
            shape, expected = tuple(self.posterior["scale"].shape), (k * (f + 1), k * (f + 1))
        else:
            shape, expected = tuple(self.posterior["weight_var"].shape), (k, f)
        if shape != expected:
            raise ModelCardError(
                f"laplace: posterior shape {shape} does not match the last layer ({k}, {f})"
            )
        self.info = dict(info or {})

    def draw(self, n: int, generator: torch.Generator) -> State:
        p = self.posterior
        k, f = p["weight_mean"].shape
        if "scale" in p:
            eps = torch.randn((n, k * (f + 1)), generator=generator)
            delta = (eps @ p["scale"].T).reshape(n, k, f + 1)
            weight, bias = p["weight_mean"] + delta[..., :f], p["bias_mean"] + delta[..., f]
        else:
            ew = torch.randn((n, k, f), generator=generator)
            eb = torch.randn((n, k), generator=generator)
            weight = p["weight_mean"] + p["weight_var"].sqrt() * ew
            bias = p["bias_mean"] + p["bias_var"].sqrt() * eb
        return {"index": torch.arange(n), "weight": weight, "bias": bias}

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The MAP network's input to the last layer, ``(1 or n, F, *S)``."""
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
        try:
            self.network(x)
        finally:
            handle.remove()
        return captured[-1]

    def body_bytes(self, patch: tuple[int, ...]) -> int:
        return 4 * int(self.layer.in_channels) * int(np.prod(patch))

    def render_body(
        self, body: Any, x: torch.Tensor, state: State, generator: torch.Generator
    ) -> torch.Tensor:
        feat = body
        w, b = self._to_dev(state["weight"]), self._to_dev(state["bias"])
        if feat.shape[0] == 1:
            logits = torch.einsum("nkf,f...->nk...", w, feat[0])
        else:
            logits = torch.einsum("nkf,nf...->nk...", w, feat)
        logits = logits + b.reshape(*b.shape, *([1] * (feat.ndim - 2)))
        return torch.softmax(logits, dim=1)

    def _params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"last_layer": self.last_layer}
        if "temperature" in self.posterior:  # likelihood tempering of the curvature
            out["likelihood_temperature"] = float(self.posterior["temperature"])
        return {**out, **self.info}


class TTAMethod(Method):
    """Test-time augmentation (Wang et al. 2019), alone or composed over another method.

    Each hypothesis draws (first) a flip of each axis in ``flip_axes``, an in-plane rotation by
    ``k * 90`` degrees over the last two axes (when ``rot90``) and an intensity scale in
    ``[1 - intensity_scale, 1 + intensity_scale]``; Gaussian noise of std ``noise_std`` (in
    normalized units) is added per voxel. The network output is mapped back by the inverse spatial
    transform, exactly. Over ``inner`` (any method), the inner per-hypothesis randomness is drawn
    right after the transforms; sources are ``("input", *inner.source)``. The transforms of the last
    call are recorded in ``describe()["last_transforms"]``.
    """

    source = ("input",)

    def __init__(
        self,
        inner: Method,
        *,
        flip_axes: tuple[int, ...] | list[int] | None = None,
        rot90: bool = True,
        intensity_scale: float = 0.1,
        noise_std: float = 0.05,
    ) -> None:
        super().__init__(
            inner.network,
            class_names=inner.class_names,
            spatial_dims=inner.spatial_dims,
            in_channels=inner.in_channels,
            card=inner.card,
        )
        self.inner = inner
        axes = tuple(range(self.spatial_dims)) if flip_axes is None else tuple(flip_axes)
        if any(a not in range(self.spatial_dims) for a in axes):
            raise ValueError(
                f"flip_axes: expected spatial axes in [0, {self.spatial_dims}), got {axes}"
            )
        if not 0 <= intensity_scale < 1:
            raise ValueError(f"intensity_scale: expected in [0, 1), got {intensity_scale!r}")
        if noise_std < 0:
            raise ValueError(f"noise_std: expected >= 0, got {noise_std!r}")
        self.flip_axes = axes
        self.rot90 = bool(rot90)
        self.intensity_scale = float(intensity_scale)
        self.noise_std = float(noise_std)
        plain = inner.source == ("none",)
        self.name = "tta" if plain else f"tta+{inner.name}"
        self.source = ("input",) if plain else ("input", *inner.source)
        self.last_transforms: list[dict[str, Any]] = []

    def to(self, device: str | torch.device) -> Method:
        self.inner.to(device)
        self.device = self.inner.device
        return self

    def draw(self, n: int, generator: torch.Generator) -> State:
        flips = torch.rand((n, len(self.flip_axes)), generator=generator) < 0.5
        rots = torch.randint(0, 4 if self.rot90 else 1, (n,), generator=generator)
        a = self.intensity_scale
        scale = 1 - a + 2 * a * torch.rand((n,), generator=generator)
        inner = self.inner.draw(n, generator)
        inner.pop("index", None)  # the inner method sees the global index of the hypothesis
        state = {"index": torch.arange(n), "flips": flips, "rot": rots, "scale": scale}
        state.update({f"inner.{k}": v for k, v in inner.items()})
        return state

    def _forward_t(self, x: torch.Tensor, flips: tuple[bool, ...], k: int) -> torch.Tensor:
        dims = [2 + a for a, f in zip(self.flip_axes, flips) if f]
        if dims:
            x = torch.flip(x, dims)
        return torch.rot90(x, k, dims=(-2, -1)) if k else x

    def _inverse_t(self, y: torch.Tensor, flips: tuple[bool, ...], k: int) -> torch.Tensor:
        if k:
            y = torch.rot90(y, -k, dims=(-2, -1))
        dims = [2 + a for a, f in zip(self.flip_axes, flips) if f]
        return torch.flip(y, dims) if dims else y

    def render(self, x: torch.Tensor, state: State, generator: torch.Generator) -> torch.Tensor:
        n = len(state["index"])
        inner_state = {k[6:]: v for k, v in state.items() if k.startswith("inner.")}
        inner_state["index"] = state["index"]
        inner_state["noise_seed"] = state["noise_seed"] ^ 0x5DEECE66D  # own noise stream
        keys = [(tuple(f.tolist()), int(r)) for f, r in zip(state["flips"], state["rot"])]
        out: torch.Tensor | None = None
        for key in sorted(set(keys)):
            rows = torch.tensor([i for i, kk in enumerate(keys) if kk == key])
            rows_dev = self._to_dev(rows)
            xt = self._forward_t(x if x.shape[0] == 1 else x[rows_dev], *key)
            xb = self._rows(xt, len(rows))
            s = self._to_dev(state["scale"][rows]).reshape(-1, *([1] * (xb.ndim - 1)))
            xb = xb * s.to(xb.dtype)
            if self.noise_std > 0:
                noise = per_hypothesis_randn(_subset(state, rows), tuple(xb.shape[1:]))
                xb = xb + self.noise_std * self._to_dev(noise).to(xb.dtype)
            probs = self._inverse_t(
                self.inner.render(xb, _subset(inner_state, rows), generator), *key
            )
            if out is None:
                out = probs.new_empty((n, *probs.shape[1:]))
            out[rows_dev] = probs
        self.last_transforms = [
            {
                "flip_axes": [a for a, f in zip(self.flip_axes, keys[i][0]) if f],
                "rot90_k": keys[i][1],
                "scale": round(float(state["scale"][i]), 6),
            }
            for i in range(n)
        ]
        assert out is not None
        return out

    def _params(self) -> dict[str, Any]:
        params = {
            "flip_axes": list(self.flip_axes),
            "rot90": self.rot90,
            "rot90_axes": [self.spatial_dims - 2, self.spatial_dims - 1],
            "intensity_scale": self.intensity_scale,
            "noise_std": self.noise_std,
            "n_last_call": len(self.last_transforms),
            "last_transforms": self.last_transforms,
        }
        if self.inner.source != ("none",):
            params["inner"] = self.inner.describe()
        elif isinstance(self.inner, SoftmaxMethod):
            params["temperature"] = self.inner.temperature
        return params


# all distinct (flip, rotation) combinations, for tests and exhaustive TTA
def all_transforms(n_flip_axes: int, rot90: bool = True) -> list[tuple[tuple[bool, ...], int]]:
    """All ``(flips, k)`` combinations of `TTAMethod` (2 ** n_flip_axes * 4 of them)."""
    flips = list(itertools.product((False, True), repeat=n_flip_axes))
    return [(f, k) for f in flips for k in (range(4) if rot90 else [0])]
