"""The length histogram behind token_lengths.png: counted where the rows are, summed exactly."""

import numpy as np
import pytest
import ray.data

from lmforge.data.reports.plots import LENGTH_BIN_EDGES, length_histogram


@pytest.mark.usefixtures("ray_local")
def test_lengths_are_counted_in_power_of_two_bins_and_longer_ones_land_in_the_last():
    lengths = [1, 2, 3, 4, 1000, 1024, 5_000_000]
    histogram = length_histogram(ray.data.from_items([{"n_tokens": n} for n in lengths]).repartition(3))
    assert histogram.sum() == len(lengths)
    expected = np.histogram(np.minimum(lengths, LENGTH_BIN_EDGES[-1] - 1), bins=LENGTH_BIN_EDGES)[0]
    assert histogram.tolist() == expected.tolist()
    assert histogram[0] == 1 and histogram[1] == 2 and histogram[-1] == 1  # [1,2) [2,4) ... [2^20, 2^21)
