"""Serve fixtures: one Serve app for the whole serve package (starting one takes 45-130 s here) on the
session's `chat_model_dir` (tests/conftest.py: a tiny SFT model that answers two fixed questions, then EOS)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))  # checkpoint_helpers.QA for the tests
from served_app import KEY, MODEL


def pytest_collection_modifyitems(items):
    """Tests marked `kills_replica` disturb the shared app: run them after the other serve tests."""
    serve_dir = Path(__file__).parent
    in_package = [i for i, item in enumerate(items) if serve_dir in item.path.parents]
    if not in_package:
        return
    disturbing = [item for item in items if item.get_closest_marker("kills_replica")]
    rest = [item for item in items if not item.get_closest_marker("kills_replica")]
    last = max(i for i, item in enumerate(rest) if serve_dir in item.path.parents)
    items[:] = rest[:last + 1] + disturbing + rest[last + 1:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def api_url(ray_local, chat_model_dir, tmp_path_factory):
    """The /v1 URL of the app (keys and limits on), shut down after the last serve test: the train tests
    that follow need the CPUs its replica holds."""
    from ray import serve

    from lmforge.config import ServeConfig
    from lmforge.serve.run import start_app

    cfg = ServeConfig(model_dir=str(chat_model_dir), model_id=MODEL, api_keys=[KEY], max_prompt_tokens=48,
                      max_tokens_limit=64, output_dir=str(tmp_path_factory.mktemp("serve")), port=_free_port())
    started = time.perf_counter()
    url = start_app(cfg)
    print(f"\nserve.run healthy after {time.perf_counter() - started:.0f} s")
    yield url
    serve.shutdown()


@pytest.fixture
def client(api_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url, api_key=KEY, max_retries=0)
