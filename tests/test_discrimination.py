"""AUROC (rank formula) and paired bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_probseg.core.discrimination import auroc, paired_bootstrap


def test_auroc_known_answers():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5  # ties count one half
    assert auroc([0, 2], [1, 3]) == 0.75
    with pytest.raises(ValueError, match=r"^positives"):
        auroc([1.0], [])
    with pytest.raises(ValueError, match=r"^negatives"):
        auroc([np.nan], [1.0])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=15),
    st.lists(st.integers(-5, 5), min_size=1, max_size=15),
)
def test_auroc_equals_the_pair_count(neg, pos):
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert auroc(neg, pos) == pytest.approx(np.mean(pairs))
    assert auroc(neg, pos) + auroc(pos, neg) == pytest.approx(1.0)


def test_paired_bootstrap_keeps_the_pairing():
    rng = np.random.default_rng(0)
    base = rng.normal(size=48) * 5  # large between-image spread
    a, b = base + 0.1, base  # the same images, a constant difference
    ci = paired_bootstrap(lambda x, y: float(np.mean(x - y)), a, b, n_boot=500, seed=1)
    assert ci.low == pytest.approx(0.1) and ci.high == pytest.approx(0.1) and ci.excludes(0)
    again = paired_bootstrap(lambda x, y: float(np.mean(x - y)), a, b, n_boot=500, seed=1)
    assert again == ci
    unpaired = paired_bootstrap(np.mean, rng.normal(size=48), n_boot=500)
    assert unpaired.low < unpaired.value < unpaired.high and not unpaired.excludes(0.0)
    with pytest.raises(ValueError, match=r"^arrays"):
        paired_bootstrap(np.mean, [1, 2], [1])
