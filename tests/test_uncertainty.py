"""Entropy decomposition, the streaming accumulator and the meaning of the terms.

Known answers are computed by hand from the definitions (DESIGN.md "Metric conventions").
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_probseg.uncertainty import (
    SOURCES,
    Decomposition,
    UncertaintyAccumulator,
    UncertaintyMaps,
    decompose,
    entropy,
    stitch_maps,
    term_label,
    term_meanings,
)

LN2 = math.log(2)


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _random_stack(n=5, k=3, spatial=(4, 6), seed=0, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _softmax(2 * rng.standard_normal((n, k, *spatial)), axis=1).astype(dtype)


def _reference(stack: np.ndarray) -> dict[str, np.ndarray]:
    """Straightforward stacked computation, independent of the package code."""
    s = stack.astype(np.float64)
    mean = s.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(s > 0, s * np.log(s), 0.0)
        mlogm = np.where(mean > 0, mean * np.log(mean), 0.0)
    pe = -mlogm.sum(axis=0)
    ee = (-plogp.sum(axis=1)).mean(axis=0)
    return {
        "mean_probs": mean,
        "predictive_entropy": pe,
        "expected_entropy": ee,
        "mutual_information": np.maximum(pe - ee, 0),
        "variance": s.var(axis=0),
        "volumes": s[:, 1:].reshape(len(s), -1).sum(axis=1),
    }


# ---------------------------------------------------------------------------- entropy


def test_entropy_hand_computed():
    probs = np.array([[1.0, 0.5, 0.25], [0.0, 0.5, 0.75]])  # (K=2, 3 "voxels")
    expected = np.array([0.0, LN2, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    np.testing.assert_allclose(entropy(probs), expected, atol=1e-12)
    np.testing.assert_allclose(entropy(probs, base=2), expected / LN2, atol=1e-12)
    np.testing.assert_allclose(entropy(probs.T, axis=1), expected, atol=1e-12)
    np.testing.assert_allclose(entropy(probs.T, axis=-1), expected, atol=1e-12)
    uniform = np.full((4, 2, 2), 0.25)
    np.testing.assert_allclose(entropy(uniform), np.full((2, 2), math.log(4)))


def test_entropy_torch_in_torch_out():
    probs = np.array([[1.0, 0.5], [0.0, 0.5]], np.float32)
    out = entropy(torch.from_numpy(probs))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), [0.0, LN2], atol=1e-6)


@pytest.mark.parametrize(
    ("probs", "kwargs", "match"),
    [
        (np.array([[np.nan, 0.5], [0.5, 0.5]]), {}, r"^probs: contains NaN"),
        (np.array([[np.inf, 0.5], [0.5, 0.5]]), {}, r"^probs: contains NaN"),
        (np.array([[0.7, 0.5], [0.5, 0.5]]), {}, r"^probs: .*sum to 1"),
        (np.array([[1.5, 0.5], [-0.5, 0.5]]), {}, r"^probs: .*\[0, 1\]"),
        (np.array([[1.0, 0.5], [0.0, 0.5]]), {"axis": 2}, r"^axis:"),
        (np.array([[1.0, 0.5], [0.0, 0.5]]), {"base": 1}, r"^base:"),
        (np.array([[1.0, 0.5], [0.0, 0.5]]), {"base": -2}, r"^base:"),
    ],
)
def test_entropy_errors(probs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        entropy(probs, **kwargs)


# ---------------------------------------------------------------------------- decompose


def test_decompose_hand_computed():
    # Two samples, K = 2, spatial (1, 2). Voxel 0: the samples disagree completely
    # (one-hot 0 vs one-hot 1); voxel 1: both are 50/50.
    stack = np.array(
        [
            [[[1.0, 0.5]], [[0.0, 0.5]]],
            [[[0.0, 0.5]], [[1.0, 0.5]]],
        ]
    )
    d = decompose(stack, source="parameter")
    np.testing.assert_allclose(d.predictive_entropy, [[LN2, LN2]], atol=1e-12)
    np.testing.assert_allclose(d.expected_entropy, [[0.0, LN2]], atol=1e-12)
    np.testing.assert_allclose(d.mutual_information, [[LN2, 0.0]], atol=1e-12)
    np.testing.assert_allclose(d.variance, [[[0.25, 0.0]], [[0.25, 0.0]]], atol=1e-12)
    np.testing.assert_allclose(d.mean_probs, np.full((2, 1, 2), 0.5))
    np.testing.assert_allclose(d.volumes, [0.5, 1.5])  # sum of class-1 probability
    assert d.n_samples == 2 and d.units == "nats"
    assert d.source == ("parameter",)
    assert d.meanings == {"mutual_information": "epistemic", "expected_entropy": "aleatoric"}
    assert d.label("mutual_information") == "mutual information (epistemic)"


@pytest.mark.parametrize("spatial", [(4, 6), (3, 4, 5)])
def test_decompose_matches_reference(spatial):
    stack = _random_stack(n=6, k=3, spatial=spatial)
    d = decompose(stack, source="latent")
    ref = _reference(stack)
    for name, value in ref.items():
        np.testing.assert_allclose(getattr(d, name), value, atol=1e-12, err_msg=name)
    assert d.mean_probs.dtype == np.float64


def test_single_sample_has_no_mutual_information():
    stack = _random_stack(n=1, k=4)
    d = decompose(stack, source="none")
    np.testing.assert_allclose(d.mutual_information, 0.0, atol=1e-12)
    np.testing.assert_allclose(d.expected_entropy, d.predictive_entropy, atol=1e-12)
    np.testing.assert_allclose(d.variance, 0.0, atol=1e-12)
    assert d.meanings == {"mutual_information": None, "expected_entropy": None}
    assert d.label("mutual_information") == "mutual information"


@pytest.mark.parametrize(
    ("probs", "kwargs", "match"),
    [
        (np.full((0, 2, 3, 3), 0.5), {"source": "parameter"}, r"^probs: .*N >= 1"),
        (np.full((2, 3, 3), 0.5), {"source": "parameter"}, r"^probs: expected shape"),
        (np.full((2, 2, 3, 3), 0.5), {"source": "dropout"}, r"^source:"),
        (np.full((2, 2, 3, 3), 0.5), {"source": ()}, r"^source:"),
        (np.full((2, 2, 3, 3), 0.6), {"source": "input"}, r"^probs: .*sum to 1"),
    ],
)
def test_decompose_errors(probs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        decompose(probs, **kwargs)


# ---------------------------------------------------------------------------- accumulator


def test_accumulator_equals_decompose_and_reference():
    stack = _random_stack(n=7, k=3, spatial=(5, 4, 3), seed=1)
    acc = UncertaintyAccumulator(3)
    for sample in stack:
        acc.update(sample)
    maps = acc.result()
    d = decompose(stack, source="parameter")
    ref = _reference(stack)
    assert maps.n_samples == 7 and acc.n_samples == 7
    for name, value in ref.items():
        np.testing.assert_allclose(getattr(maps, name), value, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(getattr(maps, name), getattr(d, name), atol=1e-12)


def test_batch_update_equals_per_sample_updates():
    stack = _random_stack(n=9, k=4, spatial=(33, 40), seed=2)
    one = UncertaintyAccumulator(4)
    for sample in stack:
        one.update(sample)
    batched = UncertaintyAccumulator(4, spatial_dims=2)  # (4, 4, 33, 40) is ambiguous
    batched.update(stack[:4])
    batched.update(stack[4:5])
    batched.update(stack[5:])
    a, b = one.result(), batched.result()
    for name in ("mean_probs", "predictive_entropy", "expected_entropy", "variance", "volumes"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-12, err_msg=name)


def test_large_batch_is_chunked_correctly():
    # More voxels than one chunk, so the chunk boundaries are exercised.
    stack = _random_stack(n=3, k=2, spatial=(3, 150, 200), seed=3, dtype=np.float32)
    maps = decompose(stack, source="input")
    ref = _reference(stack)
    assert maps.predictive_entropy.dtype == np.float32
    for name, value in ref.items():
        np.testing.assert_allclose(getattr(maps, name), value, atol=2e-6, err_msg=name)


def test_merge_equals_one_pass():
    stack = _random_stack(n=8, k=3, spatial=(6, 7), seed=4)
    whole = UncertaintyAccumulator(3, spatial_dims=2)
    whole.update(stack)
    first, second = UncertaintyAccumulator(3, spatial_dims=2), UncertaintyAccumulator(3)
    first.update(stack[:3])
    second.update(stack[3:])
    assert first.merge(second) is first
    a, b = whole.result(), first.result()
    assert b.n_samples == 8
    for name in ("mean_probs", "predictive_entropy", "expected_entropy", "variance", "volumes"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-12, err_msg=name)
    # Merging into an empty accumulator, and an empty one into a full one.
    empty = UncertaintyAccumulator(3)
    empty.merge(second)
    np.testing.assert_allclose(
        empty.result().mean_probs, decompose(stack[3:], source="none").mean_probs
    )
    first.merge(UncertaintyAccumulator(3))
    assert first.n_samples == 8


def test_result_is_repeatable_and_updates_continue():
    stack = _random_stack(n=4, k=2)
    acc = UncertaintyAccumulator(2, spatial_dims=2)
    acc.update(stack[:2])
    first = acc.result()
    np.testing.assert_array_equal(first.mean_probs, acc.result().mean_probs)
    acc.update(stack[2:])
    np.testing.assert_allclose(acc.result().mean_probs, stack.mean(axis=0), atol=1e-12)


def test_foreground_classes_define_volumes():
    stack = _random_stack(n=3, k=4, spatial=(5, 5))
    acc = UncertaintyAccumulator(4, foreground_classes=[2])
    acc.update(stack)
    np.testing.assert_allclose(acc.result().volumes, stack[:, 2].sum(axis=(1, 2)))
    assert acc.result().foreground_classes == (2,)


def test_memory_does_not_grow_with_samples():
    stack = _random_stack(n=2, k=3, spatial=(16, 16), dtype=np.float32)
    acc = UncertaintyAccumulator(3)
    acc.update(stack)
    size = acc.nbytes
    for _ in range(20):
        acc.update(stack)
    assert acc.nbytes == size == 8 * (2 * 3 + 1) * 16 * 16
    assert acc.n_samples == 42


def test_torch_input_gives_torch_output_equal_to_numpy():
    stack = _random_stack(n=5, k=3, spatial=(4, 5, 6), seed=5, dtype=np.float32)
    acc = UncertaintyAccumulator(3)
    acc.update(torch.from_numpy(stack[:2]))
    acc.update(torch.from_numpy(stack[2]))
    acc.update(stack[3:])  # numpy into a torch accumulator is converted
    maps = acc.result()
    expected = decompose(stack, source="parameter")
    for name in ("mean_probs", "predictive_entropy", "expected_entropy", "mutual_information"):
        value = getattr(maps, name)
        assert isinstance(value, torch.Tensor) and value.device == torch.device("cpu")
        assert value.dtype == torch.float32
        np.testing.assert_allclose(value.numpy(), getattr(expected, name), atol=1e-6)
    np.testing.assert_allclose(maps.volumes, expected.volumes, rtol=1e-6)
    d = decompose(torch.from_numpy(stack.astype(np.float64)), source="latent")
    assert isinstance(d.variance, torch.Tensor) and d.variance.dtype == torch.float64
    np.testing.assert_allclose(d.variance.numpy(), expected.variance, atol=1e-6)
    back = d.to_numpy()
    assert isinstance(back.variance, np.ndarray) and isinstance(back, Decomposition)


def test_torch_and_numpy_accumulators_merge():
    stack = _random_stack(n=4, k=2, spatial=(3, 3))
    a, b = UncertaintyAccumulator(2, spatial_dims=2), UncertaintyAccumulator(2, spatial_dims=2)
    a.update(stack[:2])
    b.update(torch.from_numpy(stack[2:]))
    a.merge(b)
    np.testing.assert_allclose(a.result().mean_probs, stack.mean(axis=0), atol=1e-12)


def test_decompose_accepts_accumulator_result():
    stack = _random_stack(n=3, k=2)
    acc = UncertaintyAccumulator(2)
    acc.update(stack)
    maps = acc.result()
    assert isinstance(maps, UncertaintyMaps) and not isinstance(maps, Decomposition)
    d = decompose(maps, source=("input", "latent"))
    assert isinstance(d, Decomposition) and d.source == ("input", "latent")
    np.testing.assert_array_equal(d.mutual_information, maps.mutual_information)
    assert d.n_samples == 3


def test_stitch_blocks_equals_whole_image():
    stack = _random_stack(n=4, k=3, spatial=(6, 10), seed=6)
    whole = decompose(stack, source="parameter")
    regions = [(slice(0, 6), slice(0, 4)), (slice(0, 6), slice(4, 10))]
    blocks = []
    for region in regions:
        acc = UncertaintyAccumulator(3)
        acc.update(stack[(slice(None), slice(None), *region)])
        blocks.append((region, acc.result()))
    stitched = stitch_maps(blocks, (6, 10))
    for name in ("mean_probs", "predictive_entropy", "mutual_information", "variance", "volumes"):
        np.testing.assert_allclose(getattr(stitched, name), getattr(whole, name), atol=1e-12)
    with pytest.raises(ValueError, match=r"^blocks:"):
        stitch_maps([(regions[0], blocks[1][1])], (6, 10))
    with pytest.raises(ValueError, match=r"^blocks:"):
        stitch_maps([], (6, 10))


def test_ambiguous_shape_needs_spatial_dims():
    probs = np.full((3, 3, 8, 8), 1 / 3)
    with pytest.raises(ValueError, match=r"^probs: .*ambiguous"):
        UncertaintyAccumulator(3).update(probs)
    as_batch = UncertaintyAccumulator(3, spatial_dims=2)
    as_batch.update(probs)
    assert as_batch.n_samples == 3 and as_batch.spatial_shape == (8, 8)
    as_volume = UncertaintyAccumulator(3, spatial_dims=3)
    as_volume.update(probs)
    assert as_volume.n_samples == 1 and as_volume.spatial_shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.full((3, 4, 4), 0.5), r"^probs:"),  # K = 3 where 2 are expected
        (np.full((2, 4), 0.5), r"^probs:"),
        (np.full((0, 2, 4, 4), 0.5), r"^probs: .*at least 1"),
        (np.full((2, 4, 4), np.nan), r"^probs: contains NaN"),
        (np.full((2, 4, 4), 0.7), r"^probs: .*sum to 1"),
        (np.stack([np.full((4, 4), 1.5), np.full((4, 4), -0.5)]), r"^probs: .*\[0, 1\]"),
    ],
)
def test_accumulator_rejects_bad_updates_and_keeps_state(probs, match):
    acc = UncertaintyAccumulator(2)
    with pytest.raises(ValueError, match=match):
        acc.update(probs)
    assert acc.n_samples == 0 and acc.spatial_shape is None
    good = np.full((2, 4, 4), 0.5)
    acc.update(good)
    before = acc.result()
    if probs.shape[-2:] == (4, 4) and probs.ndim == 3 and probs.shape[0] == 2:
        with pytest.raises(ValueError, match=match):
            acc.update(probs)
    with pytest.raises(ValueError, match=r"^probs:"):
        acc.update(np.full((2, 5, 5), 0.5))  # other spatial shape
    after = acc.result()
    assert after.n_samples == 1
    np.testing.assert_array_equal(before.mean_probs, after.mean_probs)


def test_accumulator_argument_errors():
    with pytest.raises(ValueError, match=r"^n_classes:"):
        UncertaintyAccumulator(0)
    with pytest.raises(ValueError, match=r"^foreground_classes:"):
        UncertaintyAccumulator(3, foreground_classes=[3])
    with pytest.raises(ValueError, match=r"^spatial_dims:"):
        UncertaintyAccumulator(3, spatial_dims=4)
    with pytest.raises(ValueError, match=r"^n_samples:"):
        UncertaintyAccumulator(3).result()
    a, b = UncertaintyAccumulator(2), UncertaintyAccumulator(3)
    b.update(np.full((3, 2, 2), 1 / 3))
    with pytest.raises(ValueError, match=r"^other:"):
        a.merge(b)
    c = UncertaintyAccumulator(3)
    c.update(np.full((3, 4, 4), 1 / 3))
    with pytest.raises(ValueError, match=r"^other:"):
        c.merge(b)


# ---------------------------------------------------------------------------- properties


@st.composite
def _stacks(draw):
    n = draw(st.integers(1, 5))
    k = draw(st.integers(2, 4))
    logits = draw(
        hnp.arrays(
            np.float64,
            (n, k, 2, 3),
            elements=st.floats(-30, 30, allow_nan=False, allow_infinity=False),
        )
    )
    return _softmax(logits, axis=1)


@given(_stacks())
def test_decomposition_bounds(stack):
    d = decompose(stack, source="parameter")
    k = stack.shape[1]
    tol = 1e-9
    assert np.all(d.mutual_information >= 0)
    assert np.all(d.expected_entropy >= 0)
    assert np.all(d.mutual_information <= d.predictive_entropy + tol)
    assert np.all(d.expected_entropy <= d.predictive_entropy + tol)
    assert np.all(d.predictive_entropy <= math.log(k) + tol)
    np.testing.assert_allclose(
        d.mutual_information + d.expected_entropy, d.predictive_entropy, atol=1e-9
    )
    assert np.all(d.variance >= 0) and np.all(d.variance <= 0.25 + tol)


# ---------------------------------------------------------------------------- meanings


def test_term_meanings_per_source():
    assert SOURCES == ("parameter", "input", "latent", "none")
    epistemic = {"mutual_information": "epistemic", "expected_entropy": "aleatoric"}
    assert term_meanings("parameter") == epistemic
    assert term_meanings("input") == epistemic
    assert term_meanings("latent") == {
        "mutual_information": "aleatoric (rater ambiguity, eq. 42)",
        "expected_entropy": "remainder (epistemic/positional, eq. 42)",
    }
    assert term_meanings("none") == {"mutual_information": None, "expected_entropy": None}
    assert term_meanings(("latent",)) == term_meanings("latent")
    assert term_meanings(("parameter", "none")) == epistemic


def test_composed_sources_name_every_source():
    m = term_meanings(("input", "latent"))
    assert m["mutual_information"] == (
        "epistemic (input) + aleatoric (rater ambiguity, eq. 42, latent)"
    )
    assert m["expected_entropy"] == (
        "aleatoric (input) + remainder (epistemic/positional, eq. 42, latent)"
    )
    assert term_label("mutual_information", ("input", "latent")) == (
        "mutual information (epistemic (input) + aleatoric (rater ambiguity, eq. 42, latent))"
    )


def test_term_labels():
    assert term_label("mutual_information", "parameter") == "mutual information (epistemic)"
    assert term_label("expected_entropy", "input") == "expected entropy (aleatoric)"
    assert term_label("mutual_information", "latent") == (
        "mutual information (aleatoric (rater ambiguity, eq. 42))"
    )
    assert term_label("predictive_entropy", "latent") == "predictive entropy"
    assert term_label("expected_entropy", "none") == "expected entropy"
    with pytest.raises(ValueError, match=r"^term:"):
        term_label("entropy", "parameter")
    with pytest.raises(ValueError, match=r"^source:"):
        term_label("mutual_information", "dropout")
    with pytest.raises(ValueError, match=r"^source:"):
        term_meanings(("input", 3))


def test_accumulator_benchmark_runs_and_agrees():
    """The benchmark's two ways compute the same maps (tiny sizes; numbers are not checked)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_accumulator.py"
    args = ["--n", "5", "--size", "12", "--batch", "2", "--repeat", "1"]
    rows = [
        json.loads(
            subprocess.run(
                [sys.executable, str(script), *args, "--worker", way],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout.splitlines()[-1]
        )
        for way in ("stacked", "stream")
    ]
    for key in ("mean", "pe", "ee", "var", "volumes"):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-6), key
    assert rows[1]["state_bytes"] == 8 * 7 * 12**3
