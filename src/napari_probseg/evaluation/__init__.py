"""Evaluation of prediction runs against raters: metrics over stores, plots, reports.

- :func:`evaluate_store`: every metric per image and over the dataset (:class:`StoreEvaluation`,
  ``to_dict()`` for JSON, :func:`format_table` for people);
- :func:`save_run`, :func:`load_run`, :func:`predict_store`: engine results as store runs;
- :func:`calibrate_card`: temperature scaling of a model card on a store;
- :func:`write_plots` (module ``plots``): reliability diagram, GED vs N, rater-count ablation;
- ``python -m napari_probseg.evaluation.results``: the README results table (``make results``).
"""

from napari_probseg.evaluation._evaluate import (
    IMAGE_METRICS,
    REFERENCE_MODES,
    ImageEvaluation,
    StoreEvaluation,
    evaluate_store,
    ged_vs_n,
    parse_reference,
    rater_ablation,
)
from napari_probseg.evaluation._report import format_table
from napari_probseg.evaluation._runs import (
    RunData,
    latest_run_id,
    load_run,
    predict_store,
    save_run,
)
from napari_probseg.evaluation.calibrate import TemperatureReport, calibrate_card
from napari_probseg.evaluation.plots import write_plots

__all__ = [
    "IMAGE_METRICS",
    "REFERENCE_MODES",
    "ImageEvaluation",
    "RunData",
    "StoreEvaluation",
    "TemperatureReport",
    "calibrate_card",
    "evaluate_store",
    "format_table",
    "ged_vs_n",
    "latest_run_id",
    "load_run",
    "parse_reference",
    "predict_store",
    "rater_ablation",
    "save_run",
    "write_plots",
]
