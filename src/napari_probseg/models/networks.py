"""Network builders: MONAI U-Nets with generator-driven dropout, the SSN head, the probabilistic U-Net
and ensembles, built from a model card's ``architecture``.

All wrappers take a *body* network that maps ``(B, C, *S)`` to features ``(B, F, *S)`` (a MONAI
``BasicUNet`` whose 1x1 ``final_conv`` is cut off, or any network whose output are features).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from napari_probseg.models.cards import ModelCard
from napari_probseg.models.errors import ModelCardError, UntrustedModelError

__all__ = [
    "LatentEncoder",
    "MemberEnsemble",
    "ProbUNet",
    "SSNNet",
    "SampledDropout",
    "build_body",
    "build_network",
    "convert_dropout",
    "dropout_modules",
]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
# factories from these packages are importable without trust=True (they run no code from the card)
_TRUSTED_FACTORY_PACKAGES = ("monai", "napari_probseg")


class SampledDropout(nn.Module):
    """Dropout whose masks can be drawn from per-hypothesis ``torch.Generator`` objects.

    In training it is ordinary dropout (global RNG). For MC dropout the method sets
    ``generators`` (one CPU generator per batch row): the mask of row ``i`` is then drawn from
    ``generators[i]``, whatever the module's train/eval mode, so a hypothesis is a function of its
    seed only. With ``channelwise=True`` (spatial dropout, whole feature maps) the mask shape
    ``(C,)`` does not depend on the tile size, so the same seed gives the same network on every tile.

    Parameters
    ----------
    p : float
        Drop probability.
    channelwise : bool
        Drop whole channels (``Dropout2d/3d`` style) instead of single elements.
    """

    def __init__(self, p: float, *, channelwise: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self.channelwise = bool(channelwise)
        self.generators: list[torch.Generator] | None = None

    def extra_repr(self) -> str:
        return f"p={self.p}, channelwise={self.channelwise}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        keep = 1.0 - self.p
        if self.generators is not None:
            if len(self.generators) != x.shape[0]:
                raise RuntimeError("SampledDropout: one generator per batch row is required")
            shape = x.shape[1:2] if self.channelwise else x.shape[1:]
            masks = torch.stack(
                [torch.bernoulli(torch.full(shape, keep), generator=g) for g in self.generators]
            ).to(device=x.device, dtype=x.dtype)
            masks = masks.reshape(masks.shape + (1,) * (x.ndim - masks.ndim))
            return x * masks / keep
        if not self.training:
            return x
        if self.channelwise:
            mask = torch.bernoulli(torch.full(x.shape[:2], keep, device=x.device, dtype=x.dtype))
            return x * mask.reshape(mask.shape + (1,) * (x.ndim - 2)) / keep
        return F.dropout(x, self.p, training=True)


def convert_dropout(net: nn.Module, *, mode: str | None = None) -> list[SampledDropout]:
    """Replace every torch dropout module of ``net`` by a `SampledDropout`, in place.

    Parameters
    ----------
    net : nn.Module
    mode : {"channel", "element", None}
        Force channel-wise or element-wise masks; ``None`` keeps each module's kind
        (``Dropout2d/3d`` are channel-wise, ``Dropout`` element-wise).

    Returns
    -------
    list of SampledDropout
        All sampled-dropout modules of ``net`` in registration (= forward, for U-Nets) order.
    """
    if mode not in (None, "channel", "element"):
        raise ValueError(f"mode: expected 'channel', 'element' or None, got {mode!r}")
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.dropout._DropoutNd) and child.p > 0:
                chan = isinstance(child, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d))
                if mode is not None:
                    chan = mode == "channel"
                setattr(parent, name, SampledDropout(child.p, channelwise=chan))
            elif isinstance(child, SampledDropout) and mode is not None:
                child.channelwise = mode == "channel"
    return dropout_modules(net)


def dropout_modules(net: nn.Module) -> list[SampledDropout]:
    """Return the `SampledDropout` modules of ``net`` in registration order."""
    return [m for m in net.modules() if isinstance(m, SampledDropout)]


def _import_factory(spec: str, *, trust: bool) -> Any:
    module_name, _, attr = spec.partition(":")
    if module_name.split(".")[0] not in _TRUSTED_FACTORY_PACKAGES and not trust:
        raise UntrustedModelError(
            f"architecture.factory: {spec!r} would import and run code from module "
            f"{module_name!r}, which is neither MONAI nor napari-probseg; pass trust=True if you "
            "trust this card"
        )
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ModelCardError(f"architecture.factory: cannot import {spec!r}: {exc}") from exc
    return obj


def build_body(
    card: ModelCard, *, out_channels: int | None = None, trust: bool = False
) -> nn.Module:
    """Build the card's network (MONAI name or factory) with dropout converted to `SampledDropout`.

    ``spatial_dims``, ``in_channels`` and ``out_channels`` are filled in from the card when the
    constructor takes them and the card's ``args`` do not set them.
    """
    arch = card.architecture
    args = dict(arch.get("args", {}))
    if "network" in arch:
        import monai.networks.nets as nets

        name = str(arch["network"])
        ctor = getattr(nets, name, None)
        if ctor is None or not callable(ctor):
            raise ModelCardError(f"architecture.network: {name!r} is not a MONAI network")
    else:
        ctor = _import_factory(str(arch["factory"]), trust=trust)
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        params = {}
    defaults = {
        "spatial_dims": card.spatial_dims,
        "in_channels": card.in_channels,
        "out_channels": out_channels if out_channels is not None else card.n_classes,
    }
    for key, value in defaults.items():
        if key in params and key not in args:
            args[key] = value
    for key in ("features", "channels", "strides"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    try:
        net = ctor(**args)
    except TypeError as exc:
        raise ModelCardError(f"architecture.args: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ModelCardError("architecture: the factory did not return a torch.nn.Module")
    convert_dropout(net, mode=arch.get("dropout_mode"))
    return net


def _cut_feature_layer(body: nn.Module, card: ModelCard) -> tuple[nn.Module, int]:
    """Replace the body's 1x1 output conv by Identity; return the body and its feature channels."""
    layer = card.architecture.get("feature_layer", "final_conv")
    conv = getattr(body, layer, None) if layer else None
    if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
        setattr(body, layer, nn.Identity())
        return body, int(conv.in_channels)
    channels = card.architecture.get("feature_channels")
    if channels is None:
        raise ModelCardError(
            f"architecture.feature_layer: network has no conv {layer!r} to cut off; set "
            "'feature_channels' to use the network's output as features"
        )
    return body, int(channels)


