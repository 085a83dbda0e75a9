"""Measure what active learning gains over random selection, on a synthetic pool (review §6.2).

Protocol (pool-based, one run per strategy and seed):

1. A pool of synthetic multi-rater lesion images (``make_lesions``, 64x64, every image labelled by
   the 4 simulated raters with their systematic styles) whose appearance is mixed between the
   normal and the shifted domain with a severity in {0, 0.5, 1} per image (the two domains are
   paired, so a severity blends the same scene), and a held-out test set drawn the same way.
2. Start from ``initial`` random labelled images (the same for every strategy of a seed), train a
   tiny MC-dropout U-Net from scratch (``training._common.train_network``: random crops, one
   random rater per crop), report the test Dice (argmax of the deterministic prediction vs the
   raters' strict majority, ``core.introspection.dice_risk``).
   Later rounds continue training the previous round's network on the enlarged set (warm
   start, ``steps`` more steps; the usual practice, and far less noisy than retraining from a new
   initialisation each round), with the same training seed in every round and strategy (common
   random numbers: the strategies differ only in the images they chose).
3. Score ``candidates`` unlabelled images drawn at random from the pool each round (the usual
   subset trick, Beluch et al. 2018; all of them when None) with ``n_samples`` MC-dropout hypotheses through the engine's
   summary (:func:`napari_probseg.active.scores.score_result`), select ``batch`` images with the
   strategy (:func:`napari_probseg.active.selection.select_batch`), add their rater labels,
   retrain from scratch, repeat for ``rounds`` rounds.

The gain is the area under the budget curve (mean test Dice over the budget points, trapezoid
rule over the labelled-set sizes) relative to random: ``C_total = C_method - C_random``, paired by
seed, with a percentile bootstrap interval over the seeds (review eqs. 37-38: the cost of a
strategy summed over the acquisition rounds; here the "cost" is the Dice deficit, so a positive
``C_total`` means the strategy reached higher Dice for the same number of labelled images).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_STRATEGIES",
    "SimulationConfig",
    "bootstrap_interval",
    "budget_table",
    "plot_budget",
    "simulate",
]

#: name -> (selection strategy, score, aggregation); ``score`` None for random.
DEFAULT_STRATEGIES: dict[str, tuple[str, str | None, str | None]] = {
    "random": ("random", None, None),
    "entropy": ("top_k", "predictive_entropy", "mean"),
    "bald": ("top_k", "bald", "mean"),
    "bald_diverse": ("diverse", "bald", "mean"),
    "dice_disagreement": ("top_k", "dice_disagreement", "samples"),
}


@dataclass(frozen=True)
class SimulationConfig:
    """Size of the simulation (defaults: about 10 minutes on 2 CPU cores)."""

    pool_size: int = 200
    test_size: int = 80
    shape: tuple[int, int] = (64, 64)
    severities: tuple[float, ...] = (0.0, 0.0, 0.5, 1.0)
    initial: int = 8
    batch: int = 8
    rounds: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 150
    warm_start: bool = True
    train_batch: int = 8
    patch: tuple[int, int] = (48, 48)
    lr: float = 3e-3
    n_samples: int = 8
    candidates: int | None = 100
    torch_threads: int | None = 1
    features: tuple[int, ...] = (8, 8, 16, 32, 32, 8)
    dropout: float = 0.25
    data_seed: int = 7000
    strategies: tuple[str, ...] = tuple(DEFAULT_STRATEGIES)
    bootstrap: int = 2000
    extra: dict[str, Any] = field(default_factory=dict)


def _pool(n: int, cfg: SimulationConfig, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (n, H, W) float32 mixed between domains, raters (n, 4, H, W) uint8, severities."""
    from napari_probseg.data.synthetic import make_lesions

    normal = make_lesions(n, shape=cfg.shape, n_raters=4, seed=seed)
    shifted = make_lesions(n, shape=cfg.shape, n_raters=4, seed=seed, shift=True)
    rng = np.random.default_rng(seed + 1)
    severity = rng.choice(np.asarray(cfg.severities, np.float32), size=n)
    sev = severity[:, None, None]
    images = ((1.0 - sev) * normal.images + sev * shifted.images).astype(np.float32)
    return images, normal.raters, severity


def _card(cfg: SimulationConfig, normalization: dict[str, float]) -> Any:
    from napari_probseg.models.cards import ModelCard

    return ModelCard.from_dict(
        {
            "name": "al-simulation-unet",
            "architecture": {
                "wrapper": "plain",
                "network": "BasicUNet",
                "args": {"features": list(cfg.features), "dropout": cfg.dropout, "norm": "batch"},
                "dropout_mode": "channel",
            },
            # In-memory networks only: the weights are never read from this (absent) file.
            "weights": {"path": "al-simulation-unet.safetensors", "format": "safetensors"},
            "classes": ["background", "lesion"],
            "in_channels": 1,
            "spatial_dims": 2,
            "normalization": normalization,
            "patch_size": list(cfg.shape),
            "methods": {"mc_dropout": {"p": cfg.dropout}},
            "default_method": "mc_dropout",
            "schema_version": 1,
        }
    )


