"""Sampling methods on tiny random-init models built from tiny cards (2D and 3D)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from napari_probseg.models import (
    DegenerateCovarianceWarning,
    ModelCard,
    build_network,
    load_method,
)
from napari_probseg.models.laplace import fit_last_layer_ggn, save_curvature
from napari_probseg.models.methods import (
    EnsembleMethod,
    LaplaceMethod,
    MCDropoutMethod,
    SoftmaxMethod,
    SSNMethod,
    TTAMethod,
    all_transforms,
)
from napari_probseg.models.networks import MemberEnsemble, SSNNet, convert_dropout

TINY = [4, 4, 4, 4, 4, 4]
EXPECTED_SOURCE = {
    "softmax": ("none",),
    "mc_dropout": ("parameter",),
    "tta": ("input",),
    "laplace": ("parameter",),
    "ensemble": ("parameter",),
    "ssn": ("latent",),
    "prob_unet": ("latent",),
    "tta+mc_dropout": ("input", "parameter"),
    "tta+laplace": ("input", "parameter"),
    "tta+ensemble": ("input", "parameter"),
    "tta+ssn": ("input", "latent"),
    "tta+prob_unet": ("input", "latent"),
}
WRAPPER_METHODS = {
    "plain": {"softmax": {"temperature": 1.5}, "mc_dropout": {}, "tta": {}, "laplace": {}},
    "ensemble": {"ensemble": {}, "tta": {}},
    "ssn": {"ssn": {}, "tta": {}},
    "prob_unet": {"prob_unet": {}, "tta": {}},
}
EXTRA = {
    "plain": {},
    "ensemble": {"members": 3},
    "ssn": {"rank": 3},
    "prob_unet": {"latent_dim": 2, "encoder_channels": [4, 4]},
}


def make_card(
    tmp_path: Path,
    wrapper: str = "plain",
    dims: int = 2,
    *,
    seed: int = 0,
    name: str | None = None,
    n_classes: int = 2,
) -> ModelCard:
    """Write a tiny random-init model (card + safetensors, Laplace curvature) into ``tmp_path``."""
    name = name or f"tiny-{wrapper}-{dims}d"
    methods = {k: dict(v) for k, v in WRAPPER_METHODS[wrapper].items()}
    if "laplace" in methods:
        methods["laplace"] = {"curvature": f"{name}.curv.safetensors", "prior_precision": 1.0}
    card = ModelCard(
        name=name,
        architecture={
            "wrapper": wrapper,
            "network": "BasicUNet",
            "args": {"features": TINY, "dropout": 0.3, "norm": "batch"},
            "dropout_mode": "channel",
            **EXTRA[wrapper],
        },
        weights={"path": f"{name}.safetensors", "format": "safetensors"},
        classes=["background", *[f"c{i}" for i in range(1, n_classes)]],
        in_channels=1,
        spatial_dims=dims,
        normalization={"kind": "zscore"},
        patch_size=[16] * dims,
        methods=methods,
        default_method=next(iter(methods)),
    )
    torch.manual_seed(seed)
    net = build_network(card).eval()
    save_file(net.state_dict(), str(tmp_path / card.weights["path"]))
    if "laplace" in methods:
        curv = fit_last_layer_ggn(net, [(torch.randn(2, 1, *([16] * dims)), None)])
        curv["temperature"] = torch.tensor(1.0)
        save_curvature(tmp_path / methods["laplace"]["curvature"], curv)
    card.save(tmp_path / f"{name}.json")
    return card


def _all_methods():
    for dims in (2, 3):
        for wrapper, methods in WRAPPER_METHODS.items():
            names = [m for m in methods if m != "tta" or wrapper == "plain"]
            names += [f"tta+{m}" for m in methods if m not in ("tta", "softmax")]
            for m in names:
                yield dims, wrapper, m


@pytest.mark.parametrize(("dims", "wrapper", "method"), list(_all_methods()))
def test_every_method_returns_probability_samples(tmp_path, dims, wrapper, method):
    card = make_card(tmp_path, wrapper, dims)
    m = load_method(card.path, method)
    assert m.name == method and m.source == EXPECTED_SOURCE[method]
    assert m.deterministic == (method == "softmax")
    shape = (16,) * dims
    x = torch.randn(1, 1, *shape)
    p = m.sample(x, 3, generator=torch.Generator().manual_seed(1))
    assert p.shape == (3, 2, *shape) and p.dtype == torch.float32
    assert torch.isfinite(p).all() and (p >= 0).all()
    torch.testing.assert_close(p.sum(1), torch.ones(3, *shape), atol=1e-5, rtol=0)
    # same seed -> identical samples (CPU)
    q = m.sample(x, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(p, q, atol=0, rtol=0)
    d = m.describe()
    assert d["method"] == method and tuple(d["source"]) == EXPECTED_SOURCE[method]
    assert d["model"] == card.name and len(d["card_sha256"]) == 64


def test_mc_dropout_samples_differ_softmax_is_deterministic(tmp_path):
    card = make_card(tmp_path)
    x = torch.randn(1, 1, 16, 16)
    mc = load_method(card.path, "mc_dropout")
    p = mc.sample(x, 4, generator=torch.Generator().manual_seed(0))
    assert all(not torch.allclose(p[0], p[i]) for i in range(1, 4))
    other = mc.sample(x, 4, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(p, other)
    sm = load_method(card.path, "softmax")
    a = sm.sample(x, 3, generator=torch.Generator().manual_seed(0))
    b = sm.sample(x, 1, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b.expand_as(a), atol=0, rtol=0)
    # temperature 1.5 flattens the plain softmax
    logits = sm.network(x)
    torch.testing.assert_close(b[0], torch.softmax(logits / 1.5, 1)[0])


def test_mc_dropout_keeps_batchnorm_in_eval(tmp_path):
    card = make_card(tmp_path)
    mc = load_method(card.path, "mc_dropout")
    bn = [m for m in mc.network.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [b.running_mean.clone() for b in bn]
    mc.sample(torch.randn(1, 1, 16, 16) * 5 + 3, 4, generator=torch.Generator().manual_seed(0))
    assert bn and not any(b.training for b in bn)
    for b, r in zip(bn, before):
        torch.testing.assert_close(b.running_mean, r, atol=0, rtol=0)


# -- per-hypothesis randomness: pointwise networks make tiles exactly comparable ----------------
def _pointwise(dims: int = 2, seed: int = 0, k: int = 2) -> nn.Module:
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    drop = {2: nn.Dropout2d, 3: nn.Dropout3d}[dims]
    torch.manual_seed(seed)
    net = nn.Sequential(
        conv(1, 8, 1), nn.ReLU(), drop(0.5), conv(8, 16, 1), nn.ReLU(), conv(16, k, 1)
    )
    convert_dropout(net)
    return net.eval()


KW = {"class_names": ["bg", "fg"], "spatial_dims": 2, "in_channels": 1}


def _crop_check(method, n: int = 6) -> None:
    """Hypothesis i on a crop equals hypothesis i of the full image, cropped."""
    x = torch.randn(1, 1, 20, 24)
    full = method.sample(x, n, generator=torch.Generator().manual_seed(7))
    crop = method.sample(x[..., 3:14, 5:21], n, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(full[..., 3:14, 5:21], crop, atol=1e-6, rtol=0)


def test_mc_dropout_hypotheses_coherent_across_tiles():
    _crop_check(MCDropoutMethod(_pointwise(), **KW))


def test_ensemble_members_coherent_across_tiles():
    ens = MemberEnsemble([_pointwise(seed=s)[:-1].append(nn.Conv2d(16, 2, 1)) for s in range(3)])
    m = EnsembleMethod(ens.eval(), selection="random", **KW)
    _crop_check(m)
    state = m.hypotheses(6, torch.Generator().manual_seed(7))
    x = torch.randn(1, 1, 8, 8)
    p = m.sample(x, 6, generator=torch.Generator().manual_seed(7))
    for i, member in enumerate(m.members_of(state).tolist()):
        torch.testing.assert_close(p[i], torch.softmax(ens.members[member](x), 1)[0])
    cyc = EnsembleMethod(ens, **KW)
    assert cyc.members_of(cyc.hypotheses(7, torch.Generator())).tolist() == [0, 1, 2, 0, 1, 2, 0]
    later = cyc.hypotheses(4, torch.Generator(), first_index=5)
    assert cyc.members_of(later).tolist() == [2, 0, 1, 2]  # global index mod M


def test_laplace_varies_only_last_layer_and_is_coherent():
    net = _pointwise()
    last = net[-1]
    post = {
        "weight_mean": last.weight.detach()[:, :, 0, 0],
        "bias_mean": last.bias.detach(),
        "weight_var": torch.full((2, 16), 0.5),
        "bias_var": torch.full((2,), 0.5),
    }
    m = LaplaceMethod(net, posterior=post, last_layer="5", **KW)
    _crop_check(m)
    feats = []
    last.register_forward_pre_hook(lambda _m, inp: feats.append(inp[0]))
    x = torch.randn(1, 1, 10, 10)
    p = m.sample(x, 5, generator=torch.Generator().manual_seed(0))
    assert len(feats) == 1 and feats[0].shape[0] == 1  # body ran once, on one row
    state = m.hypotheses(5, torch.Generator().manual_seed(0))
    for i in range(5):  # each sample is the MAP body + that sample's head weights
        logits = torch.einsum("kf,fhw->khw", state["weight"][i], feats[0][0])
        logits = logits + state["bias"][i][:, None, None]
        torch.testing.assert_close(p[i], torch.softmax(logits, 0), atol=1e-6, rtol=0)
    assert not torch.allclose(p[0], p[1])
    post0 = dict(post, weight_var=torch.zeros(2, 16), bias_var=torch.zeros(2))
    zero = LaplaceMethod(net, posterior=post0, last_layer="5", **KW).sample(x, 3)
    torch.testing.assert_close(zero, torch.softmax(net(x), 1).expand(3, -1, -1, -1))


def test_tta_transforms_drawn_first_same_on_every_tile():
    m = TTAMethod(MCDropoutMethod(_pointwise(), **KW), noise_std=0.0)
    x = torch.randn(1, 1, 20, 20)
    m.sample(x, 8, generator=torch.Generator().manual_seed(3))
    first = list(m.last_transforms)
    m.sample(x[..., 2:14, 4:16], 8, generator=torch.Generator().manual_seed(3))
    assert m.last_transforms == first
    assert len({(tuple(t["flip_axes"]), t["rot90_k"]) for t in first}) > 1
    # the inner dropout seeds come right after the transforms, whatever the tile size
    s1 = m.hypotheses(8, torch.Generator().manual_seed(3))
    s2 = m.hypotheses(8, torch.Generator().manual_seed(3))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert "inner.seed" in s1
    _crop_check(TTAMethod(MCDropoutMethod(_pointwise(), **KW), noise_std=0.0, rot90=False))


@pytest.mark.parametrize("dims", [2, 3])
def test_tta_inversion_is_exact(dims):
    torch.manual_seed(0)
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims](1, 3, 1)
    kw = {"class_names": ["a", "b", "c"], "spatial_dims": dims, "in_channels": 1}
    inner = SoftmaxMethod(conv, **kw)
    tta = TTAMethod(inner, intensity_scale=0.0, noise_std=0.0)
    x = torch.randn(1, 1, *([6] * (dims - 2)), 6, 8)  # non-square plane: rot90 changes shape
    p = tta.sample(x, 32, generator=torch.Generator().manual_seed(0))
    ref = inner.sample(x, 1)
    torch.testing.assert_close(p, ref.expand_as(p), atol=1e-6, rtol=0)
    assert len({(tuple(t["flip_axes"]), t["rot90_k"]) for t in tta.last_transforms}) > 4
    # inverse(forward(x)) is x for every combination
    for flips, k in all_transforms(dims):
        y = tta._inverse_t(tta._forward_t(x, flips, k), flips, k)
        torch.testing.assert_close(y, x, atol=0, rtol=0)
    d = tta.describe()
    assert d["n_last_call"] == 32 and d["flip_axes"] == list(range(dims))


def test_tta_noise_and_scale_change_samples():
    conv = nn.Conv2d(1, 2, 1)
    tta = TTAMethod(SoftmaxMethod(conv, **KW), intensity_scale=0.2, noise_std=0.1)
    p = tta.sample(torch.randn(1, 1, 8, 8), 4, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(p[0], p[1])


# -- SSN --------------------------------------------------------------------------------------
class _ConstBody(nn.Module):
    def __init__(self, f: int = 4) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            torch.ones(x.shape[0], self.f, *x.shape[2:])
            * torch.arange(1.0, self.f + 1).reshape(1, -1, 1, 1)
            / self.f
            + 0 * x
        )


def test_ssn_mean_and_covariance_of_logits():
    torch.manual_seed(0)
    net = SSNNet(_ConstBody(), 4, 2, 3, 2).eval()
    m = SSNMethod(net, **KW)
    x = torch.zeros(1, 1, 2, 3)
    n = 4000
    p = m.sample(x, n, generator=torch.Generator().manual_seed(0)).double()
    diff = torch.log(p[:, 1]) - torch.log(p[:, 0])  # logit difference (n, 2, 3)
    mu, factor, diag = (t.double() for t in net(x))
    mu_d = mu[0, 1] - mu[0, 0]
    fac_d = factor[0, 1] - factor[0, 0]  # (R, 2, 3)
    var_d = fac_d.square().sum(0) + diag[0, 1] + diag[0, 0]
    se = (var_d / n).sqrt()
    assert ((diff.mean(0) - mu_d).abs() < 4 * se).all()
    torch.testing.assert_close(diff.var(0), var_d, rtol=0.1, atol=0)
    # the low-rank part correlates pixels: covariance of two pixels' logit differences
    cov = ((diff[:, 0, 0] - diff[:, 0, 0].mean()) * (diff[:, 1, 2] - diff[:, 1, 2].mean())).mean()
    expected = (fac_d[:, 0, 0] * fac_d[:, 1, 2]).sum()
    assert abs(float(cov - expected)) < 0.1 * float(var_d.max())


def test_ssn_degenerate_covariance_falls_back_to_diagonal_with_warning():
    torch.manual_seed(0)
    net = SSNNet(_ConstBody(), 4, 2, 3, 2).eval()
    m = SSNMethod(net, **KW)
    x = torch.zeros(1, 1, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.sample(x, 2)  # healthy: no warning
    assert not m.last_fallback
    with torch.no_grad():
        net.factor_head.weight[0, 0] = float("nan")
    with pytest.warns(DegenerateCovarianceWarning, match="non-finite"):
        p = m.sample(x, 3)
    assert m.last_fallback and torch.isfinite(p).all()
    with torch.no_grad():
        net.factor_head.weight.zero_()
        net.factor_head.bias.zero_()
    with pytest.warns(DegenerateCovarianceWarning, match="collapsed"):
        m.sample(x, 3)


def test_ssn_low_rank_eps_drawn_first():
    torch.manual_seed(0)
    m = SSNMethod(SSNNet(_ConstBody(), 4, 2, 3, 2).eval(), **KW)
    g = torch.Generator().manual_seed(11)
    eps = torch.randn(5, 3, generator=g)
    torch.testing.assert_close(m.draw(5, torch.Generator().manual_seed(11))["eps"], eps)
    # hypothesis i's eps comes from its own generator: a slice of a larger draw
    full = m.hypotheses(6, torch.Generator().manual_seed(11))["eps"]
    part = m.hypotheses(3, torch.Generator().manual_seed(11), first_index=2)["eps"]
    torch.testing.assert_close(full[2:5], part, atol=0, rtol=0)


# -- probabilistic U-Net ----------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
def test_prob_unet_runs_body_and_prior_once(tmp_path, dims):
    card = make_card(tmp_path, "prob_unet", dims)
    m = load_method(card.path, "prob_unet")
    calls = {"body": 0, "prior": 0, "posterior": 0, "fcomb": 0}
    for name in calls:
        getattr(m.network, name).register_forward_hook(
            lambda *_a, _n=name: calls.__setitem__(_n, calls[_n] + 1)
        )
    p = m.sample(torch.randn(1, 1, *([16] * dims)), 8, generator=torch.Generator().manual_seed(0))
    assert calls == {"body": 1, "prior": 1, "posterior": 0, "fcomb": 1}  # head batched over N
    assert p.shape == (8, 2, *([16] * dims))
    assert not torch.allclose(p[0], p[1])
    eps = m.draw(8, torch.Generator().manual_seed(0))["eps"]
    torch.testing.assert_close(eps, torch.randn(8, 2, generator=torch.Generator().manual_seed(0)))
    assert m.hypotheses(8, torch.Generator().manual_seed(0))["eps"].shape == (8, 2)


def test_multiclass_and_batched_generator_sequence(tmp_path):
    card = make_card(tmp_path, "ssn", 2, n_classes=3)
    m = load_method(card.path)
    g = torch.Generator().manual_seed(0)
    a = m.sample(torch.randn(1, 1, 16, 16), 2, generator=g)
    b = m.sample(torch.randn(1, 1, 16, 16), 2, generator=g)  # generator advanced: new hypotheses
    assert a.shape == (2, 3, 16, 16) and not torch.allclose(a, b)
    assert np.allclose(a.sum(1).numpy(), 1, atol=1e-5)


def test_ssn_starts_close_to_a_deterministic_network():
    # Regression: unit-scale covariance at init drowned the mean (bundled SSN had Dice 0.2).
    torch.manual_seed(0)
    net = SSNNet(_ConstBody(8), 8, 2, 10, 2).eval()
    with torch.no_grad():
        _mu, factor, diag = net(torch.zeros(1, 1, 4, 4))
    marginal_var = factor.square().sum(2) + diag
    assert float(marginal_var.max()) < 0.2
    assert float(diag.max()) < 0.05
    assert float(factor.abs().max()) > 1e-6  # not collapsed: the low-rank part can still learn
