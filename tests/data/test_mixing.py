"""Mixture factors and the deterministic choice of repeated and sampled documents."""

import numpy as np
import pytest

from lmforge.data.mixing import copies_per_document, mixture_factors


def test_factors_give_each_source_its_weighted_share_of_tokens():
    factors = mixture_factors({"a": 1000, "b": 3000}, {"a": 1, "b": 1})
    assert factors == pytest.approx({"a": 2.0, "b": 2 / 3})
    assert 1000 * factors["a"] == pytest.approx(3000 * factors["b"])


def test_total_tokens_scales_the_output():
    factors = mixture_factors({"a": 1000}, {"a": 1}, total_tokens=2500)
    assert factors["a"] == pytest.approx(2.5)


def test_a_source_without_tokens_gets_factor_zero():
    assert mixture_factors({"a": 10}, {"a": 1, "empty": 1})["empty"] == 0.0


@pytest.mark.parametrize("factor", [0.3, 1.0, 2.5])
def test_copies_average_the_factor_and_repeat_with_the_same_seed(factor):
    keys = np.arange(20000, dtype=np.int64) * 7919
    copies = copies_per_document(keys, factor, seed=3)
    assert copies.mean() == pytest.approx(factor, abs=0.02)
    assert set(np.unique(copies)) <= {int(np.floor(factor)), int(np.floor(factor)) + 1}
    assert np.array_equal(copies, copies_per_document(keys, factor, seed=3))
    if factor != 1.0:
        assert not np.array_equal(copies, copies_per_document(keys, factor, seed=4))
