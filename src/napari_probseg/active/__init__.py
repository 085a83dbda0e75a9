"""Active learning: image-level informativeness, batch selection and dataset-scale ranking.

Headless (no napari, no Qt). Above the engine, beside training and evaluation:

- :mod:`~napari_probseg.active.scores` -- BALD, predictive / expected entropy and the
  structure-aware scores, read from the engine's one summary (:func:`score_from_summary`);
- :mod:`~napari_probseg.active.selection` -- top-k, diversity (uncertainty pre-filter + greedy
  k-center, Yang et al. 2017 / Sener & Savarese 2018) and random batches, seeded;
- :mod:`~napari_probseg.active.rank` -- :func:`rank_store` on dask.distributed, resumable, writing
  one ranking record into the store (imported on demand: it needs ``distributed``);
- :mod:`~napari_probseg.active.simulate` -- the simulation that measures the gain over random.
"""

from napari_probseg.active.scores import (
    AGGREGATIONS,
    SCORES,
    ImageScore,
    check_score,
    score_from_summary,
    score_result,
)
from napari_probseg.active.selection import STRATEGIES, k_center_greedy, select_batch

__all__ = [
    "AGGREGATIONS",
    "SCORES",
    "STRATEGIES",
    "ImageScore",
    "check_score",
    "k_center_greedy",
    "score_from_summary",
    "score_result",
    "select_batch",
]
