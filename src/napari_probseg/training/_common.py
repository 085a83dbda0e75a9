"""Shared training utilities: synthetic multi-rater data, losses per wrapper, held-out evaluation,
temperature fitting and writing cards + safetensors.

Training samples one random rater per image crop at every step, so the models see the raters'
disagreement as label noise (dropout/ensemble/softmax) or learn it as a distribution (SSN,
probabilistic U-Net).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from napari_probseg.data.synthetic import make_lesions
from napari_probseg.engine import normalize
from napari_probseg.models.cards import ModelCard, file_sha256
from napari_probseg.models.methods import Method
from napari_probseg.models.networks import MemberEnsemble, ProbUNet, SSNNet

__all__ = [
    "INTENSITY_LEVELS",
    "REFERENCE_LEVELS",
    "Dataset",
    "evaluate_method",
    "fit_temperature",
    "ged16",
    "image_scores",
    "intensity_quantiles",
    "lesion_dataset",
    "mean_mutual_information",
    "reference_entry",
    "row_verdict",
    "save_model",
    "score_table",
    "train_network",
]


#: Quantile levels recorded in a card's ``training_distribution`` and ``reference``.
INTENSITY_LEVELS = (0.01, 0.05, 0.5, 0.95, 0.99)
REFERENCE_LEVELS = (0.05, 0.5, 0.95, 0.99)


def _level_key(q: float) -> str:
    return f"{q:g}"


def intensity_quantiles(x: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Quantiles (`INTENSITY_LEVELS`) of normalised intensities pooled over images and channels."""
    arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    values = np.quantile(arr.astype(np.float64).ravel(), INTENSITY_LEVELS)
    return {_level_key(q): round(float(v), 5) for q, v in zip(INTENSITY_LEVELS, values)}


def score_table(summary: dict[str, Any]) -> dict[str, float | None]:
    """Image-level scores of an engine summary keyed as a card's ``reference`` names them:
    ``"<map>/<aggregation>"`` for every score and ``"structure/<measure>"`` for every structure
    measure (None where the summary has no value)."""
    out: dict[str, float | None] = {}
    for score in summary["scores"]:
        out[f"{score['map']}/{score['aggregation']}"] = score["value"]
    for entry in summary.get("structure", []):
        out[f"structure/{entry['measure']}"] = entry["value"]
    return out


def row_verdict(
    row: dict[str, Any],
    method: str,
    source: str | tuple[str, ...],
    reference: Any,
) -> dict[str, Any]:
    """The summary's own verdict for one image, from a stored row of :func:`image_scores`
    (its score table and domain check): the product's rule, not a re-implementation, so that
    stored rows stay valid when a card's reference or verdict choice changes."""
    from napari_probseg.core.summary import verdict

    scores, structure = [], []
    for key, value in row["scores"].items():
        map_name, agg = key.split("/", 1)
        if map_name == "structure":
            structure.append({"measure": agg, "value": value})
        else:
            scores.append({"key": key, "map": map_name, "aggregation": agg, "value": value})
    summary = {
        "method": method,
        "source": list(source.split("+") if isinstance(source, str) else source),
        "scores": scores,
        "structure": structure,
        "n_samples": None,
    }
    return verdict(summary, reference=reference, domain=row.get("domain"))


