"""``probseg al-simulate``: measure the gain of active learning over random selection."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "al-simulate",
        help="simulate active learning on a synthetic pool and compare strategies with random",
        description=(
            "Pool-based active-learning simulation on synthetic multi-rater lesions (64x64, mixed "
            "shift severities): train a tiny MC-dropout U-Net, select batches with each strategy, "
            "retrain, and report test Dice per round and C_total = C_method - C_random with "
            "bootstrap intervals over seeds (see napari_probseg.active.simulate)."
        ),
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--rounds", type=int, default=4, help="acquisition rounds (default 4)")
    p.add_argument("--initial", type=int, default=8, help="initial labelled images (default 8)")
    p.add_argument("--batch", type=int, default=8, help="images acquired per round (default 8)")
    p.add_argument("--pool", type=int, default=200, help="pool size (default 200)")
    p.add_argument("--test", type=int, default=80, help="test images (default 80)")
    p.add_argument("--steps", type=int, default=150, help="training steps per round (default 150)")
    p.add_argument("--samples", type=int, default=8, help="MC-dropout samples for scoring")
    p.add_argument(
        "--strategies",
        default=None,
        help="comma-separated subset of random,entropy,bald,bald_diverse,dice_disagreement",
    )
    p.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    p.add_argument("--plot", type=Path, default=None, help="write the budget curve PNG here")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_probseg.active.simulate import (
        DEFAULT_STRATEGIES,
        SimulationConfig,
        budget_table,
        plot_budget,
        simulate,
    )

    strategies = (
        tuple(s.strip() for s in args.strategies.split(",") if s.strip())
        if args.strategies
        else tuple(DEFAULT_STRATEGIES)
    )
    if "random" not in strategies:
        strategies = ("random", *strategies)
    if args.seeds < 1:
        raise ValueError(f"--seeds: expected >= 1, got {args.seeds}")
    cfg = SimulationConfig(
        pool_size=args.pool,
        test_size=args.test,
        initial=args.initial,
        batch=args.batch,
        rounds=args.rounds,
        seeds=tuple(range(args.seeds)),
        steps=args.steps,
        n_samples=args.samples,
        strategies=strategies,
    )
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    results = simulate(cfg, log=log)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_budget(results, args.plot)
    if args.json:
        print(json.dumps(results))
    else:
        print()
        print(budget_table(results))
        print(f"\n{results['seconds']:.0f} s, torch threads {results['torch_threads']}")
    return 0
