"""One prediction, two views: ``probseg predict --json`` and the review panel show identical values.

A real bundled model runs once through the CLI and once through the run panel's job, landed in a
real napari viewer; the panel's summary dict and its rendered rows must equal the CLI's JSON.
"""

from __future__ import annotations

import json

import pytest

from napari_probseg._napari._layers import Placement
from napari_probseg._napari._review_widget import ReviewWidget
from napari_probseg._napari._runner import RunRequest, run_job
from napari_probseg._napari._session import land
from napari_probseg._napari._summary import format_value, summary_rows
from napari_probseg.cli import main
from napari_probseg.data.synthetic import sample_case

pytest.importorskip("napari")
pytestmark = pytest.mark.timeout(300)

MODEL, METHOD = "lesions2d-unet", "mc_dropout"


def _finish(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_cli_json_and_review_panel_show_identical_values(make_napari_viewer, tmp_path, capsys):
    argv = ["predict", "--sample", "2d", "--model", MODEL, "--method", METHOD, "-n", "4"]
    argv += ["--seed", "3", "--device", "cpu", "--out", str(tmp_path / "p.zarr"), "--json"]
    assert main(argv) == 0
    cli = json.loads(capsys.readouterr().out)

    image, _, scale = sample_case(2)
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="img", scale=scale)
    request = RunRequest(model=MODEL, method=METHOD, n_samples=4, seed=3, device="cpu")
    output = _finish(run_job(image, request, Placement("img", tuple(scale))))
    widget = ReviewWidget(viewer)
    assert land(viewer, output, layer) is not None
    panel = widget.summary_data
    assert panel is not None

    for key in ("scores", "structure", "verdict", "warnings", "foreground", "caveat", "labels"):
        assert panel[key] == cli[key], key
    assert panel["regions"] == cli["regions"]
    # the panel's table is the summary's region list; navigation follows the same regions
    table = [int(widget.table.item(i, 0).text()) for i in range(widget.table.rowCount())]
    assert table == [r["rank"] for r in cli["regions"]["top"]]
    record = widget.record
    assert record.regions["score"] == pytest.approx([r["score"] for r in cli["regions"]["top"]])
    # the values the panel displays are the CLI's values, formatted
    text = widget.summary.text()
    rows = summary_rows(cli)
    assert len(rows) >= len(cli["scores"]) + len(cli["structure"])
    for label, value in rows:
        assert f"{label}</td><td align='right'>&nbsp;{value}<" in text.replace("&amp;", "&")
    fg = next(s for s in cli["scores"] if s["key"] == "predictive_entropy/foreground_normalized")
    assert format_value(fg["value"]) in text
    assert widget.sentence.text().startswith(cli["verdict"]["sentence"])
    assert (not widget.warnings.isHidden()) == bool(cli["warnings"])
    for w in cli["warnings"]:
        assert w in widget.warnings.text()
