"""Rank a store's images by informativeness on dask.distributed (resumable, failure-tolerant).

The client only schedules: it sends image *ids* (never pixels) to the workers, keeps a bounded
number of tasks in flight and gathers small result records with ``as_completed``. Each worker
loads the model once (a :class:`ModelPlugin` registered on the cluster; workers that join later
run its ``setup`` too) and reads its images straight from the store (opened read-only). Progress is
checkpointed into the store as a ``running`` ranking record (atomic writes), so an interrupted
ranking continues where it stopped; a failing image is recorded in ``failed`` and skipped.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from napari_probseg.active.scores import DEFAULT_TOP_K, STRUCTURE_SCORES, check_score

__all__ = [
    "ModelPlugin",
    "RankConfig",
    "RankEvent",
    "default_workers",
    "rank_store",
    "ranked_entries",
    "select_images",
]


@dataclass(frozen=True)
class RankConfig:
    """What a ranking computes (everything that changes a score is here, and in the record).

    Attributes
    ----------
    model : str
        Card path or bundled model name (resolved on the workers).
    method : str or None
        Sampling method (None: the card's default).
    score, aggregation : str
        See :mod:`napari_probseg.active.scores`.
    n_samples, seed : int
        Hypotheses per image and the engine's seed (the same for every image).
    top_k : int
        Voxels averaged by the ``"top_k_mean"`` aggregation.
    features : bool
        Also return pooled bottleneck features (for diversity-aware selection).
    device : str
        Device of the workers' model.
    batch_size : int or None
        Engine batch size (None: automatic).
    trust : bool
        Passed to :func:`napari_probseg.models.load_method`.
    """

    model: str
    method: str | None = None
    score: str = "bald"
    aggregation: str | None = "mean"
    n_samples: int = 16
    seed: int = 0
    top_k: int = DEFAULT_TOP_K
    features: bool = False
    device: str = "cpu"
    batch_size: int | None = None
    trust: bool = False

    def __post_init__(self) -> None:
        _, aggregation = check_score(self.score, self.aggregation)
        object.__setattr__(self, "aggregation", aggregation)
        for name in ("n_samples", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {self.seed!r}")


@dataclass(frozen=True)
class RankEvent:
    """Progress of :func:`rank_store` (one per finished image, and one at the start).

    ``done`` counts scored and failed images of this ranking (including those resumed from an
    interrupted one); ``error`` is set for a failed image.
    """

    done: int
    total: int
    image_id: str | None = None
    value: float | None = None
    error: str | None = None
    resumed: int = 0


def default_workers() -> int:
    """Workers of the default LocalCluster: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _resolve_card(model: str) -> Any:
    """The card of ``model`` without importing torch (the client stays light)."""
    from napari_probseg.models.cards import load_card
    from napari_probseg.models.registry import bundled_models

    if Path(model).is_file():
        return load_card(model)
    bundled = bundled_models()
    if model in bundled:
        return bundled[model]
    raise FileNotFoundError(
        f"model: {model!r} is neither a model card file nor a bundled model "
        f"(bundled: {', '.join(bundled) or 'none'})"
    )


# --- worker side -----------------------------------------------------------------------------


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency of this module
    _WorkerPlugin = object  # type: ignore[assignment,misc]


class ModelPlugin(_WorkerPlugin):  # type: ignore[misc,valid-type]
    """Loads the ranking's model once per worker (``setup``) and serialises its use.

    Parameters
    ----------
    config : RankConfig
    torch_threads : int or None
        ``torch.set_num_threads`` in the worker (1 by default: one worker per core scales; with
        threads per worker the cores would be oversubscribed).
    """

    def __init__(self, config: RankConfig, *, torch_threads: int | None = 1) -> None:
        self.config = config
        self.torch_threads = torch_threads
        self.method: Any = None
        self.lock = threading.Lock()
        self.name = plugin_name(config)

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "torch_threads": self.torch_threads, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], torch_threads=state["torch_threads"])  # type: ignore[misc]

    def setup(self, worker: Any = None) -> None:
        import torch

        from napari_probseg.models import load_method

        if self.torch_threads:
            torch.set_num_threads(int(self.torch_threads))
        cfg = self.config
        self.method = load_method(cfg.model, cfg.method, device=cfg.device, trust=cfg.trust)

    def teardown(self, worker: Any = None) -> None:
        self.method = None


