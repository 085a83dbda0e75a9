"""``probseg demo``: open napari on a synthetic case, run the bundled model, dock both panels.

With ``screenshot`` a full-window PNG is saved once the layers are drawn; with ``quit`` the viewer
closes afterwards (used by ``make screenshots`` and the tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Milliseconds to let napari draw the new layers before the screenshot.
_SETTLE_MS = 800


def choose_model(ndim: int, model: str | None = None) -> str:
    """Return the model key to use: ``model`` (name or card path) or the first bundled one of
    ``ndim`` spatial dimensions.

    Raises
    ------
    ValueError
        ``model: ...`` when no bundled model fits.
    """
    from napari_probseg._napari._choices import bundled_choices

    if model:
        return model
    fits = [c for c in bundled_choices() if c.spatial_dims == ndim]
    # Prefer the plain U-Net with MC dropout (the cheapest, best-known method), then any.
    fits.sort(key=lambda c: (c.methods[:1] != ("mc_dropout",), c.label))
    if fits:
        return fits[0].key
    raise ValueError(
        f"model: no bundled {ndim}D model found (run `make train`), or pass --model CARD.json"
    )


def open_demo(
    *,
    sample: str = "2d",
    method: str | None = None,
    model: str | None = None,
    n_samples: int = 16,
    seed: int = 0,
    device: str = "auto",
    screenshot: str | Path | None = None,
    quit_after: bool = False,
    viewer: Any = None,
    on_done: Any = None,
) -> tuple[Any, Any, Any]:
    """Open (or reuse) a viewer on the sample case and start a run.

    Parameters
    ----------
    sample : {"2d", "3d"}
        Which synthetic case (``data.synthetic.sample_case``).
    method, model : str, optional
        Method name and model (bundled name or card path); defaults from the bundled model.
    n_samples, seed : int
    device : str
    screenshot : path, optional
        Save a full-window PNG once the run's layers are drawn.
    quit_after : bool
        Close the viewer after the run (and screenshot).
    viewer : napari.Viewer, optional
        Reuse this viewer (tests); a new one is created otherwise.
    on_done : callable, optional
        Called with the run record (None on failure) after the run and screenshot.

    Returns
    -------
    (viewer, run_widget, review_widget)
    """
    import napari
    from qtpy.QtCore import QTimer

    from napari_probseg._napari._review_widget import ReviewWidget
    from napari_probseg._napari._run_widget import RunWidget
    from napari_probseg.data.synthetic import sample_case

    if sample not in ("2d", "3d"):
        raise ValueError(f"sample: expected '2d' or '3d', got {sample!r}")
    ndim = int(sample[0])
    key = choose_model(ndim, model)
    image, _, scale = sample_case(ndim)
    if viewer is None:
        viewer = napari.Viewer(title=f"napari-probseg demo ({sample})")
        viewer.window.resize(1500, 950)
    name = f"lesions {sample}"
    viewer.add_image(image, name=name, scale=scale, colormap="gray")
    run = RunWidget(viewer)
    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(run, name="Run probabilistic segmentation", area="right")
    viewer.window.add_dock_widget(review, name="Review uncertainty", area="right")
    if key not in [c.key for c in run._models]:
        run.add_model_card(key)
    run.select(image=name, model=key, n_samples=n_samples, seed=seed, device=device)
    if method:
        run.select(method=method)

    def finish(record: Any) -> None:
        if record is not None:
            _frame(viewer, review)
        if screenshot is not None or quit_after:
            QTimer.singleShot(_SETTLE_MS, lambda: _after(record))
        elif on_done is not None:
            on_done(record)

    def _after(record: Any) -> None:
        if screenshot is not None:
            path = Path(screenshot)
            path.parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(str(path), canvas_only=False)
            print(f"probseg demo: saved {path}", flush=True)
        if on_done is not None:
            on_done(record)
        if quit_after:
            viewer.close()

    run.run_finished.connect(finish)
    run.run()
    return viewer, run, review


def _frame(viewer: Any, review: Any) -> None:
    """Show the whole image on the most uncertain region's plane, that region outlined."""
    if review.record is None or not review.record.regions.get("rank"):
        viewer.reset_view()
        return
    review.select_region(0)
    viewer.reset_view()
    if viewer.dims.ndim > len(review.record.output.placement.scale):
        viewer.dims.set_current_step(0, 0)  # first sample on the sample slider


def main_demo(args: Any) -> int:
    """Entry point of ``probseg demo`` (parsed ``argparse`` namespace); returns the exit code."""
    import napari

    status = {"ok": True}

    def done(record: Any) -> None:
        status["ok"] = record is not None

    open_demo(
        sample=args.sample,
        method=args.method,
        model=args.model,
        n_samples=args.n_samples,
        seed=args.seed,
        device=args.device,
        screenshot=args.screenshot,
        quit_after=args.quit,
        on_done=done,
    )
    napari.run()
    return 0 if status["ok"] else 1