def _test_dice(net: Any, x: Any, majority: np.ndarray) -> float:
    import torch

    from napari_probseg.core.introspection import dice_risk

    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x[i : i + 64]).argmax(1) for i in range(0, len(x), 64)]).numpy()
    return float(np.mean([1.0 - dice_risk(p, m) for p, m in zip(pred, majority)]))


def _score_pool(
    method: Any, images: np.ndarray, idx: np.ndarray, *, score: str, aggregation: str, cfg: Any
) -> np.ndarray:
    """Score pool images through the engine and its one summary (same path as ``probseg rank``)."""
    from napari_probseg.active.scores import score_result
    from napari_probseg.engine import run_prediction

    keep = score in ("dice_disagreement", "sample_set_entropy", "volume_cov")
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        result = run_prediction(
            images[i], method, n_samples=cfg.n_samples, seed=0, keep_samples=keep, device="cpu"
        )
        out[j] = score_result(result, score=score, aggregation=aggregation).value
    return out


def simulate(
    config: SimulationConfig | None = None,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the active-learning simulation (see the module docs).

    Returns
    -------
    dict
        ``config``, ``labelled`` (budget points), ``dice`` ({strategy: [[Dice per round] per
        seed]}), ``auc`` ({strategy: [per seed]}), ``c_total`` ({strategy: {mean, low, high}}
        vs random, 95 % percentile bootstrap over seeds), ``severity_picked`` ({strategy: mean
        shift severity of the acquired images}), ``seconds``.
    """
    import torch

    from napari_probseg.active.features import bottleneck_features
    from napari_probseg.active.selection import select_batch
    from napari_probseg.models.loading import build_method
    from napari_probseg.models.networks import build_network
    from napari_probseg.training._common import Dataset, train_network

    cfg = config or SimulationConfig()
    if cfg.torch_threads:
        # One thread: small convolutions gain nothing from more, and on a shared machine
        # oversubscribed torch threads are tens of times slower.
        torch.set_num_threads(int(cfg.torch_threads))
    unknown = [s for s in cfg.strategies if s not in DEFAULT_STRATEGIES]
    if unknown:
        raise ValueError(f"strategies: unknown {unknown}; expected {list(DEFAULT_STRATEGIES)}")
    if cfg.initial + cfg.batch * cfg.rounds > cfg.pool_size:
        raise ValueError("pool_size: smaller than initial + batch * rounds")
    t0 = time.perf_counter()
    pool_img, pool_raters, pool_sev = _pool(cfg.pool_size, cfg, cfg.data_seed)
    test_img, test_raters, _ = _pool(cfg.test_size, cfg, cfg.data_seed + 500)
    mean, std = float(pool_img.mean()), float(pool_img.std())
    norm = {"kind": "zscore", "mean": mean, "std": std}
    card = _card(cfg, norm)
    x_pool = torch.from_numpy((pool_img[:, None] - mean) / std)
    x_test = torch.from_numpy((test_img[:, None] - mean) / std)
    majority = (test_raters.astype(np.float32).mean(1) > 0.5).astype(np.uint8)
    raters_t = torch.from_numpy(pool_raters.astype(np.int64))
    labelled_sizes = [cfg.initial + r * cfg.batch for r in range(cfg.rounds + 1)]

    def train(labelled: np.ndarray, seed: int, label: str, init: Any = None) -> Any:
        torch.manual_seed(seed)
        if init is not None and cfg.warm_start:
            net = copy.deepcopy(init)
        else:
            net = build_network(card)
        ds = Dataset(x_pool[labelled], raters_t[labelled])
        train_network(
            net,
            ds,
            steps=cfg.steps,
            batch=cfg.train_batch,
            patch=cfg.patch,
            seed=seed,
            lr=cfg.lr,
            log=lambda _m: None,
            label=label,
        )
        return net

    dice: dict[str, list[list[float]]] = {s: [] for s in cfg.strategies}
    picked_severity: dict[str, list[float]] = {s: [] for s in cfg.strategies}
    for seed in cfg.seeds:
        rng = np.random.default_rng(10_000 + seed)
        start = np.sort(rng.choice(cfg.pool_size, size=cfg.initial, replace=False))
        net0 = train(start, 1000 * seed, "round 0")
        d0 = _test_dice(net0, x_test, majority)
        log(f"seed {seed}: round 0 ({cfg.initial} labelled) Dice {d0:.4f}")
        for name in cfg.strategies:
            strategy, score, aggregation = DEFAULT_STRATEGIES[name]
            labelled = start.copy()
            net = net0
            curve = [d0]
            for r in range(1, cfg.rounds + 1):
                rest = np.setdiff1d(np.arange(cfg.pool_size), labelled)
                if cfg.candidates and len(rest) > cfg.candidates:
                    sub_rng = np.random.default_rng(100 * seed + r)
                    rest = np.sort(sub_rng.choice(rest, size=cfg.candidates, replace=False))
                if score is None:
                    values = np.zeros(len(rest))
                else:
                    method = build_method(card, net, "mc_dropout")
                    values = _score_pool(
                        method, pool_img, rest, score=score, aggregation=aggregation, cfg=cfg
                    )
                feats = lab_feats = None
                if strategy == "diverse":
                    feats = bottleneck_features(net, x_pool[rest], spatial_dims=2)
                    lab_feats = bottleneck_features(net, x_pool[labelled], spatial_dims=2)
                pick = select_batch(
                    values,
                    cfg.batch,
                    strategy=strategy,
                    features=feats,
                    labelled_features=lab_feats,
                    seed=1000 * seed + r,
                )
                chosen = rest[pick]
                picked_severity[name].extend(float(s) for s in pool_sev[chosen])
                labelled = np.sort(np.concatenate([labelled, chosen]))
                net = train(labelled, 1000 * seed, f"{name} round {r}", init=net)
                curve.append(_test_dice(net, x_test, majority))
            dice[name].append(curve)
            log(
                f"seed {seed}: {name:18s} Dice "
                + " ".join(f"{d:.4f}" for d in curve)
                + f"  ({time.perf_counter() - t0:.0f} s)"
            )
    auc = {name: [_auc(labelled_sizes, c) for c in curves] for name, curves in dice.items()}
    c_total = {}
    if "random" in auc:
        base = np.asarray(auc["random"])
        for name, values in auc.items():
            diff = np.asarray(values) - base
            low, high = bootstrap_interval(diff, n=cfg.bootstrap, seed=cfg.data_seed)
            c_total[name] = {"mean": float(diff.mean()), "low": low, "high": high}
    cfg_dict = asdict(cfg)
    return {
        "config": cfg_dict,
        "labelled": labelled_sizes,
        "dice": dice,
        "auc": auc,
        "c_total": c_total,
        "severity_picked": {
            k: float(np.mean(v)) if v else None for k, v in picked_severity.items()
        },
        "pool_severity": float(pool_sev.mean()),
        "seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }


def _auc(sizes: Sequence[int], curve: Sequence[float]) -> float:
    """Mean Dice over the budget: trapezoid area divided by the budget range."""
    x = np.asarray(sizes, np.float64)
    y = np.asarray(curve, np.float64)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def bootstrap_interval(
    values: Any, *, n: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    arr = np.asarray(values, np.float64)
    if arr.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(int(n), arr.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def budget_table(results: dict[str, Any]) -> str:
    """Markdown table: mean test Dice per round (± std over seeds), AUC and C_total vs random."""
    sizes = results["labelled"]
    head = (
        "| strategy | "
        + " | ".join(f"{n} labelled" for n in sizes)
        + " | mean Dice over budget | C_total vs random [95 % CI] | mean shift severity picked |"
    )
    rule = "|" + "---|" * (len(sizes) + 4)
    lines = [head, rule]
    for name, curves in results["dice"].items():
        arr = np.asarray(curves)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(arr.mean(0), arr.std(0))]
        auc = float(np.mean(results["auc"][name]))
        c = results["c_total"].get(name)
        ctext = "—" if c is None else f"{c['mean']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
        sev = results["severity_picked"].get(name)
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {auc:.4f} | {ctext} | {'—' if sev is None else f'{sev:.2f}'} |"
        )
    return "\n".join(lines)


def plot_budget(results: dict[str, Any], path: Any) -> Any:
    """Save the budget curve (mean test Dice vs labelled images, ± std band) as a PNG (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    sizes = np.asarray(results["labelled"])
    for name, curves in results["dice"].items():
        arr = np.asarray(curves)
        m, s = arr.mean(0), arr.std(0)
        style = "--" if name == "random" else "-"
        ax.plot(sizes, m, style, marker="o", label=name)
        ax.fill_between(sizes, m - s, m + s, alpha=0.12)
    n_seeds = len(next(iter(results["dice"].values())))
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test Dice (vs rater majority)")
    ax.set_title(f"Active learning budget curve ({n_seeds} seeds, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path
