"""splitmix64: the one integer hash behind every seeded choice of the data and training stages.

Mixture sampling (mixing.py), SFT packing groups (sft.py) and the epoch order of training rows
(train/data.py) all need "a random-looking number per key, the same every time for the same salt".
splitmix64 gives that: `splitmix64(k, salt=s)` is output s + 1 of the splitmix64 generator seeded
with k (the finaliser of k + (s + 1) * golden), so nearby keys and nearby salts land far apart, and
distinct keys under one salt never collide (every step is a bijection of uint64).
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, splitmix64's stream increment
_MASK64 = (1 << 64) - 1


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (returned too):
    every input bit flips half the output."""
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def splitmix64(values: np.ndarray, salt: int | np.ndarray = 0) -> np.ndarray:
    """uint64 hash of each integer in `values` under `salt` (an int, or an array of them, one per value)."""
    salt = (
        np.asarray(salt & _MASK64, np.uint64) if isinstance(salt, int) else np.asarray(salt).astype(np.uint64)
    )
    with np.errstate(over="ignore"):
        return mix64(values.astype(np.uint64) + salt * GOLDEN + GOLDEN)


def uniform(values: np.ndarray, salt: int = 0) -> np.ndarray:
    """splitmix64 of each value as a float64 in [0, 1) (its top 53 bits)."""
    return (splitmix64(values, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