class SSNNet(nn.Module):
    """Stochastic segmentation network head (Monteiro et al. 2020) on a feature body.

    The logits of all pixels and classes follow a low-rank multivariate normal
    ``N(mu, P P^T + diag(D))``; ``forward`` returns its parameters.

    Returns of ``forward``: ``mu`` (B, K, *S), ``factor`` P (B, K, R, *S), ``diag`` D (B, K, *S) > 0.
    """

    def __init__(
        self, body: nn.Module, feature_channels: int, n_classes: int, rank: int, spatial_dims: int
    ) -> None:
        super().__init__()
        conv = _CONV[spatial_dims]
        self.body = body
        self.rank = int(rank)
        self.n_classes = int(n_classes)
        self.mean_head = conv(feature_channels, n_classes, 1)
        self.diag_head = conv(feature_channels, n_classes, 1)
        self.factor_head = conv(feature_channels, n_classes * rank, 1)
        # Start close to a deterministic U-Net (small low-rank factor, diagonal variance ~0.02):
        # with unit-scale noise at init the MC log-likelihood is dominated by the noise and the
        # mean is learned very slowly (the 48-step demo models had Dice 0.2).
        with torch.no_grad():
            self.factor_head.weight.mul_(0.1)
            self.factor_head.bias.zero_()
            self.diag_head.weight.mul_(0.1)
            self.diag_head.bias.fill_(-4.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(x)
        mu = self.mean_head(h)
        diag = F.softplus(self.diag_head(h)) + 1e-5
        factor = self.factor_head(h)
        factor = factor.reshape(h.shape[0], self.n_classes, self.rank, *h.shape[2:])
        return mu, factor, diag


class LatentEncoder(nn.Module):
    """Convolutional encoder to a diagonal Gaussian ``(mu, log_sigma)`` of size ``latent_dim``.

    Used as the prior net (input: image) and posterior net (input: image + one-hot mask) of the
    probabilistic U-Net.
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        spatial_dims: int,
        channels: Sequence[int] = (16, 32, 64, 64),
    ) -> None:
        super().__init__()
        conv = _CONV[spatial_dims]
        pool = {2: nn.AvgPool2d, 3: nn.AvgPool3d}[spatial_dims]
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            if i:
                layers.append(pool(2, ceil_mode=True))
            layers += [conv(c_in, c, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = conv(c_in, 2 * latent_dim, 1)
        self.latent_dim = int(latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        h = h.mean(dim=tuple(range(2, h.ndim)), keepdim=True)
        out = self.head(h).flatten(1)
        mu, log_sigma = out[:, : self.latent_dim], out[:, self.latent_dim :]
        return mu, log_sigma.clamp(-10.0, 5.0)


class ProbUNet(nn.Module):
    """Probabilistic U-Net (Kohl et al. 2018): U-Net body, prior and posterior nets and a light head
    that combines the body features with a latent sample broadcast over the image.

    ``features(x)`` runs the U-Net body once; ``decode(features, z)`` runs the three 1x1 convs of
    ``fcomb`` for a batch of latents, so N hypotheses cost one body + prior pass and N head passes.
    """

    def __init__(
        self,
        body: nn.Module,
        feature_channels: int,
        n_classes: int,
        in_channels: int,
        latent_dim: int,
        spatial_dims: int,
        encoder_channels: Sequence[int] = (16, 32, 64, 64),
    ) -> None:
        super().__init__()
        conv = _CONV[spatial_dims]
        self.body = body
        self.latent_dim = int(latent_dim)
        self.n_classes = int(n_classes)
        self.prior = LatentEncoder(in_channels, latent_dim, spatial_dims, encoder_channels)
        self.posterior = LatentEncoder(
            in_channels + n_classes, latent_dim, spatial_dims, encoder_channels
        )
        f = feature_channels
        self.fcomb = nn.Sequential(
            conv(f + latent_dim, f, 1),
            nn.ReLU(inplace=True),
            conv(f, f, 1),
            nn.ReLU(inplace=True),
            conv(f, n_classes, 1),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def decode(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, K, *S)`` from features ``(N or 1, F, *S)`` and latents ``z`` (N, L)."""
        n = z.shape[0]
        if features.shape[0] != n:
            features = features.expand(n, *features.shape[1:])
        zmap = z.reshape(*z.shape, *([1] * (features.ndim - 2))).expand(
            n, z.shape[1], *features.shape[2:]
        )
        return self.fcomb(torch.cat([features, zmap.to(features.dtype)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic logits from the prior mean (for summaries; sampling is in the method)."""
        mu, _ = self.prior(x)
        return self.decode(self.features(x), mu)


class MemberEnsemble(nn.Module):
    """M independently trained networks; ``forward`` returns member logits ``(M, B, K, *S)``."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members])


def build_network(card: ModelCard, *, trust: bool = False) -> nn.Module:
    """Build the (untrained) network a card describes.

    Returns
    -------
    nn.Module
        The plain network (``wrapper="plain"``), a `MemberEnsemble`, an `SSNNet` or a `ProbUNet`.
    """
    arch = card.architecture
    wrapper = card.wrapper
    if wrapper == "plain":
        return build_body(card, trust=trust)
    if wrapper == "ensemble":
        return MemberEnsemble([build_body(card, trust=trust) for _ in range(int(arch["members"]))])
    body, feats = _cut_feature_layer(build_body(card, trust=trust), card)
    if wrapper == "ssn":
        return SSNNet(body, feats, card.n_classes, int(arch["rank"]), card.spatial_dims)
    if wrapper == "prob_unet":
        return ProbUNet(
            body,
            feats,
            card.n_classes,
            card.in_channels,
            int(arch["latent_dim"]),
            card.spatial_dims,
            tuple(arch.get("encoder_channels", (16, 32, 64, 64))),
        )
    raise ModelCardError(f"architecture.wrapper: unknown wrapper {wrapper!r}")
