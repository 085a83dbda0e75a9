"""Active learning: scores from the summary, batch selection, distributed ranking, rank CLI."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_probseg.active import check_score, k_center_greedy, score_from_summary, select_batch

SRC = str(Path(__file__).resolve().parents[1] / "src")


# --- selection (pure, known answers) ---------------------------------------------------------


def test_top_k_orders_by_score_nan_last_ties_by_index():
    scores = [0.2, np.nan, 0.9, 0.2, 0.5]
    assert select_batch(scores, 5, strategy="top_k").tolist() == [2, 4, 0, 3, 1]
    assert select_batch(scores, 2, strategy="top_k").tolist() == [2, 4]
    assert len(select_batch(scores, 99, strategy="top_k")) == 5


def test_random_is_seeded_and_without_replacement():
    a = select_batch(np.zeros(50), 10, strategy="random", seed=3)
    b = select_batch(np.zeros(50), 10, strategy="random", seed=3)
    c = select_batch(np.zeros(50), 10, strategy="random", seed=4)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 10


def test_k_center_greedy_known_answer():
    # Points on a line: start at 0, the farthest is 10, then the one farthest from {0, 10} is 5.
    feats = np.array([[0.0], [1.0], [5.0], [10.0], [9.0]])
    assert k_center_greedy(feats, 3, first=0) == [0, 3, 2]
    # Coverage from labelled points: with 10 covered, 0 is farthest.
    assert k_center_greedy(feats, 1, centers=[3]) == [0]


def test_diverse_avoids_near_duplicates_of_the_most_uncertain():
    # Three near-identical very uncertain images and one different, slightly less uncertain one.
    scores = np.array([0.9, 0.89, 0.88, 0.8, 0.1, 0.05])
    feats = np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [5.0, 5.0], [9.0, 0.0], [0.0, 9.0]])
    assert select_batch(scores, 2, strategy="top_k").tolist() == [0, 1]
    picks = select_batch(scores, 2, strategy="diverse", features=feats, candidate_factor=2)
    assert picks.tolist() == [0, 3]  # first the most uncertain, then the farthest candidate
    # k = 1: the same as top-k.
    assert select_batch(scores, 1, strategy="diverse", features=feats).tolist() == [0]


def test_selection_errors_name_the_argument():
    with pytest.raises(ValueError, match="strategy"):
        select_batch([1.0], 1, strategy="best")
    with pytest.raises(ValueError, match="features"):
        select_batch([1.0, 2.0], 1, strategy="diverse")
    with pytest.raises(ValueError, match=r"^k"):
        select_batch([1.0], 0)
    with pytest.raises(ValueError, match="aggregation"):
        check_score("volume_cov", "mean")
    with pytest.raises(ValueError, match="score"):
        check_score("entropy", "mean")


# --- scores read from a real summary -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from model_helpers import tiny_card

    return tiny_card(tmp_path_factory.mktemp("model"), dropout=0.5)


def test_scores_match_core_on_a_real_run(tiny_model):
    from napari_probseg.active import score_result
    from napari_probseg.core.aggregate import aggregate
    from napari_probseg.core.structure import pairwise_dice, sample_set_entropy
    from napari_probseg.data.synthetic import make_lesions
    from napari_probseg.engine import run_prediction, summarize
    from napari_probseg.models import load_method

    image = make_lesions(1, shape=(32, 32), seed=2).images[0]
    result = run_prediction(image, load_method(tiny_model, "mc_dropout"), n_samples=6, seed=1)
    mi = np.asarray(result.maps.mutual_information)
    bald = score_result(result, score="bald", aggregation="mean")
    assert bald.value == pytest.approx(aggregate(mi, method="mean").value)
    assert bald.value > 0
    top = score_result(result, score="bald", aggregation="top_k_mean", top_k=10)
    assert top.value == pytest.approx(np.sort(mi.ravel().astype(np.float64))[-10:].mean(), rel=1e-9)
    dis = score_result(result, score="dice_disagreement")
    assert dis.aggregation == "samples"
    assert dis.value == pytest.approx(1.0 - pairwise_dice(result.samples))
    summary = summarize(result)
    sse = score_from_summary(summary, score="sample_set_entropy", aggregation=None)
    assert sse.value == pytest.approx(sample_set_entropy(result.samples))
    det = run_prediction(image, load_method(tiny_model, "softmax"), n_samples=1)
    with pytest.raises(ValueError, match="score"):
        score_result(det, score="bald", aggregation="mean")


# --- ranking on dask.distributed ------------------------------------------------------------


def _store(path, n=5, annotated=()):
    from napari_probseg.data.synthetic import make_lesions
    from napari_probseg.store import ProjectStore

    store = ProjectStore.create(path, class_names=["background", "lesion"])
    data = make_lesions(n, shape=(32, 32), seed=5)
    for i, image in enumerate(data.images):
        store.add_image(image, image_id=f"img{i:02d}")
    for i in annotated:
        store.save_annotation(f"img{i:02d}", "alice", data.raters[i, 0], role="expert")
    return store


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def _config(model, **kw):
    from napari_probseg.active.rank import RankConfig

    return RankConfig(model=model, method="mc_dropout", n_samples=4, **kw)


def test_rank_store_scores_every_image_and_writes_one_record(tmp_path, tiny_model, client):
    from napari_probseg.active.rank import rank_store
    from napari_probseg.store import ProjectStore

    _store(tmp_path / "p.zarr")
    events = []
    cfg = _config(tiny_model, score="bald", aggregation="patch_max", features=True)
    record = rank_store(
        tmp_path / "p.zarr", cfg, client=client, progress=events.append, select=("diverse", 2, 0)
    )
    assert record["status"] == "complete" and not record["failed"]
    values = [e["value"] for e in record["entries"]]
    assert len(values) == 5 and values == sorted(values, reverse=True)
    assert [e["rank"] for e in record["entries"]] == [1, 2, 3, 4, 5]
    assert record["config"]["aggregation"] == "patch_max"
    assert record["config"]["card_sha256"] == record["entries"][0]["card_sha256"]
    assert len(record["entries"][0]["features"]) > 0
    assert record["selection"]["image_ids"][0] == record["entries"][0]["image_id"]
    assert events[-1].done == 5
    store = ProjectStore.open(tmp_path / "p.zarr", mode="r")
    assert store.latest_ranking()["ranking_id"] == record["ranking_id"]
    # Same seed, same scores (the engine is seeded per image).
    again = rank_store(tmp_path / "p.zarr", cfg, client=client)
    assert [e["value"] for e in again["entries"]] == values
    assert len(store.ranking_ids()) == 2


def test_rank_resumes_an_interrupted_ranking(tmp_path, tiny_model, client):
    from napari_probseg.active.rank import rank_store

    _store(tmp_path / "p.zarr", n=6)
    cancel = threading.Event()
    seen = []

    def stop_after_two(event):
        if event.image_id:
            seen.append(event.image_id)
        if len(seen) >= 2:
            cancel.set()

    cfg = _config(tiny_model, score="predictive_entropy")
    first = rank_store(
        tmp_path / "p.zarr", cfg, client=client, cancel=cancel, progress=stop_after_two
    )
    assert first["status"] == "running"
    scored = {e["image_id"] for e in first["entries"]}
    assert 2 <= len(scored) < 6
    later = []
    second = rank_store(tmp_path / "p.zarr", cfg, client=client, progress=later.append)
    assert second["ranking_id"] == first["ranking_id"] and second["status"] == "complete"
    assert len(second["entries"]) == 6
    rescored = {e.image_id for e in later if e.image_id}
    assert rescored == {f"img{i:02d}" for i in range(6)} - scored  # only the missing ones
    assert later[0].resumed == len(scored)
    # Another configuration never continues it.
    other = rank_store(tmp_path / "p.zarr", _config(tiny_model, seed=1), client=client)
    assert other["ranking_id"] != first["ranking_id"]


def test_a_failing_image_is_reported_and_skipped(tmp_path, tiny_model, client):
    from napari_probseg.active.rank import rank_store

    _store(tmp_path / "p.zarr", n=4)
    # Damage one image's chunk file: reading it fails its checksum on the worker.
    chunks = [p for p in (tmp_path / "p.zarr/images/img02/0").rglob("*") if p.is_file()]
    chunk = next(p for p in chunks if p.name != "zarr.json")
    chunk.write_bytes(b"garbage" + chunk.read_bytes()[7:])
    record = rank_store(tmp_path / "p.zarr", _config(tiny_model), client=client)
    assert record["status"] == "complete"
    assert [f["image_id"] for f in record["failed"]] == ["img02"]
    assert "img02" in record["failed"][0]["image_id"] and record["failed"][0]["error"]
    assert sorted(e["image_id"] for e in record["entries"]) == ["img00", "img01", "img03"]


def test_rank_cli_end_to_end(tmp_path, tiny_model, capsys):
    from napari_probseg.cli import main

    _store(tmp_path / "p.zarr", n=4, annotated=(1,))
    args = ["rank", str(tmp_path / "p.zarr"), "--model", tiny_model, "--method", "mc_dropout"]
    args += ["--score", "dice_disagreement", "--samples", "4", "--unannotated", "--top", "2"]
    assert main([*args, "--workers", "1", "--threads", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {e["image_id"] for e in record["entries"]} == {"img00", "img02", "img03"}
    assert record["config"]["aggregation"] == "samples"
    assert record["filter"]["unannotated"] is True
    assert len(record["selection"]["image_ids"]) == 2
    assert main(["rank", "--show", str(tmp_path / "p.zarr")]) == 0
    out = capsys.readouterr().out
    assert record["ranking_id"] in out and "dice_disagreement" in out
    assert main(["rank", str(tmp_path / "p.zarr"), "--score", "volume_cov"]) == 2  # no --model
    assert "--model" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_on_a_real_scheduler_and_worker(tmp_path, tiny_model, capsys):
    from napari_probseg.cli import main

    _store(tmp_path / "p.zarr", n=3)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen(
        [*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        address = f"tcp://127.0.0.1:{port}"
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "distributed.cli.dask_worker", address),
                *("--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"),
                *("--local-directory", str(tmp_path)),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from distributed import Client

        with Client(address, timeout="60s") as c:
            c.wait_for_workers(1, timeout=120)
        args = ["rank", str(tmp_path / "p.zarr"), "--model", tiny_model, "--samples", "2"]
        code = main([*args, "--scheduler", address, "--json"])
        assert code == 0
        record = json.loads(capsys.readouterr().out)
        assert record["cluster"]["scheduler"] == address and record["cluster"]["workers"] == 1
        assert len(record["entries"]) == 3 and all(
            not math.isnan(e["value"]) for e in record["entries"]
        )
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
        for proc in (worker, scheduler):
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
