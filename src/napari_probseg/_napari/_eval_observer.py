"""Observer-variability and conformal reports of the researcher panels: headless, in
:mod:`napari_probseg.evaluation.store_reports` (re-exported here for the panels)."""

from __future__ import annotations

from napari_probseg.evaluation.store_reports import (  # noqa: F401 (re-exported)
    ConformalReport,
    ObserverReport,
    conformal_report,
    observer_report,
    store_conformal_pairs,
)