def plugin_name(config: RankConfig) -> str:
    """Name of the worker plugin holding ``config``'s model."""
    return f"probseg-model-{config.model}-{config.method}-{config.device}"


def _plugin(config: RankConfig) -> ModelPlugin:
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(plugin_name(config))
    if plugin is None or plugin.method is None:  # e.g. a worker that lost its plugin state
        plugin = ModelPlugin(config)
        plugin.setup(worker)
        worker.plugins[plugin_name(config)] = plugin
    return plugin


def score_image_task(store_path: str, image_id: str, config: RankConfig) -> dict[str, Any]:
    """Score one stored image on a worker; return a small JSON-able entry.

    Raises whatever the image raises (unreadable, wrong shape, ...): the client records it.
    """
    from napari_probseg.active.scores import score_result
    from napari_probseg.engine import run_prediction
    from napari_probseg.store import ProjectStore

    t0 = time.perf_counter()
    plugin = _plugin(config)
    store = ProjectStore.open(store_path, mode="r")
    info = store.image_info(image_id)
    image, scale = store.read_image(image_id)
    method = plugin.method
    slice_mode = image.ndim == 3 and int(method.spatial_dims) == 2
    with plugin.lock:  # one model per worker; its threads take turns
        result = run_prediction(
            image,
            method,
            n_samples=config.n_samples,
            seed=config.seed,
            device=config.device,
            batch_size=config.batch_size,
            scale=scale,
            keep_samples=config.score in STRUCTURE_SCORES,
            slice_by_slice=slice_mode,
        )
        value = score_result(
            result, score=config.score, aggregation=config.aggregation, top_k=config.top_k
        )
        features = _features(method, image, slice_mode) if config.features else None
    entry: dict[str, Any] = {
        "image_id": image_id,
        "value": None if math.isnan(value.value) else float(value.value),
        "description": value.description,
        "n_samples": int(result.n_samples),
        "card_sha256": result.provenance.get("card_sha256"),
        "content_hash": info.get("content_hash"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if features is not None:
        entry["features"] = [round(float(f), 6) for f in features]
    return entry


def _features(method: Any, image: Any, slice_mode: bool) -> Any:
    import numpy as np
    import torch

    from napari_probseg.active.features import bottleneck_features
    from napari_probseg.engine import normalize

    card = getattr(method, "card", None)
    arr = np.asarray(image, np.float32)
    if slice_mode:
        arr = arr[arr.shape[0] // 2]
    x = normalize(arr[None], getattr(card, "normalization", None))
    net = method.network
    device = next(net.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(x))[None].to(device)
    return bottleneck_features(net, tensor, spatial_dims=int(method.spatial_dims))[0]


# --- client side -----------------------------------------------------------------------------


def select_images(
    store: Any, *, unannotated: bool = False, without_rater: str | None = None
) -> list[str]:
    """Image ids to rank: all, those without any annotation, or those without ``without_rater``'s."""
    ids = store.image_ids()
    if unannotated:
        return [i for i in ids if not store.raters(i)]
    if without_rater is not None:
        from napari_probseg.store import validate_identifier

        validate_identifier(without_rater, "without_rater")
        return [i for i in ids if without_rater not in store.raters(i)]
    return ids


def ranked_entries(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Entries sorted by decreasing value (undefined values last, ties by id), ``rank`` from 1."""
    items = [dict(e) for e in entries]
    items.sort(key=lambda e: (e.get("value") is None, -(e.get("value") or 0.0), e["image_id"]))
    for rank, e in enumerate(items, 1):
        e["rank"] = rank
    return items


def _selection(entries: list[dict[str, Any]], strategy: str, k: int, seed: int) -> dict[str, Any]:
    import numpy as np

    from napari_probseg.active.selection import select_batch

    values = np.array([np.nan if e["value"] is None else e["value"] for e in entries])
    features = np.array([e["features"] for e in entries]) if strategy == "diverse" else None
    picks = select_batch(values, k, strategy=strategy, features=features, seed=seed)
    return {
        "strategy": strategy,
        "k": int(k),
        "seed": int(seed),
        "image_ids": [entries[int(i)]["image_id"] for i in picks],
    }


def _config_key(config: RankConfig, card_sha: str) -> dict[str, Any]:
    key = asdict(config)
    for name in ("device", "batch_size", "trust"):  # do not change the scores' meaning
        key.pop(name)
    key["card_sha256"] = card_sha
    return key


def _find_resumable(store: Any, key: Mapping[str, Any]) -> dict[str, Any] | None:
    for ranking_id in reversed(store.ranking_ids()):
        record = store.read_ranking(ranking_id)
        if record.get("status") == "running" and record.get("config") == dict(key):
            return record
    return None


def rank_store(
    store_path: str | Path,
    config: RankConfig,
    *,
    image_ids: Iterable[str] | None = None,
    client: Any = None,
    n_workers: int | None = None,
    scheduler: str | None = None,
    processes: bool = True,
    resume: bool = True,
    max_in_flight: int | None = None,
    checkpoint_every: float = 2.0,
    progress: Callable[[RankEvent], None] | None = None,
    cancel: threading.Event | None = None,
    extra: Mapping[str, Any] | None = None,
    select: tuple[str, int, int] | None = None,
) -> dict[str, Any]:
    """Score images of a store on dask.distributed and write one ranking record.

    Parameters
    ----------
    store_path : path
        The project store (opened read-write on the client for the record, read-only on workers).
    config : RankConfig
    image_ids : iterable of str, optional
        Images to rank (default: all; see :func:`select_images`).
    client : distributed.Client, optional
        Use this client. Otherwise ``scheduler`` (an address) or a new LocalCluster of
        ``n_workers`` workers (default :func:`default_workers`), one thread each, closed at the end.
    processes : bool
        LocalCluster workers as processes (True) or threads of this process.
    resume : bool
        Continue the newest interrupted ranking with the same configuration and model card hash
        (its scored images are kept; failed ones are retried).
    max_in_flight : int, optional
        Tasks submitted at a time (default 2 per worker + 1): bounds the client's memory whatever
        the store size.
    checkpoint_every : float
        Seconds between checkpoints of the running record (and after the last image).
    progress : callable, optional
        Called with a :class:`RankEvent` at the start and after each image.
    cancel : threading.Event, optional
        Stop submitting, keep the checkpoint (status ``running``) and return it.
    extra : mapping, optional
        JSON-able fields stored in the record (e.g. the filter used).
    select : (strategy, k, seed), optional
        Also choose a batch of ``k`` images with :func:`~napari_probseg.active.select_batch`
        (``"diverse"`` needs ``config.features``), stored as the record's ``selection``.

    Returns
    -------
    dict
        The ranking record: ``ranking_id``, ``status``, ``config`` (incl. ``card_sha256``),
        ``entries`` (``image_id``, ``value``, ``rank``, ``n_samples``, ``seconds``, ...), ``failed``
        (``image_id``, ``error``), ``n_images``, ``started``, ``finished``, ``seconds``,
        ``cluster`` and, with ``select``, ``selection`` (``strategy``, ``k``, ``seed``,
        ``image_ids`` in selection order).

    Raises
    ------
    ValueError, FileNotFoundError
        Bad configuration, unknown image ids, no model.
    """
    from distributed import as_completed

    from napari_probseg.store import ProjectStore
    from napari_probseg.store._meta import utc_now

    store = ProjectStore.open(store_path)
    all_ids = set(store.image_ids())
    ids = list(store.image_ids() if image_ids is None else image_ids)
    unknown = [i for i in ids if i not in all_ids]
    if unknown:
        raise ValueError(f"image_ids: not in the store: {', '.join(unknown[:5])}")
    card = _resolve_card(config.model)
    card_sha = card.sha256
    key = _config_key(config, card_sha)

    record: dict[str, Any] | None = _find_resumable(store, key) if resume else None
    ranking_id = record["ranking_id"] if record else None
    done: dict[str, dict[str, Any]] = {}
    if record:
        hashes = {i: store.image_info(i).get("content_hash") for i in ids}
        done = {
            e["image_id"]: e
            for e in record["entries"]
            if e["image_id"] in hashes and e.get("content_hash") == hashes[e["image_id"]]
        }
    resumed = len(done)
    todo = [i for i in ids if i not in done]
    failed: dict[str, str] = {}
    started = record["started"] if record else utc_now()
    t_start = time.perf_counter()
    elapsed_before = float(record.get("seconds", 0.0)) if record else 0.0

    own_cluster = own_client = None
    if client is None:
        from distributed import Client, LocalCluster

        if scheduler:
            client = own_client = Client(scheduler, timeout="30s")
        else:
            own_cluster = LocalCluster(
                n_workers=n_workers or default_workers(),
                threads_per_worker=1,
                processes=processes,
                dashboard_address=None,
                **({"host": "127.0.0.1"} if processes else {}),  # loopback only
            )
            client = own_client = Client(own_cluster)
    cluster_info = {
        "scheduler": "LocalCluster" if own_cluster is not None else str(client.scheduler.address),
        "workers": len(client.scheduler_info(n_workers=-1).get("workers", {})),
    }

    if select is not None and select[0] == "diverse" and not config.features:
        raise ValueError("select: strategy 'diverse' needs RankConfig(features=True)")

    def make_record(status: str) -> dict[str, Any]:
        entries = ranked_entries(done.values())
        selection = None
        if select is not None and status == "complete" and entries:
            selection = _selection(entries, *select)
        return {
            "status": status,
            "config": key,
            "model_name": card.name,
            "entries": entries,
            "failed": [{"image_id": i, "error": e} for i, e in sorted(failed.items())],
            "n_images": len(ids),
            "started": started,
            "finished": utc_now() if status == "complete" else None,
            "seconds": round(elapsed_before + time.perf_counter() - t_start, 3),
            "cluster": cluster_info,
            "selection": selection,
            **dict(extra or {}),
        }

    def event(**kw: Any) -> None:
        if progress is not None:
            progress(RankEvent(total=len(ids), resumed=resumed, **kw))

    try:
        plugin = ModelPlugin(config)
        client.register_plugin(plugin, name=plugin.name)
        cluster_info["workers"] = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        ranking_id = store.save_ranking(make_record("running"), ranking_id=ranking_id)
        event(done=len(done))
        limit = max_in_flight or 2 * max(1, cluster_info["workers"]) + 1
        queue = iter(todo)
        futures = {}

        def submit_next() -> bool:
            image_id = next(queue, None)
            if image_id is None:
                return False
            fut = client.submit(
                score_image_task, str(store.path), image_id, config, pure=False, retries=0
            )
            futures[fut.key] = image_id
            pending.add(fut)
            return True

        pending = as_completed()
        for _ in range(limit):
            if not submit_next():
                break
        last_save = time.perf_counter()
        for fut in pending:
            image_id = futures.pop(fut.key)
            if fut.status == "error":
                exc = fut.exception()
                failed[image_id] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                event(done=len(done) + len(failed), image_id=image_id, error=failed[image_id])
            else:
                entry = fut.result()
                done[image_id] = entry
                event(done=len(done) + len(failed), image_id=image_id, value=entry["value"])
            fut.release()
            if cancel is not None and cancel.is_set():
                for other in list(pending.futures):
                    other.cancel()
                break
            submit_next()
            if time.perf_counter() - last_save >= checkpoint_every:
                store.save_ranking(make_record("running"), ranking_id=ranking_id)
                last_save = time.perf_counter()
        complete = not (cancel is not None and cancel.is_set())
        final = make_record("complete" if complete else "running")
        store.save_ranking(final, ranking_id=ranking_id)
        return store.read_ranking(ranking_id)
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