def image_scores(
    method: Method,
    images: Any,
    *,
    n_samples: int = 16,
    seed: int = 0,
    keep: Callable[[Any], Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the engine (``run_prediction`` + ``summarize``) on each raw image; return per image
    ``{"scores": score_table(summary), "domain": provenance["domain"], "extra": keep(result)}``.

    Image ``j`` runs with seed ``seed + j``: with one seed for every image all images would share
    one set of dropout masks / latents, and a reference built from them would miss the sampling
    noise of a user's run (a too-narrow in-domain reference flags ordinary images)."""
    from napari_probseg.engine import run_prediction
    from napari_probseg.engine._summary import summarize

    rows = []
    for j, img in enumerate(images):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the domain note on every run
            result = run_prediction(img, method, n_samples=n_samples, seed=seed + j, device="cpu")
        rows.append(
            {
                "scores": score_table(summarize(result)),
                "domain": result.provenance.get("domain"),
                "extra": keep(result) if keep is not None else None,
            }
        )
    return rows


def reference_entry(tables: list[dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """The ``reference["methods"][<method>]`` entry of a card from per-image score tables:
    per score the number of images with a value and the quantiles `REFERENCE_LEVELS`."""
    keys = sorted({k for t in tables for k in t})
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = np.array([t[key] for t in tables if t.get(key) is not None], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        qs = np.quantile(values, REFERENCE_LEVELS)
        out[key] = {
            "n": int(values.size),
            "quantiles": {_level_key(q): float(f"{v:.6g}") for q, v in zip(REFERENCE_LEVELS, qs)},
        }
    return out


@dataclass
class Dataset:
    """Normalized images ``x`` (n, 1, *S) float32 and rater masks ``raters`` (n, R, *S) int64."""

    x: torch.Tensor
    raters: torch.Tensor

    @property
    def majority(self) -> torch.Tensor:
        """Strict-majority mask of the raters, (n, *S) int64 (2 of 4 is not a majority)."""
        return (self.raters.float().mean(1) > 0.5).long()


def lesion_dataset(
    n: int,
    *,
    ndim: int,
    seed: int,
    normalization: dict[str, Any],
    shift: bool | float = False,
    shape: tuple[int, ...] | None = None,
) -> Dataset:
    """Synthetic lesions (``napari_probseg.data.synthetic.make_lesions``), normalized as the card."""
    data = make_lesions(n, ndim=ndim, shape=shape, n_raters=4, shift=shift, seed=seed)
    x = np.stack([normalize(img[None], normalization) for img in data.images])
    return Dataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(data.raters).long())


def _crops(
    ds: Dataset, batch: int, patch: tuple[int, ...], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crops with one random rater each; half of the crops are centred on a lesion pixel.

    Returns the images, the chosen rater's masks and the union of every rater's mask (the region
    of interest of the SSN covariance penalty), all cropped alike.
    """
    xs, ys, us = [], [], []
    spatial = ds.x.shape[2:]
    for _ in range(batch):
        i = int(rng.integers(len(ds.x)))
        r = int(rng.integers(ds.raters.shape[1]))
        y = ds.raters[i, r]
        fg = torch.nonzero(ds.raters[i].amax(0))
        if len(fg) and rng.random() < 0.5:
            centre = fg[int(rng.integers(len(fg)))].numpy()
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, spatial)]
        else:
            start = [int(rng.integers(s - p + 1)) for p, s in zip(patch, spatial)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
        xs.append(ds.x[i][(slice(None), *sl)])
        ys.append(y[sl])
        us.append(ds.raters[i].amax(0)[sl])
    return torch.stack(xs), torch.stack(ys), torch.stack(us)


def roi_outside(union: torch.Tensor, margin: int) -> torch.Tensor:
    """1 where no rater marked anything within ``margin`` pixels (chessboard distance), else 0.

    ``union`` is the raters' union mask ``(B, *S)``; returns float ``(B, *S)``.
    """
    pool = {2: F.max_pool2d, 3: F.max_pool3d}[union.ndim - 1]
    near = pool(union[:, None].float(), 2 * margin + 1, stride=1, padding=margin)[:, 0]
    return 1.0 - near


def _loss(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    union: torch.Tensor | None = None,
    ssn_samples: int = 16,
    ssn_roi_weight: float = 0.0,
    ssn_roi_margin: int = 8,
    kl_weight: float = 1.0,
) -> torch.Tensor:
    """Training loss of each wrapper kind (per pixel).

    ``ssn_samples`` is the number M of MC samples of the SSN log-likelihood (with few pixels'
    worth of log-likelihood summed per crop, logsumexp over M approaches a best-of-M loss, which
    rewards too much spread for large M); ``kl_weight`` is beta of the probabilistic U-Net ELBO.

    ``ssn_roi_weight`` > 0 adds the SSN region-of-interest penalty: the mean logit variance
    ``sum_r P_r^2 + D`` over the pixels farther than ``ssn_roi_margin`` pixels from every rater's
    mask (``union``), times the weight. Monteiro et al. (2020) mask the covariance outside the
    brain; with no such mask here the penalty confines the covariance to where raters could
    disagree (without it the low-rank factor spread into the background and drew whole-image
    samples).
    """
    if isinstance(net, SSNNet):
        # Monteiro et al. 2020: MC estimate of log p(y|x) = log mean_m p(y | eta_m), eta_m
        # reparameterized from the low-rank Gaussian.
        mu, factor, diag = net(x)
        b, k = mu.shape[:2]
        m = ssn_samples
        eps = torch.randn(m, b, factor.shape[2], device=x.device)
        low = torch.einsum("mbr,bkr...->mbk...", eps, factor)
        logits = mu + low + diag.sqrt() * torch.randn(m, *mu.shape, device=x.device)
        ll = (
            -F.cross_entropy(
                logits.reshape(m * b, k, *mu.shape[2:]),
                y.repeat(m, *([1] * (y.ndim - 1))),
                reduction="none",
            )
            .reshape(m, b, -1)
            .sum(-1)
        )
        n_pix = y[0].numel()
        nll = -(torch.logsumexp(ll, 0) - math.log(m)).mean() / n_pix
        if ssn_roi_weight > 0 and union is not None:
            outside = roi_outside(union, ssn_roi_margin)[:, None]  # (B, 1, *S)
            variance = factor.square().sum(2) + diag  # (B, K, *S) marginal logit variance
            penalty = (variance * outside).sum() / (outside.sum() * k).clamp_min(1.0)
            nll = nll + ssn_roi_weight * penalty
        return nll
    if isinstance(net, ProbUNet):
        # Kohl et al. 2018: ELBO with the posterior net seeing the rater's mask (beta = 1).
        onehot = F.one_hot(y, net.n_classes).movedim(-1, 1).float()
        mu_q, ls_q = net.posterior(torch.cat([x, onehot], 1))
        mu_p, ls_p = net.prior(x)
        z = mu_q + ls_q.exp() * torch.randn_like(mu_q)
        ce = F.cross_entropy(net.decode(net.features(x), z), y)
        kl = ls_p - ls_q + (ls_q.exp() ** 2 + (mu_q - mu_p) ** 2) / (2 * ls_p.exp() ** 2) - 0.5
        return ce + kl_weight * kl.sum(1).mean() / y[0].numel()
    return F.cross_entropy(net(x), y)


def train_network(
    net: nn.Module,
    ds: Dataset,
    *,
    steps: int,
    batch: int,
    patch: tuple[int, ...],
    seed: int,
    lr: float = 3e-3,
    loss_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    label: str = "",
) -> dict[str, Any]:
    """Train ``net`` (Adam, cosine decay) on random crops with a random rater each; seeded."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    net.train()
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        x, y, union = _crops(ds, batch, patch, rng)
        loss = _loss(net, x, y, union=union, **(loss_options or {}))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 5) == 0:
            log(
                f"  {label} step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    net.eval()
    return {
        "steps": steps,
        "batch": batch,
        "patch": list(patch),
        "lr": lr,
        "seed": seed,
        **({"loss_options": dict(loss_options)} if loss_options else {}),
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def ged16(samples: np.ndarray, raters: np.ndarray) -> float:
    """GED^2 with d = 1 - IoU, self-pairs included (``napari_probseg.core.observer.ged``)."""
    from napari_probseg.core.observer import ged

    return float(ged(samples, raters, n_samples=16, n_classes=2).ged)


def mean_mutual_information(probs: torch.Tensor) -> float:
    """Mean over pixels of MI = H[E p] - E H[p] (nats) of samples (N, K, *S)."""

    def h(p: torch.Tensor) -> torch.Tensor:
        return -(p * torch.log(p.clamp_min(1e-12))).sum(1)

    mean = probs.mean(0, keepdim=True)
    mi = h(mean)[0] - h(probs).mean(0)
    return float(mi.clamp_min(0).mean())


@torch.no_grad()
def evaluate_method(
    method: Method, ds: Dataset, *, n_samples: int = 16, seed: int = 0
) -> dict[str, float]:
    """Held-out Dice of the consensus (argmax of the mean) vs the raters' strict majority, GED16 vs
    the four raters, and the mean mutual information; means over the images."""
    dice, geds, mis = [], [], []
    maj = ds.majority
    for i in range(len(ds.x)):
        g = torch.Generator().manual_seed(seed + i)
        n = 1 if method.deterministic else n_samples
        probs = method.sample(ds.x[i : i + 1], n, generator=g).cpu()
        cons = probs.mean(0).argmax(0)
        inter = float(((cons == 1) & (maj[i] == 1)).sum())
        denom = float((cons == 1).sum() + (maj[i] == 1).sum())
        dice.append(1.0 if denom == 0 else 2 * inter / denom)
        masks = probs.argmax(1).numpy().astype(np.uint8)
        if n < n_samples:
            masks = np.repeat(masks, n_samples // n, axis=0)
        geds.append(ged16(masks, ds.raters[i].numpy().astype(np.uint8)))
        mis.append(mean_mutual_information(probs))
    return {
        "dice_consensus_vs_majority": float(np.mean(dice)),
        "ged16": float(np.mean(geds)),
        "mean_mutual_information": float(np.mean(mis)),
        "n_images": len(ds.x),
        "n_samples": n_samples,
    }


@torch.no_grad()
def fit_temperature(net: nn.Module, ds: Dataset, *, targets: str = "raters") -> float:
    """Temperature minimising the held-out NLL of softmax(logits / T) against every rater's mask.

    The package's one temperature fit (:func:`napari_probseg.core.calibration.fit_temperature`,
    L-BFGS on log T) on the logits repeated once per rater, so every rater's mask weighs the same.
    """
    from napari_probseg.core.calibration import fit_temperature as core_fit_temperature

    net.eval()
    logits = torch.cat([net(ds.x[i : i + 1]) for i in range(len(ds.x))])  # (B, K, *S)
    n_raters = ds.raters.shape[1]
    # (B, R, *S) rater masks -> (R * B, *S) beside R copies of the logits
    stacked = torch.cat([ds.raters[:, r] for r in range(n_raters)])
    fit = core_fit_temperature(logits.repeat(n_raters, *([1] * (logits.ndim - 1))), stacked)
    return fit.temperature


def save_model(card: ModelCard, net: nn.Module, folder: Path) -> ModelCard:
    """Write ``net``'s weights as safetensors next to the card, record their sha256, save the card."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    wpath = folder / card.weights["path"]
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(wpath), metadata={"model": card.name})
    card.weights["sha256"] = file_sha256(wpath)
    card.save(folder / f"{card.name}.json")
    return card


def member_nets(net: nn.Module) -> list[nn.Module]:
    """The members of an ensemble (trained one after the other), or ``[net]``."""
    return list(net.members) if isinstance(net, MemberEnsemble) else [net]
