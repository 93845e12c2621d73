"""splitmix64, the hash behind mixture sampling, SFT packing groups and the epoch order."""

import numpy as np

from lmforge.data.steps.hashing import splitmix64, uniform


def test_splitmix64_gives_the_reference_generators_outputs():
    # Vigna's splitmix64 seeded with 1234567: its first two outputs.
    seeded = np.array([1234567, 1234567], np.int64)
    assert splitmix64(seeded, salt=np.array([0, 1])).tolist() == [6457827717110365317, 3203168211198807973]
    assert splitmix64(seeded[:1], salt=1).tolist() == [3203168211198807973]


def test_distinct_keys_never_collide_and_uniforms_fill_the_unit_interval():
    keys = np.arange(100_000, dtype=np.int64)
    assert np.unique(splitmix64(keys, salt=7)).size == keys.size
    values = uniform(keys, salt=7)
    assert values.min() >= 0 and values.max() < 1
    assert np.histogram(values, bins=10, range=(0, 1))[0].min() > 9_500  # 10,000 expected per bin
