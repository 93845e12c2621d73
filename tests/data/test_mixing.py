"""Mixture factors and the deterministic choice of repeated and sampled documents."""

import numpy as np
import pytest

from lmforge.config import ConfigError
from lmforge.data.steps.mixing import copies_per_document, mixture_factors, mixture_warnings


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


def test_without_weights_every_kept_document_appears_once():
    assert mixture_factors({"tiny": 30, "big": 100_000}, {"tiny": None, "big": None}) == {
        "tiny": 1.0,
        "big": 1.0,
    }


def test_without_weights_total_tokens_scales_every_source_alike():
    factors = mixture_factors({"a": 1000, "b": 3000}, {"a": None, "b": None}, total_tokens=2000)
    assert factors == pytest.approx({"a": 0.5, "b": 0.5})


def test_weighted_sources_share_what_the_unweighted_ones_leave():
    factors = mixture_factors({"plain": 1000, "x": 1000, "y": 1000}, {"plain": None, "x": 3, "y": 1}, 5000)
    assert factors["plain"] == 1.0
    assert 1000 * factors["x"] == pytest.approx(3000) and 1000 * factors["y"] == pytest.approx(1000)


def test_a_total_that_leaves_nothing_for_the_weighted_sources_is_a_config_error():
    with pytest.raises(ConfigError, match="set weight: on every source"):
        mixture_factors({"plain": 1000, "x": 1000}, {"plain": None, "x": 1}, total_tokens=900)


def test_sources_repeated_over_10x_or_cut_below_half_are_warned_about():
    warnings = mixture_warnings({"tiny": 2123.0, "big": 0.25, "fine": 1.0, "empty": 0.0})
    assert len(warnings) == 2
    assert "tiny" in warnings[0] and "2123.0x" in warnings[0]
    assert "big" in warnings[1] and "25%" in warnings[1]
