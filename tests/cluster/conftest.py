"""The multi-node tests use the cluster helper of tests/ and the training-run helpers of tests/train."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "train"), str(TESTS / "convert")]
