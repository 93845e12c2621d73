"""Serve tests use the session's `chat_model_dir` (tests/conftest.py) and the QA pairs it learned."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))  # checkpoint_helpers.QA for the tests
