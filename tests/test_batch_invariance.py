"""The same seed gives the same hypotheses whatever the batch size, memory budget or tiling.

Hypothesis ``i`` depends only on the seed and on ``i`` (``Method.sample(..., first_index=i0)``):
every method (tta+ensemble included) draws identical samples for batch sizes 1, 3, 6 and N, in
the method itself and through the engine (tiled, with the batch size chosen by a memory budget);
the ensemble uses member ``i mod M``, so for N a multiple of M each member is used N / M times.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_probseg import engine
from napari_probseg.models import load_method
from test_models import _all_methods, make_card

N = 12
BATCHES = (1, 3, 6, N)
METHODS = [c for c in _all_methods() if c[0] == 2]


def _in_batches(method, x, n, batch, seed):
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        g = torch.Generator().manual_seed(seed)
        out.append(method.sample(x, b, generator=g, first_index=start))
    return torch.cat(out)


@pytest.mark.parametrize(("dims", "wrapper", "name"), METHODS)
def test_method_samples_do_not_depend_on_the_batch_split(tmp_path, dims, wrapper, name):
    method = load_method(make_card(tmp_path, wrapper, dims).path, name)
    x = torch.randn(1, 1, *([16] * dims), generator=torch.Generator().manual_seed(0))
    ref = _in_batches(method, x, N, N, seed=5)
    for batch in BATCHES[:-1]:
        got = _in_batches(method, x, N, batch, seed=5)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0, msg=f"batch {batch}")
    if not method.deterministic:
        # hypotheses differ from one another and from another seed's
        assert not torch.allclose(ref[0], ref[1])
        if name != "ensemble":  # a cycled ensemble has no randomness
            assert not torch.allclose(ref, _in_batches(method, x, N, N, seed=6))


@pytest.mark.parametrize("name", ["ensemble", "tta+ensemble", "mc_dropout", "tta+ssn"])
def test_engine_samples_and_means_identical_for_every_batch_size(tmp_path, name):
    wrapper = {"ensemble": "ensemble", "tta+ensemble": "ensemble", "tta+ssn": "ssn"}.get(
        name, "plain"
    )
    method = load_method(make_card(tmp_path, wrapper, 2).path, name)
    img = np.random.default_rng(1).normal(size=(28, 26)).astype(np.float32)
    kw = dict(n_samples=N, seed=3, patch_size=(16, 16), overlap=0.25, device="cpu")
    # a tiny memory budget makes the engine pick batch size 1 by itself
    runs = [engine.run_prediction(img, method, memory_budget_bytes=1.0, **kw)]
    runs += [engine.run_prediction(img, method, batch_size=b, **kw) for b in BATCHES[1:]]
    assert runs[0].provenance["tiling"]["n_tiles"] == 4
    assert runs[0].provenance["batch_size"] == 1
    ref = runs[-1]
    for run in runs[:-1]:
        np.testing.assert_array_equal(run.samples, ref.samples)
        np.testing.assert_allclose(run.maps.mean_probs, ref.maps.mean_probs, atol=1e-6, rtol=0)
        np.testing.assert_allclose(
            run.maps.mutual_information, ref.maps.mutual_information, atol=1e-6, rtol=0
        )
    assert float(ref.maps.mutual_information.max()) > 1e-4


@pytest.mark.parametrize("name", ["ensemble", "tta+ensemble"])
@pytest.mark.parametrize("batch", [1, 3, 4, 6])
def test_ensemble_members_used_equally_whatever_the_batch(tmp_path, name, batch):
    method = load_method(make_card(tmp_path, "ensemble", 2).path, name)
    ens = method.inner if name.startswith("tta") else method
    m = ens.n_members
    assert m == 3
    used: list[int] = []
    for start in range(0, 4 * m, batch):
        b = min(batch, 4 * m - start)
        state = method.hypotheses(b, torch.Generator().manual_seed(0), first_index=start)
        inner = {k[6:]: v for k, v in state.items() if k.startswith("inner.")}
        inner["index"] = state["index"]
        used += ens.members_of(inner if name.startswith("tta") else state).tolist()
    assert used == [i % m for i in range(4 * m)]
    assert np.bincount(used, minlength=m).tolist() == [4] * m


def test_engine_ensemble_mean_is_the_member_average(tmp_path):
    """N = 2M cycled samples: the mean probability is exactly the average of the M members."""
    method = load_method(make_card(tmp_path, "ensemble", 2).path, "ensemble")
    img = np.random.default_rng(2).normal(size=(16, 16)).astype(np.float32)
    members = method.network.members
    x = torch.from_numpy(engine.normalize(img[None], method.card.normalization))[None]
    with torch.no_grad():
        avg = torch.stack([torch.softmax(mem(x), 1)[0] for mem in members]).mean(0).numpy()
    for batch in (1, 4, 6):
        res = engine.run_prediction(img, method, n_samples=6, batch_size=batch, device="cpu")
        np.testing.assert_allclose(res.maps.mean_probs, avg, atol=1e-6, rtol=0)
